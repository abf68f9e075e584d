"""Reading every record of a shard: the deep check, and naming a bad file.

The input pipeline reads many files at once and checks its batches in the
graph, so when a shard is corrupt, truncated, not a TFRecord file at all, or
holds an example that does not fit, TensorFlow's error names neither the
file nor the record ("corrupted record at 14996", an assertion). This
module reads shards one at a time, outside the pipeline:

  check_file(path, len_max_input)   # -> FileCheck: good records, the problem
  describe_data_error(error, files, len_max_input, split)  # -> UserError

`python -m trainer.data verify --deep` runs `check_file` on every shard; the
training loop calls `describe_data_error` when its input pipeline fails, to
turn the error into one line naming the file, the record and the way out.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import time
from typing import Callable, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from trainer import errors
from trainer.data import schema
from trainer.data import vocab

# How long the loop may spend finding which file broke the input pipeline:
# it reads the split's files in order and stops at the first bad one.
SCAN_BUDGET_S = 120.0
_READ_BATCH = 1024  # records read and parsed at once


@dataclasses.dataclass(frozen=True)
class FileCheck:
  """What reading one shard found.

  Attributes:
    path: the file.
    good_records: records read and valid before the first bad one (all of
      them when `problem` is None).
    problem: None, or what is wrong, naming the record ("record 50: ...").
    kind: "ok", "corrupt" (unreadable bytes: CRC, truncation, not TFRecord),
      "schema" (not an Example of defs/op/res, an id outside the
      vocabulary, an empty res) or "too_long" (input over len_max_input).
    max_input_length: the longest defs + ':' + op among the good records.
  """
  path: str
  good_records: int
  problem: str | None = None
  kind: str = "ok"
  max_input_length: int = 0

  @property
  def ok(self) -> bool:
    return self.problem is None


def check_file(path: str, len_max_input: int) -> FileCheck:
  """Reads every record of one TFRecord file (local or gs://) and checks it.

  Each record must pass its CRC, parse as an Example with int64 lists
  `defs`, `op` and `res`, use ids of the vocabulary, have a non-empty `res`
  and an input (defs + ':' + op) of at most `len_max_input` tokens. Stops at
  the first unreadable record; a record that reads but does not fit is the
  problem reported, and reading goes on only to find the file's longest
  input (so the message can say how far to raise len_max_input).
  """
  good = 0
  consumed = 0  # bytes of the records read: each has 16 bytes of framing
  longest = 0
  too_long: tuple[int, int] | None = None  # (record index, its length)
  batches = iter(tf.data.TFRecordDataset(path).batch(_READ_BATCH))
  while True:
    try:
      serialized = next(batches)
    except StopIteration:
      break
    except tf.errors.DataLossError as e:
      # Unreadable bytes; the records before them in this batch are good.
      index = good + _count_readable(path, skip=good)
      return FileCheck(path, index, f"record {index}: {_tf_cause(e)}",
                       "corrupt", longest)
    lengths, over, bad_index, reason = _check_batch(serialized, len_max_input)
    if bad_index is not None:
      return FileCheck(path, good + bad_index,
                       f"record {good + bad_index}: {reason}", "schema",
                       max(longest, int(lengths[:bad_index].max(initial=0))))
    longest = max(longest, int(lengths.max(initial=0)))
    over = np.flatnonzero(over)
    if over.size and too_long is None:
      too_long = (good + int(over[0]), int(lengths[over[0]]))
    good += len(lengths)
    consumed += int(tf.reduce_sum(tf.strings.length(serialized))) + (
        schema.RECORD_FRAMING_BYTES * len(lengths))
  trailing = tf.io.gfile.stat(path).length - consumed
  if trailing:
    # TensorFlow reads a record header cut short as the end of the file.
    return FileCheck(
        path, good, f"record {good}: the file ends inside its "
        f"{schema.RECORD_HEADER_BYTES}-byte header "
        f"({trailing} byte(s) after the last whole record)", "corrupt",
        longest)
  if too_long is not None:
    index, length = too_long
    return FileCheck(
        path, index, f"record {index} has input length {length} (defs + ':' "
        f"+ op), over len_max_input={len_max_input}; the longest in the file "
        f"is {longest}", "too_long", longest)
  return FileCheck(path, good, max_input_length=longest)


def _count_readable(path: str, skip: int) -> int:
  """Records that read after the first `skip` ones, up to the bad one."""
  count = 0
  try:
    for _ in tf.data.TFRecordDataset(path).skip(skip):
      count += 1
  except tf.errors.DataLossError:
    pass
  return count


def _check_batch(serialized: tf.Tensor, len_max_input: int
                 ) -> tuple[np.ndarray, np.ndarray, int | None, str]:
  """The format's record check of a batch of records, eagerly.

  Returns:
    The records' input lengths, which of them are over len_max_input, and
    the first record of the batch that is not a valid Example of the format
    (None if all are) with the reason. An input over len_max_input is not
    such a reason: the file is read on to find its longest input.
  """
  spec = schema.parse_features()
  try:
    parsed = tf.io.parse_example(serialized, spec)
  except tf.errors.InvalidArgumentError:
    # Find the record: parse them one by one.
    for index, record in enumerate(serialized):
      try:
        tf.io.parse_example(record[tf.newaxis], spec)
      except tf.errors.InvalidArgumentError as e:
        empty = np.zeros([index], np.int64)
        return empty, empty.astype(bool), index, (
            "not an Example with int64 features "
            f"{', '.join(schema.FEATURES)} ({_tf_cause(e)})")
    raise  # the batch failed but no record alone does: not a data problem
  checks = schema.check_records(parsed, len_max_input)
  # The first failing check names a record; at a tie, the first listed.
  failures = [(checks.empty_res, f"an empty '{schema.RES}' feature")]
  for key in schema.FEATURES:
    failures.append((checks.outside_vocabulary[key], f"a token id in '{key}' "
                     f"outside the vocabulary [0, {vocab.VOCAB_SIZE})"))
  first_bad, reason = None, ""
  for failed, what in failures:
    hits = np.flatnonzero(failed.numpy())
    if hits.size and (first_bad is None or hits[0] < first_bad):
      first_bad, reason = int(hits[0]), what
  return (checks.input_lengths.numpy(), checks.too_long.numpy(), first_bad,
          reason)


def _tf_cause(error: tf.errors.OpError) -> str:
  """The line of TensorFlow's message that says what is wrong, without the
  graph's decorations (node names, stack traces, iterator names)."""
  message = (error.message or "").replace("\\'", "'")
  candidates = []
  for line in message.splitlines():
    line = line.strip()
    if not line or line.startswith(_DECORATIONS):
      continue
    # Decorations first: "{{function_node ...}}" comes before "Error in".
    line = errors.strip_graph_decorations(line)
    line = re.sub(r"^Error in user-defined function passed to .*? "
                  r"transformation with iterator: \S+: ", "", line)
    line = schema.strip_marker(line)
    if line:
      candidates.append(line)
  cause = next((line for line in candidates if any(
      text in line for text in _CAUSES)), candidates[-1] if candidates else
               type(error).__name__)
  cause = re.sub(r"(corrupted|truncated) record at (\d+)",
                 r"\1 record at byte \2", cause)
  return cause.replace("' failed with Read less bytes than requested",
                       " (the file ends inside it)")


# Lines of a graph error message that say where, not what.
_DECORATIONS = ("Graph execution error", "Detected at node", "<stack traces",
                "File \"", "Node: ", "[[")
# Phrases of the lines that say what.
_CAUSES = ("corrupted record", "truncated record", "assertion failed",
           "Key: ", "Name: ", *schema.TF_PARSE_ERRORS)


def find_bad_file(files: Sequence[str], len_max_input: int,
                  budget_s: float = SCAN_BUDGET_S,
                  clock: Callable[[], float] = time.monotonic
                  ) -> tuple[FileCheck | None, int]:
  """Checks `files` in order until one is bad or `budget_s` is spent.

  Returns:
    The first bad file's FileCheck (None if none was found) and the number
    of files checked.
  """
  deadline = clock() + budget_s
  for checked, path in enumerate(files, start=1):
    result = check_file(path, len_max_input)
    if not result.ok:
      return result, checked
    if clock() > deadline:
      return None, checked
  return None, len(files)


def describe_data_error(error: tf.errors.OpError, files: Sequence[str],
                        len_max_input: int, split: str) -> errors.UserError:
  """Turns an error of the input pipeline into one line naming the file.

  Reads the split's files (at most SCAN_BUDGET_S seconds) to find the bad
  one, since TensorFlow's message names no file.

  Args:
    error: a DataLossError or InvalidArgumentError raised by a train or
      eval step.
    files: every file of the split the failing pipeline read.
    len_max_input: the config's padded input length.
    split: a split's noun ("training", "evaluation"), to name in messages.
  Returns:
    The UserError to raise (exit status 2).
  Raises:
    The original error again when no file is bad and TensorFlow's message
    is not one of the input pipeline's: then it is not a data problem.
  """
  cause = _tf_cause(error)
  logging.info("%s data: %s; reading the %d %s file(s) to find which one "
               "(at most %.0f s)", split, cause, len(files), split,
               SCAN_BUDGET_S)
  bad, checked = find_bad_file(files, len_max_input)
  if bad is not None:
    return errors.UserError(_one_line(bad, len_max_input))
  if isinstance(error, tf.errors.DataLossError) or _is_pipeline_check(error):
    data_dirs = sorted({posixpath.dirname(f) for f in files})
    scanned = ("every one reads and fits" if checked == len(files) else
               f"the first {checked} of {len(files)} read and fit in "
               f"{SCAN_BUDGET_S:.0f} s")
    return errors.UserError(
        f"{split} data: {cause}; {scanned}: check them all with "
        f"{_verify_command(data_dirs[0])}")
  raise error


def _is_pipeline_check(error: tf.errors.OpError) -> bool:
  """True when the input pipeline's record checks (their marker) or
  TensorFlow's parse of a record raised `error`."""
  message = error.message or ""
  return (schema.check_kind(message) is not None or
          schema.is_parse_error(message))


def _verify_command(data_dir: str) -> str:
  return f"python -m trainer.data verify --deep --data_dir={data_dir}"


def _one_line(bad: FileCheck, len_max_input: int) -> str:
  """`<file>: <cause>: <the way out>` for a bad file."""
  if bad.kind == "too_long":
    return (f"{bad.path}: {bad.problem}: raise --config.model.len_max_input "
            f"to {bad.max_input_length} or more (from {len_max_input}), or "
            "regenerate the data with a smaller --max_value")
  return (f"{bad.path}: {bad.problem} ({bad.good_records} good record(s) "
          f"before it): regenerate or re-copy the file, after checking "
          f"every shard with "
          f"{_verify_command(posixpath.dirname(bad.path))}")
