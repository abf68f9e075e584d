r"""Answers arithmetic problems with an exported model: the predict command.

  python -m trainer.predict --model_dir=RUN 'x=3,y=4:x*y' 'y=-12,x=5:x-y'
  python -m trainer.predict --model_dir=gs://BUCKET/runs/1 < problems.txt

Each expression is `definitions:operation` (a problem without its result).
For each, one line on stdout: the expression, the predicted first token of
the result and its probability, `x=3,y=4:x*y -> 1 (p=0.93)`. With no
expression arguments, expressions are read from stdin, one per line
(surrounding whitespace is dropped).

--model_dir is a trainer run directory (the SavedModel is in its `export/`),
the SavedModel directory itself, or Vertex AI's AIP_MODEL_DIR (the
SavedModel directly in it; the default when --model_dir is not given); local
or gs://. The model's `predict_text` signature answers all the valid
expressions in one call.

Each expression is checked here first (empty, a character outside the
vocabulary, no ':' or more than one, nothing on one side of it, longer than
the model's input), so a bad
one is a line `error: '<expr>': <what is wrong>` on stderr while the others
are still answered; then the exit status is 1. The input length limit is the
model's own: the second dimension of its `serving_default` signature's
`tokens` input (len_max_input when it was exported), so a SavedModel copied
away from its run directory's config.json still has it. A missing or
unloadable model is one `error:` line, exit 2 (1 for an I/O failure such as
gs:// permission denied).
"""

from __future__ import annotations

import os
import posixpath
import sys
from typing import Iterable, Sequence

from absl import app
from absl import flags

from trainer import cli
from trainer import errors
from trainer.cloud import storage
from trainer.data import vocab
# TensorFlow only once there are expressions to answer: --help and bad flags
# stay fast.

SAVED_MODEL_FILE = "saved_model.pb"
SIGNATURE = "predict_text"
EXPORT_SUBDIR = "export"  # run_dir.RunDirs.under(model_dir).export


def define_flags() -> None:
  """Defines the command's flags (only when run as the command: the
  trainer's entry point, imported beside this module in tests, defines its
  own --model_dir)."""
  flags.DEFINE_string(
      "model_dir", None, "A trainer run directory (the SavedModel in its "
      "export/), the SavedModel directory itself, or Vertex AI's "
      "AIP_MODEL_DIR; local or gs://. Default: $AIP_MODEL_DIR.")


def check_expression(expression: str, len_max_input: int | None) -> str | None:
  """What is wrong with one expression, or None when the model can take it.

  Args:
    expression: `definitions:operation`, e.g. "x=3,y=4:x*y".
    len_max_input: the model's input length; None skips that check.
  """
  if not expression:
    return "empty expression"
  for position, char in enumerate(expression):
    if char == vocab.VOCAB[vocab.PAD_ID]:
      return (f"a space at position {position}: the space is the padding "
              "token, not part of a problem")
    if char not in vocab.TOKEN_IDS:
      return (f"character {char!r} at position {position} is outside the "
              f"vocabulary {''.join(vocab.VOCAB)!r}")
  separators = expression.count(":")
  if separators == 0:
    return "no ':' between the definitions and the operation"
  if separators > 1:
    return (f"{separators} ':': give definitions:operation, without the "
            "result")
  definitions, operation = expression.split(":")
  if not definitions:
    return ("nothing before ':': give definitions:operation, e.g. "
            "x=3,y=4:x*y")
  if not operation:
    return ("nothing after ':': give definitions:operation, e.g. "
            "x=3,y=4:x*y")
  if len_max_input is not None and len(expression) > len_max_input:
    return (f"{len(expression)} characters, longer than the model's "
            f"len_max_input={len_max_input}")
  return None


def find_saved_model(model_dir: str) -> str:
  """The SavedModel directory for --model_dir: DIR/export, else DIR itself.

  Local paths are checked without TensorFlow; gs:// ones through it.

  Raises:
    UserError: no saved_model.pb in either (exit 2), or an I/O error
      reading gs:// (exit 1).
  """
  candidates = [posixpath.join(model_dir, EXPORT_SUBDIR), model_dir]
  if "://" not in model_dir:
    if not os.path.exists(model_dir):
      raise errors.UserError(f"--model_dir={model_dir} does not exist")
    exists = os.path.exists
  else:
    exists = _gfile_exists
  for candidate in candidates:
    if exists(posixpath.join(candidate, SAVED_MODEL_FILE)):
      return candidate
  if "://" in model_dir:
    # A missing bucket reads as "no file": name the bucket instead.
    storage.check_bucket(model_dir, "--model_dir")
  raise errors.UserError(
      f"--model_dir={model_dir}: no SavedModel ({SAVED_MODEL_FILE}) in "
      f"{candidates[0]} nor in {model_dir}: train into it with `python -m "
      "trainer.task --model_dir=...` first, or name the export directory")


