"""Prints the trainer's steady-state throughput over its compute bound.

  python benchmarks/bench_steady_state.py [--repeats=5] [--loops=5] \
      [--strategy=default] [--no-first_step]
  python benchmarks/bench_steady_state.py --pipeline_only

A (the trainer): `trainer.train.Trainer.train_loop` on --strategy (default:
the default strategy),
fed by its own input pipeline (`trainer.training.feeds.Feeds`) from 8 local
shards of 50,000 examples, at global batch 256, in host loops of the default
config's `steps_per_loop` (its `steps_per_call` steps per XLA call); the
split parsed once into memory (the default config.data.memory_cache_mb), its
fill timed and printed.

M (with --in_memory, the default): A's trainer fed the compute bound's
in-memory batches (below) instead of its pipeline: A / M is what the input
pipeline itself costs the trainer, A / B adds how the trainer's loop
compares with Keras's.

S (with --streamed, the default): A with config.data.memory_cache_mb=0, every
batch read and parsed from the files; printed as S / B beside A / B, and
with M as S / M: what streaming the files costs the trainer.

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
B (and S and M) run in `--repeats` rounds in one process, the order reversed
every other round (A, B, S, M, M, S, B, A, ...); the ratio of each round's
pair is taken, and the median and the min-max of those ratios printed: the
machine's speed drifts too much for ratios of separate runs
(benchmarks/common.py). The CPU
time of the whole process per example is printed too (A, S, B): other work on
the machine moves it far less than the wall-clock rates.

First step (with --first_step, the default): seconds from `python -m
trainer.task` starting to its first finished step (TensorFlow import, data
checks, tracing and XLA compilation included), one run on the same data.

--pipeline_only: the training input pipeline alone (no model), streamed and
cached, in a tf.data private thread pool of one thread, iterated in the graph
(`Dataset.reduce`): examples/s on one core, and the process's CPU time per
example (all threads).
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import common  # first: the checkout on sys.path

# No TensorFlow import at the top: the data generator's workers are spawned
# and re-import this script as their __main__.
from configs import default  # pylint: disable=wrong-import-order
from trainer.data import generate  # pylint: disable=wrong-import-order


def make_config(batch_size):
  config = default.get_config()
  config.train.global_batch_size = batch_size
  config.data.num_train_shards = 8
  config.data.train_examples_per_shard = 50_000
  return config


def trainer_side(config, data_dir, strategy_name, xla_update=True,
                 memory_cache_mb=None):
  """The trainer and its iterator; returns a measuring function, the files
  and the seconds the Feeds took to build (the cache's fill)."""
  config = config.copy_and_resolve_references()
  config.train.xla_update = xla_update
  if memory_cache_mb is not None:
    config.data.memory_cache_mb = memory_cache_mb
  from trainer.training import feeds  # pylint: disable=g-import-not-at-top
  from trainer.training import plan  # pylint: disable=g-import-not-at-top
  from trainer.training import strategy as strategy_lib  # pylint: disable=g-import-not-at-top
  from trainer.training import train  # pylint: disable=g-import-not-at-top
  strategy = strategy_lib.make_strategy(strategy_name)
  trainer = train.Trainer(config, strategy)
  start = time.perf_counter()
  run_feeds = feeds.Feeds.of(plan.for_strategy(config, strategy, data_dir),
                             strategy)
  feeds_seconds = time.perf_counter() - start
  return (loop_measure(trainer, run_feeds.train_iterator), run_feeds.splits,
          feeds_seconds)


def loop_measure(trainer, iterator):
  """A function timing `loops` host loops of `trainer` on `iterator` (after
  one warm-up loop): (seconds, CPU seconds of the process)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  num_steps = tf.constant(trainer.config.train.steps_per_loop)

  def measure(loops):
    float(trainer.train_loop(iterator, num_steps)[0])  # warm-up loop
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(loops):
      float(trainer.train_loop(iterator, num_steps)[0])
    return time.perf_counter() - start, time.process_time() - cpu

  return measure


def in_memory_batches(config, files, num_batches):
  """num_batches real training batches, read once by the trainer's pipeline,
  as two static-shape tensors [num_batches, batch, ...] in memory."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer.data import pipeline  # pylint: disable=g-import-not-at-top
  batches = list(pipeline.make_dataset(
      pipeline.pipeline_files(files["training"].files, training=True,
                              seed=config.seed),
      config.train.global_batch_size,
      len_max_input=config.model.len_max_input, training=True,
      seed=config.seed).take(num_batches).as_numpy_iterator())
  return (tf.constant(np.stack([x for x, _ in batches])),  # [n, batch, len]
          tf.constant(np.stack([y for _, y in batches])))  # [n, batch]


def in_memory_trainer_side(config, files, num_batches, strategy_name):
  """The trainer (as trainer_side) on in-memory batches, repeated."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer.training import strategy as strategy_lib  # pylint: disable=g-import-not-at-top
  from trainer.training import train  # pylint: disable=g-import-not-at-top
  xs, ys = in_memory_batches(config, files, num_batches)
  strategy = strategy_lib.make_strategy(strategy_name)
  trainer = train.Trainer(config, strategy)
  return loop_measure(trainer, iter(strategy.distribute_datasets_from_function(
      lambda _: tf.data.Dataset.from_tensor_slices((xs, ys)).repeat())))


def pipeline_rates(config, files, num_batches):
  """{"streamed"|"cached": (examples/s, CPU us per example)} of the training
  input pipeline alone, on a one-thread tf.data pool."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer.data import manifest  # pylint: disable=g-import-not-at-top
  from trainer.data import pipeline  # pylint: disable=g-import-not-at-top
  batch_size = config.train.global_batch_size
  length = config.model.len_max_input
  share = pipeline.pipeline_files(files["training"].files, training=True,
                                  seed=config.seed)
  cache = pipeline.fill_cache(
      share, manifest.count_examples(share), len_max_input=length)
  datasets = {
      "streamed": pipeline.make_dataset(
          share, batch_size, len_max_input=length, training=True,
          seed=config.seed),
      "cached": pipeline.cached_dataset(
          cache, batch_size, training=True, seed=config.seed)}
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  def count(dataset, n):
    return int(dataset.take(n).reduce(tf.constant(0, tf.int64),
                                      lambda total, batch: total + 1))

  rates = {}
  for name, dataset in datasets.items():
    dataset = dataset.with_options(options)
    count(dataset, 10)  # warm-up: tracing, opening files
    start, cpu = time.perf_counter(), time.process_time()
    assert count(dataset, num_batches) == num_batches
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    examples = num_batches * batch_size
    rates[name] = (examples / seconds, cpu / examples * 1e6)
  return rates, cache.seconds, len(cache.y)


def compute_bound_side(config, files, num_batches):
  """Keras fit + XLA on in-memory batches; returns a measuring function."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer.model import layers as model_lib  # pylint: disable=g-import-not-at-top
  train = config.train
  dataset = tf.data.Dataset.from_tensor_slices(
      in_memory_batches(config, files, num_batches)).repeat()

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
      self.ends.append((time.perf_counter(), time.process_time()))

  timer = Timer()

  def measure(loops):
    timer.ends = []
    model.fit(dataset, epochs=1, steps_per_epoch=(loops + 1) *
              train.steps_per_loop, shuffle=False, verbose=0,
              callbacks=[timer])
    assert len(timer.ends) == loops + 1, len(timer.ends)
    (start, cpu), (end, end_cpu) = timer.ends[0], timer.ends[-1]
    return end - start, end_cpu - cpu  # after the warm-up execution

  return measure


def time_to_first_step(data_dir, strategy_name):
  """Seconds from starting `python -m trainer.task` (one step, on the data in
  `data_dir`) to its first progress line with a rate: its first finished
  step. None if it printed none."""
  model_dir = tempfile.mkdtemp(prefix="bench_first_step_")
  start = time.perf_counter()
  process = subprocess.Popen(
      [sys.executable, "-m", "trainer.task", f"--data_dir={data_dir}",
       f"--model_dir={model_dir}/run", f"--strategy={strategy_name}",
       "--config.train.num_steps=1", "--config.train.steps_per_loop=1"],
      cwd=common.ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
      text=True)
  seconds = None
  for line in process.stderr:
    if seconds is None and line.startswith("train: ") and "steps/s" in line:
      seconds = time.perf_counter() - start
  process.wait()
  shutil.rmtree(model_dir, ignore_errors=True)
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5,
                      help="(trainer, compute bound) pairs")
  parser.add_argument("--strategy", default="default",
                      help="--strategy of the trainer's sides (the compute "
                      "bound is Keras on one device)")
  parser.add_argument("--loops", type=int, default=5,
                      help="timed host loops per measurement")
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--keras_update", action=argparse.BooleanOptionalAction,
                      default=True, help="also time the trainer with Keras's "
                      "apply_gradients (xla_update=False)")
  parser.add_argument("--streamed", action=argparse.BooleanOptionalAction,
                      default=True, help="also time the trainer streaming "
                      "from the files (memory_cache_mb=0)")
  parser.add_argument("--in_memory", action=argparse.BooleanOptionalAction,
                      default=True, help="also time the trainer on the "
                      "compute bound's in-memory batches (no pipeline)")
  parser.add_argument("--first_step", action=argparse.BooleanOptionalAction,
                      default=True, help="also time `python -m trainer.task`"
                      " from its start to its first finished step")
  parser.add_argument("--memory_batches", type=int, default=64,
                      help="distinct in-memory batches of the compute bound")
  parser.add_argument("--steps_per_call", type=int, default=None,
                      help="config.train.steps_per_call of the trainer's "
                      "sides (default: the default config's)")
  parser.add_argument("--pipeline_only", action="store_true",
                      help="time the input pipeline alone, streamed and "
                      "cached, on one tf.data thread; no training")
  parser.add_argument("--pipeline_batches", type=int, default=1_000,
                      help="batches per --pipeline_only measurement")
  args = parser.parse_args()
  config = make_config(args.batch_size)
  if args.steps_per_call is not None:
    config.train.steps_per_call = args.steps_per_call
  steps = args.loops * config.train.steps_per_loop
  examples = steps * args.batch_size
  data_dir = tempfile.mkdtemp(prefix="bench_steady_state_")
  try:
    generate.ensure_dataset(data_dir, config.data, config.seed)
    if args.pipeline_only:
      from trainer.training import feeds  # pylint: disable=g-import-not-at-top
      from trainer.training import plan  # pylint: disable=g-import-not-at-top
      files = feeds.list_data_files(plan.resolve(config, data_dir=data_dir))
      rates, fill_seconds, cached = pipeline_rates(config, files,
                                                   args.pipeline_batches)
      for name, (rate, cpu_us) in rates.items():
        print(f"input pipeline alone, {name}: {rate:,.0f} examples/s on one "
              f"tf.data thread; {cpu_us:.2f} us of CPU per example (batch "
              f"{args.batch_size}, {args.pipeline_batches} batches)")
      print(f"fill: {cached:,} examples parsed into memory in "
            f"{fill_seconds:.2f} s")
      return
    trainer_measure, files, fill_seconds = trainer_side(config, data_dir,
                                                        args.strategy)
    print(f"trainer's feeds built (training split parsed into memory) in "
          f"{fill_seconds:.2f} s", flush=True)
    bound_measure = compute_bound_side(config, files, args.memory_batches)
    memory_measure = (in_memory_trainer_side(config, files,
                                             args.memory_batches,
                                             args.strategy)
                      if args.in_memory else None)
    streamed_measure = (trainer_side(config, data_dir, args.strategy,
                                     memory_cache_mb=0)[0]
                        if args.streamed else None)
    keras_measure = (trainer_side(config, data_dir, args.strategy,
                                  xla_update=False)[0]
                     if args.keras_update else None)
    trainer_rates, bound_rates, ratios, update_ratios = [], [], [], []
    streamed_ratios, over_memory, streamed_over_memory = [], [], []
    # CPU seconds of the whole process per example (us): robust to other
    # work on the machine, which wall-clock rates are not.
    cpu_us = {"trainer": [], "streamed": [], "memory": [], "bound": []}

    def rate(name, measure):
      seconds, cpu = measure(args.loops)
      if name in cpu_us:
        cpu_us[name].append(cpu / examples * 1e6)
      return examples / seconds

    cached_over_streamed = []
    sides = [("trainer", trainer_measure), ("bound", bound_measure)]
    if streamed_measure:
      sides.append(("streamed", streamed_measure))
    if memory_measure:
      sides.append(("memory", memory_measure))
    for i, order in common.alternate(sides, args.repeats):
      rates = {name: rate(name, measure) for name, measure in order}
      trainer_rates.append(rates["trainer"])
      bound_rates.append(rates["bound"])
      ratios.append(trainer_rates[-1] / bound_rates[-1])
      line = (f"pair {i + 1}/{args.repeats}: trainer {trainer_rates[-1]:,.0f}, "
              f"compute bound {bound_rates[-1]:,.0f} examples/s: "
              f"{ratios[-1]:.2f}x")
      if streamed_measure:
        streamed_ratios.append(rates["streamed"] / bound_rates[-1])
        cached_over_streamed.append(rates["trainer"] / rates["streamed"])
        line += (f"; streamed {rates['streamed']:,.0f} examples/s: "
                 f"{streamed_ratios[-1]:.2f}x (cached / streamed "
                 f"{cached_over_streamed[-1]:.2f}x)")
      if memory_measure:
        over_memory.append(rates["trainer"] / rates["memory"])
        line += (f"; trainer on in-memory batches {rates['memory']:,.0f} "
                 f"examples/s (trainer / it {over_memory[-1]:.2f}x)")
      if streamed_measure and memory_measure:
        streamed_over_memory.append(rates["streamed"] / rates["memory"])
      line += "; CPU us/example " + ", ".join(
          f"{name} {values[-1]:.2f}" for name, values in cpu_us.items()
          if values)
      if keras_measure:
        keras_rate = rate("keras", keras_measure)
        update_ratios.append(trainer_rates[-1] / keras_rate)
        line += (f"; with Keras's apply_gradients {keras_rate:,.0f} "
                 f"examples/s: {update_ratios[-1]:.2f}x")
      print(line, flush=True)
    print(f"trainer (8 local shards, cached, {args.strategy} strategy): "
          f"{statistics.median(trainer_rates):,.0f} examples/s "
          f"({common.spread(trainer_rates, 'runs', '{:,.0f}')})")
    print(f"compute bound (fit + XLA, in memory): "
          f"{statistics.median(bound_rates):,.0f} examples/s "
          f"({common.spread(bound_rates, 'runs', '{:,.0f}')})")
    print(f"steady state: trainer / compute bound = {common.ratio(ratios)}; "
          f"batch {args.batch_size}, {steps} steps each, "
          f"{config.train.steps_per_call} per XLA call; target >= 1.0x")
    if over_memory:
      print(f"the pipeline's own cost: trainer from shards / the same "
            f"trainer on in-memory batches = {common.ratio(over_memory)}")
    if streamed_ratios:
      print(f"streamed from the files: trainer / compute bound = "
            f"{common.ratio(streamed_ratios)}; cached / streamed = "
            f"{common.ratio(cached_over_streamed)}")
    if streamed_over_memory:
      print(f"streaming's own cost: trainer streamed from shards / the same "
            f"trainer on in-memory batches = "
            f"{common.ratio(streamed_over_memory)}")
    print("CPU time per example (whole process, us): " + "; ".join(
        f"{name} {statistics.median(values):.2f} "
        f"({common.spread(values, 'runs')})"
        for name, values in cpu_us.items() if values))
    if update_ratios:
      print(f"Adam in XLA / Keras's apply_gradients = "
            f"{common.ratio(update_ratios)}")
    if args.first_step:
      seconds = time_to_first_step(data_dir, args.strategy)
      print("process start to first finished step: " +
            (f"{seconds:.1f} s" if seconds is not None else
             "no progress line with a rate (the trainer's output changed?)"))
  finally:
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
  main()
