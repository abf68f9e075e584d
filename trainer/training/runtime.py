"""The process's runtime options for a run: TensorFlow's thread pools and
glibc's malloc.

Called once, after TensorFlow is imported and before its first op (which
starts the pools): trainer/task.py calls `configure` right before it builds
the strategy, and the benchmarks that measure the trainer do the same.
"""

from __future__ import annotations

import ctypes
import platform

from absl import logging
import ml_collections
import tensorflow as tf

from trainer import errors


_M_TOP_PAD = -2  # glibc's malloc.h


def configure(config: ml_collections.ConfigDict) -> None:
  """Sets what config.train asks of the process (malloc, thread pools).

  Raises:
    UserError: TensorFlow's pools have started already (an op ran).
  """
  _configure_malloc(config.train.malloc_top_pad_mb)
  _configure_threads(config)


def _configure_malloc(megabytes: int) -> bool:
  """Sets glibc malloc's top pad (M_TOP_PAD) to `megabytes` MiB; 0 leaves
  glibc's own (its default, or MALLOC_TOP_PAD_ from the environment).

  The pad is what each growth of a malloc heap asks the kernel for beyond the
  request, and what a trim leaves at the heap's top. At glibc's default (128
  KiB) a step's buffers, freed and allocated again each step, can grow and
  trim the heaps every step: pages mapped, zeroed and unmapped again.
  Mirrored over 2 CPUs spent 0.84x the CPU per example with a 256 MiB pad,
  the default strategy about the same (docs/measurements.md). The pad is
  address space until used; what a trim leaves stays resident (+2.5 % peak
  RSS measured).

  Returns whether it was set (not on other C libraries, which have no such
  pad: logged).
  """
  if not megabytes:
    return False
  if platform.libc_ver()[0] != "glibc":
    logging.info("config.train.malloc_top_pad_mb=%d: not glibc (%s); "
                 "nothing set", megabytes, platform.libc_ver()[0] or "?")
    return False
  libc = ctypes.CDLL(None)
  if not libc.mallopt(_M_TOP_PAD, ctypes.c_int(megabytes << 20)):
    logging.warning("config.train.malloc_top_pad_mb=%d: glibc refused it",
                    megabytes)
    return False
  return True


def _configure_threads(config: ml_collections.ConfigDict) -> None:
  """Sizes TensorFlow's inter-op thread pool from
  config.train.inter_op_threads (0: TensorFlow's default, one thread a
  core).

  The host loop's ops run one after another, each XLA call waiting for the
  batches before it, so a second inter-op thread only steals and spins: one
  thread took 0.96x the CPU per example at seed dims, batch 256
  (docs/measurements.md).

  Raises:
    UserError: TensorFlow's pools have started already (an op ran).
  """
  threads = config.train.inter_op_threads
  if not threads:
    return
  try:
    tf.config.threading.set_inter_op_parallelism_threads(threads)
  except RuntimeError as e:
    raise errors.UserError(
        f"config.train.inter_op_threads={threads}: TensorFlow has already "
        f"started its thread pools ({e})") from e
