"""Prints the trainer's end-to-end throughput against its compute bound.

  python benchmarks/bench_train.py [--strategy=default] [--steps=1000]

1. examples/s of the training loop fed from 8 local shards (the real input
   pipeline) at global batch 256, versus the same model, optimizer and loop
   fed from one in-memory batch repeated (the compute bound); target >= 0.95.
2. Seconds from `python -m trainer.task` starting to its first finished step
   (TensorFlow import, data checks, tracing and XLA compilation included).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from configs import default  # pylint: disable=g-import-not-at-top
from trainer.data import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def examples_per_second(trainer, iterator, steps, steps_per_loop):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  num_steps = tf.constant(steps_per_loop)
  trainer.train_loop(iterator, num_steps)  # warm-up: trace, compile, fill
  start = time.perf_counter()
  for _ in range(steps // steps_per_loop):
    loss, *_ = trainer.train_loop(iterator, num_steps)
  float(loss)  # wait for the last loop
  seconds = time.perf_counter() - start
  return steps // steps_per_loop * steps_per_loop * trainer.global_batch_size / seconds


def bench_loop(data_dir, strategy_name, steps, batch_size, rounds):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer.training import feeds  # pylint: disable=g-import-not-at-top
  from trainer.training import plan  # pylint: disable=g-import-not-at-top
  from trainer.training import strategy as strategy_lib  # pylint: disable=g-import-not-at-top
  from trainer.training import train  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.train.global_batch_size = batch_size
  config.train.num_steps = steps
  strategy = strategy_lib.make_strategy(strategy_name)
  model_dir = tempfile.mkdtemp(prefix="bench_train_model_")
  try:
    run_plan = plan.for_strategy(config, strategy, data_dir)
    trainer = train.Trainer(config, strategy)
    from_files = feeds.Feeds.of(run_plan, strategy).train_iterator
    # The compute bound: one real per-replica batch, repeated from memory.
    x, y = next(feeds.Feeds.of(run_plan, strategy).train_iterator)
    x = strategy.experimental_local_results(x)[0]
    y = strategy.experimental_local_results(y)[0]
    from_memory = iter(strategy.distribute_datasets_from_function(
        lambda context: tf.data.Dataset.from_tensors((x, y)).repeat()))
    steps_per_loop = config.train.steps_per_loop
    # Alternate the two feeds and take medians: the machine's speed drifts.
    files_rates, memory_rates = [], []
    for _ in range(rounds):
      files_rates.append(examples_per_second(trainer, from_files, steps,
                                             steps_per_loop))
      memory_rates.append(examples_per_second(trainer, from_memory, steps,
                                              steps_per_loop))
    return statistics.median(files_rates), statistics.median(memory_rates)
  finally:
    shutil.rmtree(model_dir, ignore_errors=True)


def time_to_first_step(data_dir):
  model_dir = tempfile.mkdtemp(prefix="bench_first_step_")
  start = time.perf_counter()
  process = subprocess.Popen(
      [sys.executable, "-m", "trainer.task", f"--data_dir={data_dir}",
       f"--model_dir={model_dir}/run", "--config.train.num_steps=1",
       "--config.train.steps_per_loop=1"],
      cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
  seconds = None
  for line in process.stderr:
    if seconds is None and line.startswith("train: ") and "steps/s" in line:
      seconds = time.perf_counter() - start
  process.wait()
  shutil.rmtree(model_dir, ignore_errors=True)
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--strategy", default="default")
  parser.add_argument("--steps", type=int, default=1000,
                      help="steps per measurement")
  parser.add_argument("--rounds", type=int, default=5,
                      help="alternating measurements of each feed")
  parser.add_argument("--batch_size", type=int, default=256)
  args = parser.parse_args()
  config = default.get_config()
  data_dir = tempfile.mkdtemp(prefix="bench_train_data_")
  try:
    config.data.num_train_shards = 8
    config.data.train_examples_per_shard = 50_000
    generate.ensure_dataset(data_dir, config.data, config.seed)
    files_rate, memory_rate = bench_loop(data_dir, args.strategy, args.steps,
                                         args.batch_size, args.rounds)
    print(f"trainer from 8 local shards: {files_rate:,.0f} examples/s "
          f"(batch {args.batch_size}, median of {args.rounds} x {args.steps} "
          f"steps, {args.strategy})")
    print(f"same loop from an in-memory batch: {memory_rate:,.0f} examples/s")
    print(f"ratio: {files_rate / memory_rate:.3f} (target >= 0.95)")
    print(f"process start to first finished step: "
          f"{time_to_first_step(data_dir):.1f} s")
  finally:
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
  main()
