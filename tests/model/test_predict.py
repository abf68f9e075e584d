"""python -m trainer.predict against a SavedModel the real trainer exported."""

import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

from trainer import predict
from trainer.data import vocab

from tests.helpers import ROOT, error_lines

# The longest problem of the data (|x|, |y| < 100) is 15 characters.
GOOD = ["x=3,y=4:x*y", "y=-12,x=5:x-y", "x=0,y=0:x+y", "y=99,x=-99:y*x",
        "x=-98,y=-97:x-y"]
ANSWER = re.compile(r"^(?P<expr>\S+) -> (?P<token>\S|' ') \(p=(?P<p>\d\.\d\d)\)$")


def predict_command(*args, stdin="", env=None):
  """Runs `python -m trainer.predict args...` with `stdin` as its input, as
  a user does: TF_CPP_MIN_LOG_LEVEL unset (the command quiets TensorFlow)."""
  full_env = {**os.environ, **(env or {})}
  full_env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  return subprocess.run(
      [sys.executable, "-m", "trainer.predict", *args], input=stdin,
      capture_output=True, text=True, env=full_env, timeout=120, cwd=ROOT)


def answers(result):
  """{expression: (token, probability)} from stdout, every line checked."""
  found = {}
  for line in result.stdout.splitlines():
    match = ANSWER.match(line)
    assert match, line
    token = " " if match["token"] == "' '" else match["token"]
    assert token in vocab.VOCAB, line
    probability = float(match["p"])
    assert 0 < probability <= 1, line
    found[match["expr"]] = (token, probability)
  return found


def expected_answers(export_dir, expressions):
  """The same question asked of the SavedModel's predict_text in-process."""
  signature = tf.saved_model.load(export_dir).signatures["predict_text"]
  outputs = signature(problems=tf.constant(expressions))
  return {expression: (token.decode(), float(row[token_id]))
          for expression, token, token_id, row in zip(
              expressions, outputs["token"].numpy(),
              outputs["token_id"].numpy(), outputs["probabilities"].numpy())}


def assert_match(found, expected):
  assert sorted(found) == sorted(expected)
  for expression, (token, probability) in expected.items():
    assert found[expression][0] == token, expression
    assert found[expression][1] == pytest.approx(probability, abs=0.0051)


@pytest.fixture(scope="module")
def trained(smoke_run):
  """A smoke run's directory (the session's plain smoke run, conftest); its
  SavedModel is in export/."""
  assert smoke_run.returncode == 0, smoke_run.stderr[-3000:]
  assert (smoke_run.model_dir / "export" / "saved_model.pb").exists()
  return smoke_run.model_dir


def test_arguments_and_stdin_answer_as_the_signature_does(trained):
  expected = expected_answers(str(trained / "export"), GOOD)
  from_args = predict_command(f"--model_dir={trained}", *GOOD)
  assert from_args.returncode == 0, from_args.stderr
  assert not from_args.stderr.strip(), from_args.stderr
  assert [l.split(" -> ")[0] for l in from_args.stdout.splitlines()] == GOOD
  assert_match(answers(from_args), expected)
  # Vertex AI's layout: no --model_dir, AIP_MODEL_DIR holds the SavedModel.
  # stdin: one per line, surrounding whitespace dropped.
  from_stdin = predict_command(
      stdin="".join(f"  {e}\t\n" for e in GOOD),
      env={"AIP_MODEL_DIR": str(trained / "export")})
  assert from_stdin.returncode == 0, from_stdin.stderr
  assert_match(answers(from_stdin), expected)


def test_bad_expressions_are_named_and_the_others_answered(trained):
  bad = {
      "x=1,y=2:x/y": "character '/' at position 9 is outside the vocabulary",
      "x=1,y=2": "no ':'",
      "": "empty expression",
      "x=100,y=200:x*y+x-y+x": "21 characters, longer than the model's "
                               "len_max_input=20",
      "x=1,y=2:x+y:3": "2 ':'",
      "x=1, y=2:x+y": "a space at position 4",
      ":": "nothing before ':'",  # before: answered
      "x=1,y=2:": "nothing after ':'",
  }
  mixed = [GOOD[0], *bad, GOOD[1]]
  stdin = "\n".join(mixed) + "\n"
  result = predict_command(f"--model_dir={trained}/export", stdin=stdin)
  assert result.returncode == 1, result.stderr
  errors = error_lines(result)
  assert len(errors) == len(bad), result.stderr
  assert len(result.stderr.splitlines()) == len(bad), result.stderr
  for expression, problem in bad.items():
    named = [l for l in errors if l.startswith(f"error: {expression!r}: ")]
    assert len(named) == 1, (expression, errors)
    assert problem in named[0], named[0]
  assert_match(answers(result),
               expected_answers(str(trained / "export"), GOOD[:2]))