def _gfile_exists(path: str) -> bool:
  tf = cli.import_tensorflow()
  try:
    return tf.io.gfile.exists(path)
  except (OSError, tf.errors.OpError) as e:
    raise errors.UserError(errors.describe_io_error(e), exit_status=1) from e


class Predictor:
  """The `predict_text` signature of a loaded SavedModel."""

  def __init__(self, export_dir: str):
    """Loads the SavedModel in `export_dir`.

    Raises:
      UserError: it cannot be read (exit 1 for I/O errors) or has no
        `predict_text` signature (exit 2).
    """
    tf = cli.import_tensorflow()
    self._tf = tf
    try:
      loaded = tf.saved_model.load(export_dir)
    except (tf.errors.PermissionDeniedError, tf.errors.UnauthenticatedError,
            tf.errors.UnavailableError) as e:
      raise errors.UserError(errors.describe_io_error(e), exit_status=1) from e
    except (OSError, ValueError, tf.errors.OpError) as e:
      raise errors.UserError(
          f"cannot load the SavedModel in {export_dir}: "
          f"{errors.describe_io_error(e)}") from e
    if SIGNATURE not in loaded.signatures:
      raise errors.UserError(
          f"the SavedModel in {export_dir} has no {SIGNATURE!r} signature "
          f"(it has {sorted(loaded.signatures)}): export it with this "
          "trainer (trainer/model/export.py)")
    self._loaded = loaded  # keeps the signature's variables alive
    self._predict = loaded.signatures[SIGNATURE]
    self.len_max_input = _input_length(loaded)

  def predict(self, expressions: Sequence[str]) -> list[tuple[str, float]]:
    """(first token of the result, its probability) per expression, in one
    call of the signature. The expressions must pass `check_expression`."""
    if not expressions:
      return []
    outputs = self._predict(problems=self._tf.constant(list(expressions)))
    token_ids = outputs["token_id"].numpy()
    probabilities = outputs["probabilities"].numpy()
    tokens = outputs["token"].numpy()
    return [(token.decode(), float(row[token_id]))
            for token, token_id, row in zip(tokens, token_ids, probabilities)]


def _input_length(loaded) -> int | None:
  """The model's len_max_input: serving_default's `tokens` input is
  [batch, len_max_input]. None when that signature is missing."""
  signature = loaded.signatures.get("serving_default")
  if signature is None:
    return None
  _, inputs = signature.structured_input_signature
  spec = inputs.get("tokens")
  if spec is None or spec.shape.rank != 2:
    return None
  return spec.shape[1]


def format_answer(expression: str, token: str, probability: float) -> str:
  """`x=3,y=4:x*y -> 1 (p=0.93)`; the padding token shows as ' '."""
  shown = repr(token) if token == vocab.VOCAB[vocab.PAD_ID] else token
  return f"{expression} -> {shown} (p={probability:.2f})"


def read_expressions(args: Sequence[str], stdin) -> list[str]:
  """The arguments, else the lines of stdin; surrounding whitespace
  dropped."""
  lines: Iterable[str] = args if args else stdin.read().splitlines()
  return [line.strip() for line in lines]


def main(argv: list[str]) -> int:
  try:
    return _main(argv[1:])
  except errors.UserError as e:
    return cli.fail(str(e), status=e.exit_status)
  except KeyboardInterrupt:
    return cli.fail("interrupted (Ctrl-C)", status=130)


def _main(args: list[str]) -> int:
  model_dir = flags.FLAGS.model_dir or os.environ.get("AIP_MODEL_DIR")
  if not model_dir:
    raise errors.UserError("--model_dir is required (or set AIP_MODEL_DIR)")
  export_dir = find_saved_model(model_dir.rstrip("/") or "/")
  expressions = read_expressions(args, sys.stdin)
  if not expressions:
    raise errors.UserError("no expressions: give them as arguments or one "
                           "per line on stdin")
  predictor = Predictor(export_dir)
  valid = []
  for expression in expressions:
    problem = check_expression(expression, predictor.len_max_input)
    if problem:
      cli.fail(f"{expression!r}: {problem}")
    else:
      valid.append(expression)
  tf = cli.import_tensorflow()
  try:
    answers = predictor.predict(valid)
  except tf.errors.OpError as e:  # the in-graph checks, if ours missed one
    raise errors.UserError(f"the model refused the batch: "
                           f"{errors.describe_io_error(e)}", 1) from e
  for expression, (token, probability) in zip(valid, answers):
    print(format_answer(expression, token, probability))
  return 0 if len(valid) == len(expressions) else 1


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
