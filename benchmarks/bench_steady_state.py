"""Prints the trainer's steady-state throughput over its compute bound.

  python benchmarks/bench_steady_state.py [--repeats=5] [--loops=5]

A (the trainer): `trainer.train.Trainer.train_loop` on the default strategy,
fed by its own input pipeline (`trainer.training.feeds.Feeds`) from 8 local shards, at
global batch 256, in host loops of the default config's `steps_per_loop`.

B (the compute bound): Keras `model.fit` with `jit_compile=True` on the same
model (`trainer.model.build_model` with the default config), Adam with the
trainer's schedule (linear warm-up, cosine decay), the same loss (sparse
cross-entropy from logits, mean over the batch) and no metrics, on a fixed
set of real batches already in memory as static-shape tensors (no parsing,
no shuffling), with `steps_per_execution` = `steps_per_loop`, so the host
calls into the graph as often as the trainer does.

C (with --keras_update, the default): the trainer as A with
`config.train.xla_update=False`, Keras's apply_gradients outside XLA (the
loop before Adam's update moved into XLA); printed as A / C.

Each measurement runs one host loop (execution) as warm-up, then `--loops`
timed ones, waiting for each loop's loss as the trainer's own loop does. A and
B alternate (A, B, A, B, ...) `--repeats` times in one process; the ratio of
each pair is taken, and the median and the min-max of those ratios printed:
the machine's speed drifts too much for ratios of separate runs.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Measure the checkout this script is in, not whichever copy of the package
# the virtualenv has installed (an editable install may point elsewhere).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# No TensorFlow import at the top: the data generator's workers are spawned
# and re-import this script as their __main__.
from configs import default  # pylint: disable=g-import-not-at-top
from trainer.data import datasets  # pylint: disable=g-import-not-at-top


def make_config(batch_size):
  config = default.get_config()
  config.train.global_batch_size = batch_size
  config.data.num_train_shards = 8
  config.data.train_examples_per_shard = 50_000
  return config


def trainer_side(config, data_dir, xla_update=True):
  """The trainer and its file-fed iterator; returns a measuring function."""
  config = config.copy_and_resolve_references()
  config.train.xla_update = xla_update
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer.training import feeds  # pylint: disable=g-import-not-at-top
  from trainer.training import plan  # pylint: disable=g-import-not-at-top
  from trainer.training import strategy as strategy_lib  # pylint: disable=g-import-not-at-top
  from trainer.training import train  # pylint: disable=g-import-not-at-top
  strategy = strategy_lib.make_strategy("default")
  trainer = train.Trainer(config, strategy)
  run_feeds = feeds.Feeds.of(plan.for_strategy(config, strategy, data_dir),
                             strategy)
  iterator = run_feeds.train_iterator
  num_steps = tf.constant(config.train.steps_per_loop)

  def measure(loops):
    float(trainer.train_loop(iterator, num_steps)[0])  # warm-up loop
    start = time.perf_counter()
    for _ in range(loops):
      float(trainer.train_loop(iterator, num_steps)[0])
    return time.perf_counter() - start

  return measure, run_feeds.files


def compute_bound_side(config, files, num_batches):
  """Keras fit + XLA on in-memory batches; returns a measuring function."""
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from trainer.model import layers as model_lib  # pylint: disable=g-import-not-at-top
  train = config.train
  # Real batches, read once by the trainer's pipeline, then held in memory.
  batches = list(input_pipeline.make_dataset(
      input_pipeline.pipeline_files(files["training"], training=True,
                                    seed=config.seed),
      train.global_batch_size, len_max_input=config.model.len_max_input,
      training=True, seed=config.seed).take(num_batches).as_numpy_iterator())
  xs = tf.constant(np.stack([x for x, _ in batches]))  # [n, batch, length]
  ys = tf.constant(np.stack([y for _, y in batches]))  # [n, batch]
  dataset = tf.data.Dataset.from_tensor_slices((xs, ys)).repeat()

  keras.utils.set_random_seed(config.seed)
  model = model_lib.build_model(config.model)
  schedule = keras.optimizers.schedules.CosineDecay(
      initial_learning_rate=0.0, decay_steps=train.num_steps -
      train.warmup_steps, alpha=train.min_learning_rate_ratio,
      warmup_target=train.learning_rate, warmup_steps=train.warmup_steps)
  model.compile(
      optimizer=keras.optimizers.Adam(learning_rate=schedule),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      jit_compile=True, steps_per_execution=train.steps_per_loop)

  class Timer(keras.callbacks.Callback):
    """Time at the end of each execution, after its loss is ready."""

    def on_train_batch_end(self, batch, logs=None):
      float(logs["loss"])
      self.ends.append(time.perf_counter())

  timer = Timer()

  def measure(loops):
    timer.ends = []
    model.fit(dataset, epochs=1, steps_per_epoch=(loops + 1) *
              train.steps_per_loop, shuffle=False, verbose=0,
              callbacks=[timer])
    assert len(timer.ends) == loops + 1, len(timer.ends)
    return timer.ends[-1] - timer.ends[0]  # after the warm-up execution

  return measure


def spread(values, form="{:.2f}"):
  return (f"median of {len(values)}; min {form.format(min(values))}, "
          f"max {form.format(max(values))}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5,
                      help="(trainer, compute bound) pairs")
  parser.add_argument("--loops", type=int, default=5,
                      help="timed host loops per measurement")
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--keras_update", action=argparse.BooleanOptionalAction,
                      default=True, help="also time the trainer with Keras's "
                      "apply_gradients (xla_update=False)")
  parser.add_argument("--memory_batches", type=int, default=64,
                      help="distinct in-memory batches of the compute bound")
  args = parser.parse_args()
  config = make_config(args.batch_size)
  steps = args.loops * config.train.steps_per_loop
  examples = steps * args.batch_size
  data_dir = tempfile.mkdtemp(prefix="bench_steady_state_")
  try:
    datasets.ensure_dataset(data_dir, config.data, config.seed)
    trainer_measure, files = trainer_side(config, data_dir)
    bound_measure = compute_bound_side(config, files, args.memory_batches)
    keras_measure = (trainer_side(config, data_dir, xla_update=False)[0]
                     if args.keras_update else None)
    trainer_rates, bound_rates, ratios, update_ratios = [], [], [], []
    for i in range(args.repeats):
      trainer_rates.append(examples / trainer_measure(args.loops))
      bound_rates.append(examples / bound_measure(args.loops))
      ratios.append(trainer_rates[-1] / bound_rates[-1])
      line = (f"pair {i + 1}/{args.repeats}: trainer {trainer_rates[-1]:,.0f}, "
              f"compute bound {bound_rates[-1]:,.0f} examples/s: "
              f"{ratios[-1]:.2f}x")
      if keras_measure:
        keras_rate = examples / keras_measure(args.loops)
        update_ratios.append(trainer_rates[-1] / keras_rate)
        line += (f"; with Keras's apply_gradients {keras_rate:,.0f} "
                 f"examples/s: {update_ratios[-1]:.2f}x")
      print(line, flush=True)
    print(f"trainer (8 local shards): {statistics.median(trainer_rates):,.0f} "
          f"examples/s ({spread(trainer_rates, '{:,.0f}')})")
    print(f"compute bound (fit + XLA, in memory): "
          f"{statistics.median(bound_rates):,.0f} examples/s "
          f"({spread(bound_rates, '{:,.0f}')})")
    print(f"steady state: trainer / compute bound = "
          f"{statistics.median(ratios):.2f}x ({spread(ratios)}; batch "
          f"{args.batch_size}, {steps} steps each; target >= 1.0x)")
    if update_ratios:
      print(f"Adam in XLA / Keras's apply_gradients = "
            f"{statistics.median(update_ratios):.2f}x "
            f"({spread(update_ratios)})")
  finally:
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
  main()
