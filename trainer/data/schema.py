"""The record format of the data set, in one place.

A data set is two splits of TFRecord shards. Each record is a serialized
`tf.train.Example` of three int64-list features, token ids of `vocab`:

  defs  the definitions, e.g. "x=-12,y=34"
  op    the operation, e.g. "y-x"
  res   the result, e.g. "46"; the model predicts its first token

The model's input is defs + ':' + op, padded to len_max_input.

This module owns the feature names, the split table (shard file names,
manifest keys and --split use `Split.name`; messages use `Split.noun`),
the wire bytes the generator writes, the parse spec, the one check of
parsed records and the marker that names a failed check in TensorFlow's
error messages:

  TRAIN, EVAL, SPLITS, split_named("training")  # -> TRAIN
  serialize_example(defs, op, res); tfrecord_frame(record)
  parse_features()                  # the spec of tf.io.parse_example
  check_records(parsed, len_max_input)  # -> RecordChecks, TF ops
  record_assertions(parsed, len_max_input)  # in-graph, marked messages
  check_kind(message)               # -> "too_long" | ... | None

No TensorFlow at import: the generator's shard workers load this module
(through `problems`: trainer/data/shard_worker.py), and TensorFlow would cost
each of them seconds; the functions that need TensorFlow import it when
called (`_tensorflow`).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import re
import struct
from typing import TYPE_CHECKING, Mapping

import google_crc32c

from trainer import errors
from trainer.data import vocab

if TYPE_CHECKING:
  import tensorflow as tf  # pylint: disable=g-bad-import-order

DEFS = "defs"
OP = "op"
RES = "res"
FEATURES = (DEFS, OP, RES)  # the order of the wire bytes


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of the data set, in each vocabulary that names it."""
  name: str  # "train" / "eval": shard file names, manifest keys, --split
  noun: str  # "training" / "evaluation": in messages
  config_field: str  # "train_files" / "eval_files": config.data.<field>


TRAIN = Split("train", "training", "train_files")
EVAL = Split("eval", "evaluation", "eval_files")
SPLITS = (TRAIN, EVAL)


def split_named(name: str) -> Split:
  """The split whose name ("train") or noun ("training") is `name`.

  Raises:
    UserError: no split is called `name`, naming the splits there are.
  """
  for split in SPLITS:
    if name in (split.name, split.noun):
      return split
  raise errors.UserError(f"{name!r} is not a split: use one of "
                         f"{', '.join(s.name for s in SPLITS)}")


SHARD_SUFFIX = ".tfrecord"


def shard_name(split: str, index: int, num_shards: int) -> str:
  """The file name of shard `index` of the split named `split`."""
  return f"{split}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def shard_glob(split: str) -> str:
  """The glob of every `shard_name` of the split named `split`."""
  return f"{split}-*-of-*{SHARD_SUFFIX}"


# -- Wire bytes: written without TensorFlow -------------------------------


