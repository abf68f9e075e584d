"""TFRecord files of hand-made tf.train.Example records, for tests.

The one writer of records the tests make by hand, with TensorFlow's own
protos: never with the product's serializer (trainer.data.schema), or a
test would pass with a wrong format. The feature names are spelled here for
the same reason.

  examples.write_examples(path, [(defs, op, res), b"raw bytes", ...])
  examples.example(defs, op, res, drop="res")  # a tf.train.Example
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterable, Sequence, Union

import tensorflow as tf

FEATURES = ("defs", "op", "res")

# A row: (defs, op, res) token id lists, or a record's bytes as they are.
Row = Union[tuple[Sequence[int], Sequence[int], Sequence[int]], bytes]


def example(defs: Sequence[int], op: Sequence[int], res: Sequence[int], *,
            drop: str | None = None,
            as_floats: str | None = None) -> tf.train.Example:
  """The Example of one problem's token ids, int64 lists by default.

  Args:
    defs, op, res: token ids.
    drop: a feature to leave out (a missing feature).
    as_floats: a feature to write as a float list (a wrong feature type).
  """
  feature = {}
  for key, ids in zip(FEATURES, (defs, op, res)):
    if key == drop:
      continue
    if key == as_floats:
      feature[key] = tf.train.Feature(
          float_list=tf.train.FloatList(value=[float(i) for i in ids]))
    else:
      feature[key] = tf.train.Feature(
          int64_list=tf.train.Int64List(value=[int(i) for i in ids]))
  return tf.train.Example(features=tf.train.Features(feature=feature))


def serialized(row: Row) -> bytes:
  """The record of one row: an `example`'s bytes, or the bytes given."""
  if isinstance(row, bytes):
    return row
  return example(*row).SerializeToString()


def write_examples(path: str | os.PathLike, rows: Iterable[Row]) -> str:
  """Writes a TFRecord file of `rows` at `path`; returns the path as str.

  Args:
    path: the file to write.
    rows: (defs, op, res) id lists, each written as an `example`; bytes
      (e.g. `example(...).SerializeToString()` of a variant, or bytes that
      are no Example at all) written as the record as they are.
  """
  path = str(path)
  with tf.io.TFRecordWriter(path) as writer:
    for row in rows:
      writer.write(serialized(row))
  return path


def file_bytes(rows: Iterable[Row]) -> bytes:
  """The bytes of the TFRecord file `write_examples` writes for `rows`."""
  with tempfile.TemporaryDirectory() as directory:
    path = write_examples(os.path.join(directory, "examples.tfrecord"), rows)
    with open(path, "rb") as f:
      return f.read()
