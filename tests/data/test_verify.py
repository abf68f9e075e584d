"""trainer/data/verify.py in-process: finding a bad record, naming the
file, the wording of TensorFlow's errors."""

import pytest
import tensorflow as tf

from trainer import errors
from trainer.data import pipeline
from trainer.data import verify
from trainer.data import vocab

from tests.helpers import examples

DIGIT = vocab.TOKEN_IDS["1"]
write_records = examples.write_examples


def good(length=1):
  """(defs, op, res) of a valid record of input length `length` + 2."""
  return ([DIGIT] * length, [DIGIT], [DIGIT])


def test_a_good_file(tmp_path):
  path = write_records(tmp_path / "a", [good(), good(5), good(2)])
  result = verify.check_file(path, len_max_input=7)
  assert result.ok and result.good_records == 3
  assert result.max_input_length == 7  # 5 + ':' + 1


@pytest.mark.parametrize("bad, kind, phrase", [
    (([DIGIT], [DIGIT], []), "schema", "an empty 'res' feature"),
    (([DIGIT], [vocab.VOCAB_SIZE], [DIGIT]), "schema",
     "a token id in 'op' outside the vocabulary"),
    (b"not an Example", "schema", "not an Example with int64 features"),
    (good(10), "too_long", "record 2 has input length 12 (defs + ':' + op), "
     "over len_max_input=7; the longest in the file is 12"),
])
def test_the_first_bad_record_is_named(tmp_path, bad, kind, phrase):
  path = write_records(tmp_path / "a", [good(), good(), bad, good()])
  result = verify.check_file(path, len_max_input=7)
  assert (result.kind, result.good_records) == (kind, 2)
  assert result.problem.startswith("record 2") and phrase in result.problem


def test_unreadable_bytes_are_found_after_the_good_records(tmp_path):
  path = tmp_path / "a"
  write_records(path, [good()] * 1500)  # more than one read batch
  data = path.read_bytes()
  record = len(data) // 1500
  at = record * 1200 + 14  # inside record 1200's data
  path.write_bytes(data[:at] + b"\xff\xff" + data[at + 2:])
  result = verify.check_file(str(path), len_max_input=7)
  assert (result.kind, result.good_records) == ("corrupt", 1200)
  # TensorFlow gives the offset of the record's data, after its header.
  assert result.problem == (
      f"record 1200: corrupted record at byte {record * 1200 + 12}")

  path.write_bytes(data[:record * 3 + 5])  # inside record 3's header
  result = verify.check_file(str(path), len_max_input=7)
  assert (result.kind, result.good_records) == ("corrupt", 3)
  assert "ends inside its 12-byte header (5 byte(s)" in result.problem


def test_find_bad_file_stops_at_the_first_and_within_its_budget(tmp_path):
  files = [write_records(tmp_path / f"{i}", [good()]) for i in range(3)]
  bad = write_records(tmp_path / "bad", [good(30)])
  assert verify.find_bad_file([*files, bad], 7)[0].path == bad
  ticks = iter(range(100))
  assert verify.find_bad_file([*files, bad], 7, budget_s=1.5,
                               clock=lambda: next(ticks)) == (None, 2)


def test_a_pipeline_error_becomes_one_line_naming_the_file(tmp_path):
  files = [write_records(tmp_path / "a", [good()] * 20),
           write_records(tmp_path / "b", [good(), good(30)])]
  dataset = pipeline.make_dataset(files, 4, len_max_input=7,
                                  training=False)
  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    list(dataset)
  assert "assertion failed" in verify._tf_cause(raised.value)  # pylint: disable=protected-access
  error = verify.describe_data_error(raised.value, files, 7, "training")
  assert isinstance(error, errors.UserError) and error.exit_status == 2
  assert str(error).startswith(
      f"{files[1]}: record 1 has input length 32")
  assert "raise --config.model.len_max_input to 32 or more (from 7)" in (
      str(error))


def test_an_error_that_is_not_about_data_is_raised_again(tmp_path):
  files = [write_records(tmp_path / "a", [good()])]
  error = tf.errors.InvalidArgumentError(None, None, "Incompatible shapes")
  with pytest.raises(tf.errors.InvalidArgumentError):
    verify.describe_data_error(error, files, 7, "training")
  # A DataLossError with no bad file found: still one line, with the way on.
  loss = tf.errors.DataLossError(None, None, "corrupted record at 12")
  message = str(verify.describe_data_error(loss, files, 7, "training"))
  assert message == (
      "training data: corrupted record at byte 12; every one reads and fits: "
      f"check them all with python -m trainer.data verify --deep "
      f"--data_dir={tmp_path}")
