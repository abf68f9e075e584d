"""A generator worker process: builds the shards it is asked for, in memory.

  python -m trainer.data.shard_worker '{"seed": 0, "split": "train",
      "examples_per_shard": 10000, "max_value": 100}'

Started by trainer/data/generate.py, several at once. It reads shard indices
from stdin, one per line, until stdin closes, and writes each built shard to
stdout: a fixed header (`HEADER`: index, examples, longest input, bytes)
followed by the shard's bytes. `read_shard` reads one back; the protocol has
this one owner.

The workers are a module of their own, not multiprocessing's spawned
children: spawn runs the parent's `__main__` module again in every child
(`trainer.task`, a benchmark script, `python -m trainer.data`), so whatever
an entry point imports at its top, TensorFlow included, each worker would
import too. This module imports only what builds a shard (problems, schema,
vocab: no TensorFlow, no file access), whatever program runs the generator.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from typing import BinaryIO

from trainer.data import problems

# Before each shard's bytes: index, num_examples, max_input_length, num_bytes.
HEADER = struct.Struct("<4q")


def serve(params: dict, requests: BinaryIO, out: BinaryIO) -> None:
  """Builds the shard of each index line of `requests`, writes it to `out`."""
  for line in iter(requests.readline, b""):
    shard = problems.build_shard(
        params["seed"], params["split"], int(line),
        params["examples_per_shard"], params["max_value"])
    out.write(HEADER.pack(shard.index, shard.num_examples,
                          shard.max_input_length, len(shard.data)))
    out.write(shard.data)
    out.flush()


def read_shard(stream: BinaryIO, split: str) -> problems.Shard | None:
  """The next shard a worker wrote to `stream` (unbuffered: a raw pipe);
  None when the worker ended before writing all of it."""
  header = _read_exactly(stream, HEADER.size)
  if header is None:
    return None
  index, num_examples, max_input_length, num_bytes = HEADER.unpack(header)
  data = _read_exactly(stream, num_bytes)
  if data is None:
    return None
  return problems.Shard(split, index, data, num_examples, max_input_length)


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
  """`size` bytes of a raw stream (whose reads may return fewer), or None at
  its end."""
  buffer = bytearray(size)
  view = memoryview(buffer)
  done = 0
  while done < size:
    count = stream.readinto(view[done:])
    if not count:
      return None
    done += count
  return bytes(buffer)


def main(argv: list[str]) -> int:
  params = json.loads(argv[1])
  try:
    serve(params, sys.stdin.buffer, sys.stdout.buffer)
  except BrokenPipeError:
    # The generator is gone (it ends its workers itself when it stops):
    # nothing to say, and nothing more to flush at exit.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
