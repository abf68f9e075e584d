"""What the fault tests do to a run's files, and the check after: bytes of
a TFRecord file damaged in known places, every file of a directory (to
show nothing was touched), and the step a run directory's latest
checkpoint restores to."""

import os
import random
import struct

import tensorflow as tf

from configs import smoke
from trainer.training import train as train_lib


def restored_step(model_dir):
  """The step of the latest checkpoint, restored into the smoke Trainer
  (every object matched)."""
  latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  assert latest, f"no checkpoint in {model_dir}"
  trainer = train_lib.Trainer(smoke.get_config(), tf.distribute.get_strategy())
  trainer.checkpoint.restore(latest).assert_existing_objects_matched()
  return int(trainer.step.numpy())


def every_file(directory):
  """{path below `directory`: its bytes} of every file there."""
  return {p.relative_to(directory): p.read_bytes()
          for p in directory.rglob("*") if p.is_file()}


def record_offsets(data):
  """(start, end) byte offsets of each record of a TFRecord file."""
  offsets, start = [], 0
  while start < len(data):
    (length,) = struct.unpack("<Q", data[start:start + 8])
    end = start + 8 + 4 + length + 4  # length, its CRC, data, data CRC
    offsets.append((start, end))
    start = end
  return offsets


def flip_bytes(data):
  """Bytes flipped inside record 3's data: its CRC fails (the size holds)."""
  start, end = record_offsets(data)[3]
  middle = (start + 12 + end - 4) // 2
  return data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 4]) + (
      data[middle + 4:])


def truncate(data):
  """The file cut in the middle of record 5."""
  start, end = record_offsets(data)[5]
  return data[:(start + end) // 2]


def random_bytes(data):
  return random.Random(0).randbytes(len(data))
