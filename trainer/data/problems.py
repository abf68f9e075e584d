"""Arithmetic problems and their TFRecord shards, with no TensorFlow import.

A problem is `defs:op:res`, e.g. `x=-12,y=34:y-x:46`: x and y are integers in
(-max_value, max_value), the order of the definitions and of the operands is
random, the operation is one of `+ - *`, and `res` is the result as text.

Shard `index` of a split is a pure function of (seed, split, index,
examples_per_shard, max_value): its random stream is spawned from the seed
with the key (split, index), so no two shards and no two splits share one.
The shard is built in memory as the exact bytes of a TFRecord file in the
record format of `schema` (its serializer writes them without TensorFlow),
so the generator's worker processes need no TensorFlow. This module is
imported by those workers: keep TensorFlow out of it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from trainer.data import schema
from trainer.data import vocab

OPERATORS = ("+", "-", "*")


def shard_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The random stream of one shard: independent per (seed, split, index).

  Args:
    seed: the data set's seed.
    split: a split's name ("train", "eval").
    index: the shard's index in the split.
  """
  names = [s.name for s in schema.SPLITS]
  if split not in names:
    raise ValueError(f"unknown split {split!r}: expected one of {names}")
  # The split's position in schema.SPLITS is part of every shard's bytes:
  # train is 0 and eval 1, in every data set generated so far.
  sequence = np.random.SeedSequence(
      entropy=seed, spawn_key=(names.index(split), index))
  return np.random.default_rng(sequence)


def generate_problems(rng: np.random.Generator, count: int,
                      max_value: int) -> list[tuple[str, str, str]]:
  """Returns `count` problems as (defs, op, res) strings."""
  xs = rng.integers(-max_value + 1, max_value, size=count).tolist()
  ys = rng.integers(-max_value + 1, max_value, size=count).tolist()
  operators = rng.integers(0, len(OPERATORS), size=count).tolist()
  x_defined_first = rng.integers(0, 2, size=count).tolist()
  x_on_left = rng.integers(0, 2, size=count).tolist()
  problems = []
  for x, y, operator, x_first, x_left in zip(
      xs, ys, operators, x_defined_first, x_on_left):
    defs = f"x={x},y={y}" if x_first else f"y={y},x={x}"
    left, right = (x, y) if x_left else (y, x)
    op = ("x" + OPERATORS[operator] + "y" if x_left
          else "y" + OPERATORS[operator] + "x")
    if operator == 0:
      result = left + right
    elif operator == 1:
      result = left - right
    else:
      result = left * right
    problems.append((defs, op, str(result)))
  return problems


def max_record_bytes(max_value: int) -> int:
  """The bytes of the longest record `generate_problems` can make for
  `max_value`: its TFRecord frame around the Example of the longest defs,
  op and res (x and y of the most digits, negative; the longest of the
  product (max_value - 1)**2 and the difference -2 * (max_value - 1)).

  An upper bound of a shard's bytes per example. Measured (shards of 20,000
  examples), the average is 3-6% below it: 69.0 bytes against 71 at
  max_value 2, 72.9 against 76 at 100, 86.3 against 92 at 10**6.
  """
  digits = len(str(max_value - 1))
  defs = 2 * (len("x=-") + digits) + len(",")
  op = len("x*y")
  res = len("-") + len(str(max((max_value - 1)**2, 2 * (max_value - 1))))
  return len(schema.tfrecord_frame(schema.serialize_example(
      bytes(defs), bytes(op), bytes(res))))


@dataclasses.dataclass(frozen=True)
class Shard:
  """One shard's file bytes and what the manifest records of it."""
  split: str
  index: int
  data: bytes
  num_examples: int
  max_input_length: int  # longest len(defs) + 1 + len(op)

  @property
  def crc32c(self) -> str:
    return schema.crc32c_base64(self.data)


def build_shard(seed: int, split: str, index: int, examples_per_shard: int,
                max_value: int) -> Shard:
  """Builds shard `index` of `split` (a pure function of its arguments)."""
  problems = generate_problems(shard_rng(seed, split, index),
                               examples_per_shard, max_value)
  encode = vocab.encode_bytes
  records = []
  max_input_length = 0
  for defs, op, res in problems:
    max_input_length = max(max_input_length, len(defs) + 1 + len(op))
    records.append(schema.tfrecord_frame(schema.serialize_example(
        encode(defs), encode(op), encode(res))))
  return Shard(split, index, b"".join(records), len(problems),
               max_input_length)
