"""Prints what gradient accumulation costs per example against the same
effective batch in one step.

  python benchmarks/bench_accumulation.py [--repeats=5] [--loops=3] \
      [--batch=128] [--k=2] [--strategy=default] [--num_cpu_devices=0]

A: the trainer (`trainer.training.train.Trainer.train_loop`, the default
config's model) with config.train.accumulation_steps = K at global batch
--batch; B: K = 1 at global batch K x --batch: the same examples per
optimizer step. Both read the same fixed random batches from memory (no
input pipeline: the step's compute alone), in host loops of the default
config's steps_per_loop optimizer steps, one loop of warm-up (tracing and
XLA compilation) then --loops timed ones. The sides alternate in --repeats
pairs (benchmarks/common.py); printed: seconds per example of each side
(median) and the ratio A / B within pairs (> 1: accumulation costs more per
example).
"""

import argparse
import statistics
import time

import common  # first: the checkout on sys.path

import numpy as np  # pylint: disable=wrong-import-order
import tensorflow as tf  # pylint: disable=wrong-import-order

from configs import default  # pylint: disable=wrong-import-order
from trainer.training import strategy as strategy_lib  # pylint: disable=wrong-import-order
from trainer.training import train  # pylint: disable=wrong-import-order


def side(strategy, batch, k, examples):
  """A trainer at global batch `batch`, K = k, on `examples` (x, y) in
  memory, repeated; returns a function timing `loops` host loops:
  seconds per example."""
  config = default.get_config()
  config.train.global_batch_size = batch
  config.train.accumulation_steps = k
  trainer = train.Trainer(config, strategy)
  dataset = tf.data.Dataset.from_tensor_slices(examples).batch(
      batch, drop_remainder=True).repeat()
  iterator = iter(strategy.experimental_distribute_dataset(dataset))
  num_steps = tf.constant(config.train.steps_per_loop)
  float(trainer.train_loop(iterator, num_steps)[0])  # warm-up: compiles

  def measure(loops):
    start = time.perf_counter()
    for _ in range(loops):
      float(trainer.train_loop(iterator, num_steps)[0])
    seconds = time.perf_counter() - start
    return seconds / (loops * config.train.steps_per_loop * batch * k)

  return measure


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--loops", type=int, default=3)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--k", type=int, default=2)
  parser.add_argument("--strategy", default="default")
  parser.add_argument("--num_cpu_devices", type=int, default=0)
  args = parser.parse_args()
  strategy = strategy_lib.make_strategy(
      args.strategy, num_cpu_devices=args.num_cpu_devices)
  rng = np.random.default_rng(0)
  count = 64 * args.k * args.batch
  x = rng.integers(1, 20, size=(count, 20)).astype(np.int32)
  x[:, 15:] = 0
  y = rng.integers(0, 20, size=(count,)).astype(np.int32)
  sides = {"accumulated": side(strategy, args.batch, args.k, (x, y)),
           "one step": side(strategy, args.k * args.batch, 1, (x, y))}
  seconds = {name: [] for name in sides}
  for _, order in common.alternate(list(sides), args.repeats):
    for name in order:
      seconds[name].append(sides[name](args.loops))
  for name, values in seconds.items():
    print(f"{name}: {statistics.median(values) * 1e6:.2f} us/example "
          f"({common.spread(values, form='{:.3g}')})")
  ratios = [a / b for a, b in zip(seconds["accumulated"], seconds["one step"])]
  print(f"K={args.k} x batch {args.batch} against batch "
        f"{args.k * args.batch} ({args.strategy}): per example "
        f"{common.ratio(ratios)}")


if __name__ == "__main__":
  main()
