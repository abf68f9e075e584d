"""Prints what the run's time accounting costs per step, in pairs.

  python benchmarks/bench_time_accounting.py --data_dir=DATA [--repeats=7] \
      [--loops=20] [--batch_size=16] [--strategy=mirrored --num_cpu_devices=2]

DATA: the smoke config's data set (tests/conftest.py's smoke_data, or
`python -m trainer.task --config=configs/smoke.py` once).

A (accounted): trainer.train.Trainer.train_loop as the trainer runs it, with
each get_next timed inside the compiled loop (train._next_batches), and per
host loop what trainer/training/loop.py adds: the input wait read back and
the clock's switches and move (trainer/training/timing.py).
B (not accounted): a second Trainer of the same config whose train_loop was
traced with a plain next(iterator), and no clock.

Both in one process, on their own iterators of the same data, `--loops` host
loops of the smoke config's steps_per_loop each, in `--repeats` pairs, the
order swapped every other pair (benchmarks/common.py): the ratio A / B of
each pair's seconds per step, their median and range, and the difference
in microseconds per step.
"""

import argparse
import statistics
import time

import common  # first: the checkout on sys.path

from configs import smoke  # pylint: disable=wrong-import-order


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--loops", type=int, default=20)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--strategy", default="default")
  parser.add_argument("--num_cpu_devices", type=int, default=0,
                      help="split the CPU (e.g. 2 for --strategy=mirrored)")
  args = parser.parse_args()

  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer.training import feeds  # pylint: disable=g-import-not-at-top
  from trainer.training import plan  # pylint: disable=g-import-not-at-top
  from trainer.training import strategy as strategy_lib  # pylint: disable=g-import-not-at-top
  from trainer.training import timing  # pylint: disable=g-import-not-at-top
  from trainer.training import train  # pylint: disable=g-import-not-at-top

  config = smoke.get_config()
  config.train.global_batch_size = args.batch_size
  strategy = strategy_lib.make_strategy(
      args.strategy, num_cpu_devices=args.num_cpu_devices)
  steps = config.train.steps_per_loop
  num_steps = tf.constant(steps)

  def side(accounted):
    trainer = train.Trainer(config, strategy)
    iterator = feeds.Feeds.of(plan.for_strategy(config, strategy,
                                                args.data_dir),
                              strategy).train_iterator
    clock = timing.Clock(time.perf_counter())
    timed_next = train._next_batches  # pylint: disable=protected-access
    if not accounted:  # traced now, with a plain get_next
      train._next_batches = lambda it, n, after: ([next(it) for _ in range(n)], tf.constant(0.0, tf.float64))  # pylint: disable=protected-access
    try:
      float(trainer.train_loop(iterator, num_steps)[0])
    finally:
      train._next_batches = timed_next  # pylint: disable=protected-access

    def host_loop():
      if accounted:
        clock.switch("train")
      float(trainer.train_loop(iterator, num_steps)[0])
      if accounted:
        clock.switch("other")
        clock.host_loops.append((0.0, steps))
        clock.move("train", "input_wait", float(trainer.input_wait.numpy()))

    def measure():
      start, cpu = time.perf_counter(), time.process_time()
      for _ in range(args.loops):
        host_loop()
      count = args.loops * steps
      return ((time.perf_counter() - start) / count,
              (time.process_time() - cpu) / count)

    return measure

  sides = [("accounted", side(True)), ("not accounted", side(False))]
  per_step = {name: [] for name, _ in sides}
  for _, order in common.alternate(sides, args.repeats):
    for name, measure in order:
      per_step[name].append(measure())
  print(f"{args.strategy}, smoke model, global batch {args.batch_size}, "
        f"{steps} steps per host loop, {args.loops} host loops per side per "
        f"pair")
  # Wall time, then the process's CPU time (all its threads), which other
  # work on a shared machine moves far less.
  for index, clock in enumerate(("wall", "CPU")):
    a = [pair[index] for pair in per_step["accounted"]]
    b = [pair[index] for pair in per_step["not accounted"]]
    for name, values in (("accounted", a), ("not accounted", b)):
      print(f"{clock}, {name}: {1e6 * statistics.median(values):.0f} us/step"
            f" ({common.spread([1e6 * v for v in values], 'pairs', '{:.0f}')})")
    print(f"{clock}, accounted / not accounted: "
          f"{common.ratio([x / y for x, y in zip(a, b)])}; difference "
          f"{1e6 * statistics.median(x - y for x, y in zip(a, b)):+.1f} "
          "us/step")


if __name__ == "__main__":
  main()
