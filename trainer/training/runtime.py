"""TensorFlow's runtime options for a run: its thread pools.

Called once, after TensorFlow is imported and before its first op (which
starts the pools): trainer/task.py calls `configure` right before it builds
the strategy, and the benchmarks that measure the trainer do the same.
"""

from __future__ import annotations

import ml_collections
import tensorflow as tf

from trainer import errors


def configure(config: ml_collections.ConfigDict) -> None:
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
