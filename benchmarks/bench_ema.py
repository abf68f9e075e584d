"""Prints what the EMA of the weights (config.train.ema_decay) costs a step.

  python benchmarks/bench_ema.py [--repeats=5] [--loops=3] \
      [--strategy=default] [--num_cpu_devices=0] [--xla_update]

Two trainers in one process on the default config (seed dimensions, global
batch 128, host loops of its steps_per_loop, its steps_per_call on one
replica): A with ema_decay=0.999, B without. Both run on the same in-memory
batches of random token ids (a step's cost depends on the shapes, not on the
values; no input pipeline in the way). Each measurement is one warm-up host
loop, then `--loops` timed ones; A and B alternate in `--repeats` pairs
(benchmarks/common.py) and the ratio of each pair's time per step is
reported: its median is the EMA's per-step overhead. --strategy=mirrored
--num_cpu_devices=2 measures the several-replica path (the EMA moved in the
update's XLA function, assigned through the strategy); --no-xla_update
Keras's apply_gradients path (the TPU's).
"""

import argparse
import time

import common  # first: the checkout on sys.path

import numpy as np  # pylint: disable=wrong-import-order
import tensorflow as tf  # pylint: disable=wrong-import-order

from configs import default  # pylint: disable=wrong-import-order
from trainer.data import vocab  # pylint: disable=wrong-import-order
from trainer.training import strategy as strategy_lib  # pylint: disable=wrong-import-order
from trainer.training import train  # pylint: disable=wrong-import-order


def side(strategy, ema_decay, xla_update, batches):
  """A function timing `loops` host loops of a trainer with `ema_decay`
  (after one warm-up loop): seconds per step."""
  config = default.get_config()
  config.train.ema_decay = ema_decay
  config.train.xla_update = xla_update
  trainer = train.Trainer(config, strategy)
  iterator = iter(strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensor_slices(batches).repeat()))
  steps = config.train.steps_per_loop
  num_steps = tf.constant(steps)

  def measure(loops):
    float(trainer.train_loop(iterator, num_steps)[0])  # warm-up loop
    start = time.perf_counter()
    for _ in range(loops):
      float(trainer.train_loop(iterator, num_steps)[0])
    return (time.perf_counter() - start) / (loops * steps)

  return measure


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--loops", type=int, default=3)
  parser.add_argument("--strategy", default="default")
  parser.add_argument("--num_cpu_devices", type=int, default=0)
  parser.add_argument("--xla_update", action=argparse.BooleanOptionalAction,
                      default=True)
  args = parser.parse_args()
  strategy = strategy_lib.make_strategy(
      args.strategy, num_cpu_devices=args.num_cpu_devices)
  config = default.get_config()
  rng = np.random.default_rng(0)
  batch = config.train.global_batch_size
  batches = (  # 64 batches: [64, batch, len_max_input], [64, batch]
      tf.constant(rng.integers(0, vocab.VOCAB_SIZE, (
          64, batch, config.model.len_max_input)).astype(np.int32)),
      tf.constant(rng.integers(0, vocab.VOCAB_SIZE,
                               (64, batch)).astype(np.int32)))
  sides = {"A (ema)": side(strategy, 0.999, args.xla_update, batches),
           "B (no ema)": side(strategy, 0.0, args.xla_update, batches)}
  ratios, per_step = [], {name: [] for name in sides}
  for _, order in common.alternate(list(sides), args.repeats):
    seconds = {name: sides[name](args.loops) for name in order}
    for name, value in seconds.items():
      per_step[name].append(value)
    ratios.append(seconds["A (ema)"] / seconds["B (no ema)"])
  print(f"strategy {args.strategy} ({strategy.num_replicas_in_sync} "
        f"replica(s)), xla_update {args.xla_update}, batch {batch}")
  for name, values in per_step.items():
    print(f"{name}: {np.median(values) * 1e3:.3f} ms/step "
          f"({common.spread([v * 1e3 for v in values], 'runs', '{:.3f}')})")
  print(f"A / B per step: {common.ratio(ratios)}")


if __name__ == "__main__":
  main()