def test_missing_model_dir_is_one_line(trained, tmp_path):
  missing = predict_command(f"--model_dir={tmp_path}/nowhere", GOOD[0])
  assert missing.returncode == 2
  assert missing.stderr.splitlines() == [
      f"error: --model_dir={tmp_path}/nowhere does not exist"]
  assert not missing.stdout
  # A directory without a SavedModel (checkpoints only).
  no_export = predict_command(f"--model_dir={trained}/checkpoints", GOOD[0])
  assert no_export.returncode == 2
  assert len(no_export.stderr.splitlines()) == 1, no_export.stderr
  assert no_export.stderr.startswith(
      f"error: --model_dir={trained}/checkpoints: no SavedModel "
      "(saved_model.pb) in "), no_export.stderr
  no_flag = predict_command(GOOD[0], env={"AIP_MODEL_DIR": ""})
  assert no_flag.returncode == 2
  assert error_lines(no_flag) == [
      "error: --model_dir is required (or set AIP_MODEL_DIR)"]


def test_gcs_model_dir(gcs, trained):
  from google.cloud import storage as gcs_client  # pylint: disable=g-import-not-at-top
  gcs.create_bucket("predict")
  bucket = gcs_client.Client().bucket("predict")
  export = trained / "export"
  for directory, _, names in os.walk(export):
    for name in names:
      local = os.path.join(directory, name)
      bucket.blob(f"runs/1/export/{os.path.relpath(local, export)}"
                  ).upload_from_filename(local)
  result = predict_command("--model_dir=gs://predict/runs/1", *GOOD[:3])
  assert result.returncode == 0, result.stderr
  assert_match(answers(result), expected_answers(str(export), GOOD[:3]))

  gcs.deny_buckets.add("predict")
  try:
    denied = predict_command("--model_dir=gs://predict/runs/1", GOOD[0])
  finally:
    gcs.deny_buckets.discard("predict")
  assert denied.returncode == 1, denied.stderr
  assert len(denied.stderr.splitlines()) == 1, denied.stderr
  assert denied.stderr.startswith("error: permission denied on gs://predict/"), (
      denied.stderr)
  # A bucket that does not exist is named (before: "no SavedModel in ...").
  missing = predict_command("--model_dir=gs://no-such-bucket/runs/1", GOOD[0])
  assert missing.returncode == 2, missing.stderr
  assert missing.stderr.splitlines() == [
      "error: --model_dir=gs://no-such-bucket/runs/1: bucket "
      "gs://no-such-bucket does not exist (or this account cannot see it): "
      "create it with `gcloud storage buckets create gs://no-such-bucket`, "
      "or fix the path"], missing.stderr


@pytest.mark.parametrize("expression, problem", [
    ("x=3,y=4:x*y", None),
    ("x=-98,y=-97:x-y", None),  # 15 characters
    ("", "empty expression"),
    ("x=3,y=4", "no ':' between the definitions and the operation"),
    ("x=3:y=4:x*y", "2 ':': give definitions:operation, without the result"),
    ("x=3,y=4:x÷y", "character '÷' at position 9 is outside the vocabulary "
                    "' :|xy=,+-*0123456789'"),
    ("x=3,y=4:x* y", "a space at position 10: the space is the padding token, "
                     "not part of a problem"),
    (":", "nothing before ':': give definitions:operation, e.g. x=3,y=4:x*y"),
    (":x*y", "nothing before ':': give definitions:operation, e.g. "
             "x=3,y=4:x*y"),
    ("x=3,y=4:", "nothing after ':': give definitions:operation, e.g. "
                 "x=3,y=4:x*y"),
])
def test_check_expression(expression, problem):
  assert predict.check_expression(expression, 20) == problem


def test_check_expression_length():
  assert predict.check_expression("x=-98,y=-97:x-y", 15) is None
  assert predict.check_expression("x=-98,y=-97:x-y", 14) == (
      "15 characters, longer than the model's len_max_input=14")