def _varint(value: int) -> bytes:
  out = bytearray()
  while value >= 0x80:
    out.append((value & 0x7F) | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _feature_entry(key: bytes, ids: bytes) -> bytes:
  """One `feature` map entry of Features: key -> Int64List of `ids`."""
  # Int64List.value is field 1, packed; ids are < 128, so each packed
  # varint is the id's own byte.
  int64_list = b"\x0a" + _varint(len(ids)) + ids
  feature = b"\x1a" + _varint(len(int64_list)) + int64_list  # int64_list=3
  entry = (b"\x0a" + _varint(len(key)) + key +  # MapEntry.key = 1
           b"\x12" + _varint(len(feature)) + feature)  # MapEntry.value = 2
  return b"\x0a" + _varint(len(entry)) + entry  # Features.feature = 1


# The same bytes as `serialize_example` when every length fits in a one-byte
# varint (all three id lists together shorter than _SHORT_LIMIT): one
# formatting operation per example, the generator's hot path.
_SHORT_FORMAT = (b"\x0a%c"
                 b"\x0a%c\x0a\x04defs\x12%c\x1a%c\x0a%c%b"
                 b"\x0a%c\x0a\x02op\x12%c\x1a%c\x0a%c%b"
                 b"\x0a%c\x0a\x03res\x12%c\x1a%c\x0a%c%b")
# Features' length is (d + 14) + (o + 12) + (r + 13): keep it below 128.
_SHORT_LIMIT = 128 - 39


def serialize_example(defs: bytes, op: bytes, res: bytes) -> bytes:
  """The wire bytes of a tf.train.Example with int64 lists defs, op, res.

  Args:
    defs, op, res: token ids, one byte each (see `vocab.encode_bytes`).
  """
  d, o, r = len(defs), len(op), len(res)
  if d + o + r < _SHORT_LIMIT:
    return _SHORT_FORMAT % (
        d + o + r + 39,
        d + 12, d + 4, d + 2, d, defs,
        o + 10, o + 4, o + 2, o, op,
        r + 11, r + 4, r + 2, r, res)
  features = b"".join(_feature_entry(key.encode(), ids)
                      for key, ids in zip(FEATURES, (defs, op, res)))
  return b"\x0a" + _varint(len(features)) + features  # Example.features = 1


def _masked_crc(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@functools.lru_cache(maxsize=4096)
def _record_header(length: int) -> bytes:
  length_bytes = struct.pack("<Q", length)
  return length_bytes + struct.pack("<I", _masked_crc(length_bytes))


# Bytes a TFRecord adds around each record: the 12-byte header (length and
# its crc) and the 4-byte crc of the data.
RECORD_HEADER_BYTES = 12
RECORD_FRAMING_BYTES = RECORD_HEADER_BYTES + 4


def tfrecord_frame(record: bytes) -> bytes:
  """One TFRecord: length, masked crc32c of the length, data, its crc."""
  return (_record_header(len(record)) + record +
          struct.pack("<I", _masked_crc(record)))


def crc32c_base64(data: bytes) -> str:
  """CRC32C as GCS reports it: base64 of the big-endian 4 bytes."""
  return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


# -- Reading: TensorFlow, imported when called ----------------------------


def _tensorflow():
  """TensorFlow, imported at the first call that needs it (see above)."""
  import tensorflow  # pylint: disable=g-import-not-at-top
  return tensorflow


def parse_features() -> dict[str, tf.io.RaggedFeature]:
  """The spec of `tf.io.parse_example` for a batch of records.

  Ragged, so a record with a feature missing parses (as an empty list) and
  `check_records` says what is wrong with it.
  """
  tf = _tensorflow()
  return {key: tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int32)
          for key in FEATURES}


# The kinds of bad record `check_records` finds.
BAD_ID = "bad_id"  # a token id outside [0, VOCAB_SIZE)
EMPTY_RES = "empty_res"  # no result token to predict
TOO_LONG = "too_long"  # defs + ':' + op longer than len_max_input
CHECK_KINDS = (BAD_ID, EMPTY_RES, TOO_LONG)


@dataclasses.dataclass(frozen=True)
class RecordChecks:
  """What `check_records` found, per record of a batch ([batch] tensors).

  Attributes:
    input_lengths: int32, len(defs) + 1 + len(op).
    outside_vocabulary: {feature: bool}, an id outside the vocabulary.
    empty_res: bool, `res` holds no id.
    too_long: bool, the input is over len_max_input.
  """
  input_lengths: tf.Tensor
  outside_vocabulary: Mapping[str, tf.Tensor]
  empty_res: tf.Tensor
  too_long: tf.Tensor

  def by_kind(self) -> dict[str, tf.Tensor]:
    """{kind of CHECK_KINDS: bool [batch]}: the records failing each."""
    tf = _tensorflow()
    bad_id = tf.reduce_any(tf.stack(
        [self.outside_vocabulary[key] for key in FEATURES]), axis=0)
    return {BAD_ID: bad_id, EMPTY_RES: self.empty_res,
            TOO_LONG: self.too_long}


def check_records(parsed: Mapping[str, tf.RaggedTensor],
                  len_max_input: int) -> RecordChecks:
  """The one check of parsed records, in TensorFlow ops.

  The input pipeline asserts it in the graph (`record_assertions`);
  `records` runs it eagerly to name the bad record of a file.

  Args:
    parsed: a batch parsed with `parse_features()`: int64 ragged
      [batch, (ids)] per feature, before any cast (an id of 2**32 must not
      wrap into the vocabulary).
    len_max_input: the padded input length.
  """
  tf = _tensorflow()
  lengths = {key: parsed[key].row_lengths() for key in FEATURES}
  input_lengths = _input_lengths(lengths)
  outside = {key: tf.reduce_any(_outside_vocabulary(parsed[key]), axis=1)
             for key in FEATURES}
  return RecordChecks(input_lengths=input_lengths,
                      outside_vocabulary=outside,
                      empty_res=_empty(lengths[RES]),
                      too_long=input_lengths > len_max_input)


# The three conditions, each written once: per record above (verify.py
# names the record), over the whole batch in `record_assertions` (the input
# pipeline only asks whether any record fails: reductions over the flat ids,
# without the per-row ragged ops, which cost 0.1-0.5 s more tracing per
# dataset built, 0.5-0.7 s of a default run's start-up; measured).
def _input_lengths(lengths):
  return lengths[DEFS] + 1 + lengths[OP]


def _outside_vocabulary(ids):
  return (ids < 0) | (ids >= vocab.VOCAB_SIZE)


def _empty(res_lengths):
  return res_lengths == 0


# Every in-graph assertion message of a bad record starts with this, the
# kind filled in: `check_kind` reads the kind back from TensorFlow's error,
# so rewording a message cannot turn a named error into a raw one.
MARKER = "[bad record:{kind}]"
_MARKER_PATTERN = re.compile(r"\[bad record:([a-z_]+)\] ?")


def marker(kind: str) -> str:
  """The marker that starts the assertion message of check `kind`."""
  if kind not in CHECK_KINDS:
    raise ValueError(f"unknown check kind {kind!r}: one of {CHECK_KINDS}")
  return MARKER.format(kind=kind)


def check_kind(message: str) -> str | None:
  """The kind of `check_records` check that failed in an error message of
  the input pipeline (any of TensorFlow's decorations around it), or None
  when the message holds no marker."""
  match = _MARKER_PATTERN.search(message or "")
  if match is None or match.group(1) not in CHECK_KINDS:
    return None
  return match.group(1)


def strip_marker(text: str) -> str:
  """`text` without its markers: the words the user reads."""
  return _MARKER_PATTERN.sub("", text)


def record_assertions(parsed: Mapping[str, tf.RaggedTensor],
                      len_max_input: int) -> list[tf.Operation]:
  """Assertions that every record of a parsed batch passes `check_records`,
  one per kind, each message starting with its `marker`. Run them as
  control dependencies of what the batch computes."""
  tf = _tensorflow()
  lengths = {key: parsed[key].row_lengths() for key in FEATURES}
  longest = tf.reduce_max(_input_lengths(lengths))
  all_ids = tf.concat([parsed[key].flat_values for key in FEATURES], axis=0)
  return [
      # Files without a manifest (the seed's, or foreign ones) end here.
      tf.debugging.Assert(
          longest <= len_max_input,
          [f"{marker(TOO_LONG)} an example has input length "
           "(defs + ':' + op)", longest, "over len_max_input",
           len_max_input]),
      tf.debugging.Assert(
          ~tf.reduce_any(_outside_vocabulary(all_ids)),
          [f"{marker(BAD_ID)} a token id is outside the vocabulary "
           f"[0, {vocab.VOCAB_SIZE}):", tf.reduce_min(all_ids),
           tf.reduce_max(all_ids)]),
      tf.debugging.Assert(
          ~tf.reduce_any(_empty(lengths[RES])),
          [f"{marker(EMPTY_RES)} an example has an empty 'res' feature"]),
  ]


# TensorFlow's own words when `tf.io.parse_example` fails on a record that
# is not an Example of the spec: these are TensorFlow's text, not ours, so
# they cannot carry a marker; matched as written by TF 2.x's
# example_parsing_ops ("Could not parse example input, value: ..." for bytes
# that are not an Example; "Feature: <key> ... is required" for a
# fixed-length feature missing).
TF_PARSE_ERRORS = ("Feature: ", "Could not parse example input")


def is_parse_error(message: str) -> bool:
  """True when TensorFlow's message says a record is not an Example."""
  return any(text in (message or "") for text in TF_PARSE_ERRORS)
