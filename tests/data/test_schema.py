"""trainer/data/schema.py: the split table, the marker of the record checks,
and one check agreeing in the pipeline and eagerly."""

import subprocess
import sys

import pytest
import tensorflow as tf

from trainer import errors
from trainer.data import pipeline
from trainer.data import schema
from trainer.data import verify
from trainer.data import vocab
from tests.helpers import examples

DIGIT = vocab.TOKEN_IDS["1"]
LEN = 7  # len_max_input of these tests: inputs of up to 5 + ':' + 1
GOOD = ([DIGIT], [DIGIT], [DIGIT])

# One bad record of each kind the pipeline asserts, and the kind.
BAD_RECORDS = {
    "too_long": (([DIGIT] * 10, [DIGIT], [DIGIT]), schema.TOO_LONG),
    "id_over": (([DIGIT], [vocab.VOCAB_SIZE], [DIGIT]), schema.BAD_ID),
    "id_negative": (([-1], [DIGIT], [DIGIT]), schema.BAD_ID),
    # 2**32 + 1 would be id 1 after a cast to int32.
    "id_wraps": (([DIGIT], [DIGIT], [2**32 + 1]), schema.BAD_ID),
    "empty_res": (([DIGIT], [DIGIT], []), schema.EMPTY_RES),
    "missing_res": (examples.example(*GOOD, drop="res").SerializeToString(),
                    schema.EMPTY_RES),
}


def test_split_table():
  assert schema.SPLITS == (schema.TRAIN, schema.EVAL)
  assert (schema.TRAIN.name, schema.TRAIN.noun,
          schema.TRAIN.config_field) == ("train", "training",
                                                "train_files")
  assert (schema.EVAL.name, schema.EVAL.noun,
          schema.EVAL.config_field) == ("eval", "evaluation",
                                               "eval_files")
  for split in schema.SPLITS:
    assert schema.split_named(split.name) is split
    assert schema.split_named(split.noun) is split
  with pytest.raises(errors.UserError,
                     match="'test' is not a split: use one of train, eval"):
    schema.split_named("test")


def test_format_imports_without_tensorflow():
  code = ("import sys, trainer.data.schema as f; f.serialize_example(b'', "
          "b'', b''); f.check_kind('x'); f.split_named('train'); "
          "print('tensorflow' in sys.modules)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, check=True)
  assert result.stdout.strip() == "False"


def test_check_kind_reads_the_marker_and_nothing_else():
  for kind in schema.CHECK_KINDS:
    text = f"{schema.marker(kind)} whatever the words say"
    # As TensorFlow prints an Assert's data: each item in brackets.
    assert schema.check_kind(f"assertion failed: [{text}] [3]") == kind
    assert schema.strip_marker(f"[{text}]") == (
        "[whatever the words say]")
  assert schema.check_kind("an example has input length 30") is None
  assert schema.check_kind("[bad record:no_such_kind] x") is None
  with pytest.raises(ValueError):
    schema.marker("no_such_kind")


def pipeline_error(files, batch_size=1):
  """The error the input pipeline raises reading `files`, None if none."""
  dataset = pipeline.make_dataset(files, batch_size,
                                  len_max_input=LEN, training=False)
  try:
    list(dataset)
  except tf.errors.InvalidArgumentError as e:
    return e
  return None


@pytest.mark.parametrize("name", sorted(BAD_RECORDS))
def test_each_pipeline_check_is_recognised_by_its_marker(tmp_path, name):
  row, kind = BAD_RECORDS[name]
  good = examples.write_examples(tmp_path / "good", [GOOD] * 4)
  bad = examples.write_examples(tmp_path / "bad", [GOOD, row, GOOD, GOOD])
  error = pipeline_error([good, bad], batch_size=2)
  assert error is not None
  assert schema.check_kind(error.message) == kind
  # The file is found and named.
  message = str(verify.describe_data_error(error, [good, bad], LEN,
                                            "training"))
  assert message.startswith(f"{bad}: record 1"), message
  # With no bad file to find (e.g. past the scan budget), the marker alone
  # makes it a data error: one line, without the marker.
  message = str(verify.describe_data_error(error, [good], LEN,
                                            "evaluation"))
  assert message.startswith("evaluation data: assertion failed: "), message
  assert "[bad record:" not in message
  assert "verify --deep" in message


def test_a_record_of_another_type_is_named_too(tmp_path):
  row = examples.example(*GOOD, as_floats="op").SerializeToString()
  bad = examples.write_examples(tmp_path / "bad", [GOOD, row])
  error = pipeline_error([bad])
  assert error is not None and schema.check_kind(error.message) is None
  message = str(verify.describe_data_error(error, [bad], LEN, "training"))
  assert message.startswith(f"{bad}: record 1: not an Example with int64 "
                            "features defs, op, res ("), message


@pytest.mark.parametrize("name", ["good", *sorted(BAD_RECORDS)])
def test_the_eager_check_and_the_pipeline_agree(tmp_path, name):
  row, kind = BAD_RECORDS.get(name, (GOOD, None))
  path = examples.write_examples(tmp_path / "one", [row])
  # In the graph: the kind the pipeline asserts.
  error = pipeline_error([path])
  in_graph = None if error is None else schema.check_kind(
      error.message)
  # Eagerly: the same check on the same record...
  parsed = tf.io.parse_example(
      tf.constant([examples.serialized(row)]),
      schema.parse_features())
  failed = schema.check_records(parsed, LEN).by_kind()
  eager = {k for k, hits in failed.items() if hits.numpy().any()}
  # ...and verify.check_file, which uses it.
  checked = verify.check_file(path, LEN)
  assert in_graph == kind
  assert eager == (set() if kind is None else {kind})
  assert checked.kind == {None: "ok", schema.TOO_LONG: "too_long"}.get(
      kind, "schema")
