"""Prints what several replicas cost over one at the same global batch.

  python benchmarks/bench_replicas.py [--repeats=5] [--loops=5] \
      [--batch_size=256] [--steps_per_call=N] [--no-workers]

(a) In one process, the CPU split into 2 logical devices first (the
trainer's --num_cpu_devices=2): the trainer on the default strategy (one
replica, on the first logical device) and on MirroredStrategy over both
logical devices, at the same global batch (seed dims: configs/default.py),
each `Trainer.train_loop` fed from in-memory batches as
benchmarks/bench_steady_state.py's M side is. Both sides do the same
arithmetic on the same 2 cores: mirrored / default is the replicas' overhead.

(b) MultiWorkerMirrored, 1 worker vs 2 local workers (real processes on
127.0.0.1, TF_CONFIG as launch/local_multi_worker.sh sets it; RING
collectives), the same global batch split between the workers, in-memory
batches. Each side is a fresh set of processes (a process holds one
multi-worker strategy): it times `--loops` host loops after a warm-up one
and reports the chief's examples/s and the CPU seconds of all its
processes.

Sides alternate within pairs (benchmarks/common.py); each pair's ratio is
taken and the median and min-max printed, with the CPU time per example
(whole processes), which other work on the machine moves far less than
wall-clock rates.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import common  # first: the checkout on sys.path

import bench_steady_state  # pylint: disable=wrong-import-order
from trainer.data import generate  # pylint: disable=wrong-import-order

# Enough distinct in-memory batches at batch 256: 2 shards of 10,000.
_DATA = {"num_train_shards": 2, "train_examples_per_shard": 10_000,
         "num_eval_shards": 1, "eval_examples_per_shard": 1_000}


def make_config(args):
  config = bench_steady_state.make_config(args.batch_size)
  config.data.update(_DATA)
  if args.steps_per_call is not None:
    config.train.steps_per_call = args.steps_per_call
  if args.malloc_top_pad_mb is not None:
    config.train.malloc_top_pad_mb = args.malloc_top_pad_mb
  return config


def training_files(config, data_dir):
  from trainer.training import feeds  # pylint: disable=g-import-not-at-top
  from trainer.training import plan  # pylint: disable=g-import-not-at-top
  return feeds.list_data_files(plan.resolve(config, data_dir=data_dir))


def in_memory_measure(config, files, num_batches, strategy):
  """A measuring function (bench_steady_state.loop_measure) of the trainer
  on `strategy`, fed `num_batches` in-memory batches, repeated."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer.training import train  # pylint: disable=g-import-not-at-top
  xs, ys = bench_steady_state.in_memory_batches(config, files, num_batches)
  trainer = train.Trainer(config, strategy)
  return bench_steady_state.loop_measure(
      trainer, iter(strategy.distribute_datasets_from_function(
          lambda context: tf.data.Dataset.from_tensor_slices((
              xs[:, :context.get_per_replica_batch_size(xs.shape[1])],
              ys[:, :context.get_per_replica_batch_size(ys.shape[1])]
          )).repeat())))


def mirrored_pairs(args, config, data_dir):
  """(a): default vs mirrored over 2 logical CPUs, in this process."""
  from trainer.training import strategy as strategy_lib  # pylint: disable=g-import-not-at-top
  from trainer.training import runtime  # pylint: disable=g-import-not-at-top
  strategy_lib.split_cpu(2)  # before any TensorFlow op
  runtime.configure(config)  # as trainer/task.py does
  files = training_files(config, data_dir)
  sides = [(name, in_memory_measure(config, files, args.memory_batches,
                                    strategy_lib.make_strategy(name)))
           for name in ("default", "mirrored")]
  examples = args.loops * config.train.steps_per_loop * args.batch_size
  rates = {"default": [], "mirrored": []}
  cpu_us = {"default": [], "mirrored": []}
  ratios = []
  for i, order in common.alternate(sides, args.repeats):
    for name, measure in order:
      seconds, cpu = measure(args.loops)
      rates[name].append(examples / seconds)
      cpu_us[name].append(cpu / examples * 1e6)
    ratios.append(rates["mirrored"][-1] / rates["default"][-1])
    print(f"pair {i + 1}/{args.repeats}: default {rates['default'][-1]:,.0f}"
          f", mirrored {rates['mirrored'][-1]:,.0f} examples/s: "
          f"{ratios[-1]:.2f}x; CPU us/example default "
          f"{cpu_us['default'][-1]:.2f}, mirrored "
          f"{cpu_us['mirrored'][-1]:.2f}", flush=True)
  report("(a) mirrored over 2 logical CPUs / default strategy", rates,
         cpu_us, ratios)
  if args.json:
    print(json.dumps({"rates": rates, "cpu_us": cpu_us}), flush=True)


def report(title, rates, cpu_us, ratios):
  for name, values in rates.items():
    print(f"  {name}: {statistics.median(values):,.0f} examples/s "
          f"({common.spread(values, 'runs', '{:,.0f}')}); CPU "
          f"{statistics.median(cpu_us[name]):.2f} us/example "
          f"({common.spread(cpu_us[name], 'runs')})")
  print(f"{title} = {common.ratio(ratios)}", flush=True)


def worker_main(args):
  """One MultiWorkerMirrored worker of (b) (TF_CONFIG set): prints one JSON
  line {"seconds", "cpu"} of its timed loops."""
  from trainer.training import runtime  # pylint: disable=g-import-not-at-top
  from trainer.training import strategy as strategy_lib  # pylint: disable=g-import-not-at-top
  config = make_config(args)
  runtime.configure(config)  # as trainer/task.py does
  strategy = strategy_lib.make_strategy("multi_worker_mirrored",
                                        collective="RING")
  measure = in_memory_measure(config, training_files(config, args.data_dir),
                              args.memory_batches, strategy)
  seconds, cpu = measure(args.loops)
  print(json.dumps({"seconds": seconds, "cpu": cpu}), flush=True)


def run_workers(count, args, data_dir, log_dir):
  """(seconds of the chief's timed loops, CPU seconds of all workers')."""
  from tests.helpers import workers  # pylint: disable=g-import-not-at-top
  held = workers.reserve_ports(count)
  addresses = [f"127.0.0.1:{s.getsockname()[1]}" for s in held]
  flags = [f"--batch_size={args.batch_size}", f"--loops={args.loops}",
           f"--memory_batches={args.memory_batches}", f"--data_dir={data_dir}"]
  if args.steps_per_call is not None:
    flags.append(f"--steps_per_call={args.steps_per_call}")
  if args.malloc_top_pad_mb is not None:
    flags.append(f"--malloc_top_pad_mb={args.malloc_top_pad_mb}")
  processes = []
  try:
    for index in range(count):
      env = {**os.environ, "TF_GRPC_REUSE_PORT": "1",
             "TF_CONFIG": json.dumps({"cluster": {"worker": addresses},
                                      "task": {"type": "worker",
                                               "index": index}})}
      processes.append(subprocess.Popen(
          [sys.executable, os.path.abspath(__file__), "--worker", *flags],
          env=env, stdout=subprocess.PIPE, text=True,
          stderr=open(os.path.join(log_dir, f"{count}-{index}.log"), "w")))
    results = []
    for process in processes:
      out, _ = process.communicate(timeout=1_200)
      if process.returncode:
        raise RuntimeError(f"worker exited {process.returncode}; logs in "
                           f"{log_dir}")
      results.append(json.loads(out.strip().splitlines()[-1]))
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
    for sock in held:
      sock.close()
  return results[0]["seconds"], sum(r["cpu"] for r in results)


def worker_pairs(args, config, data_dir):
  """(b): 1 vs 2 local MultiWorkerMirrored workers."""
  log_dir = tempfile.mkdtemp(prefix="bench_replicas_logs_")
  examples = args.loops * config.train.steps_per_loop * args.batch_size
  rates = {"1 worker": [], "2 workers": []}
  cpu_us = {"1 worker": [], "2 workers": []}
  ratios = []
  sides = [("1 worker", 1), ("2 workers", 2)]
  for i, order in common.alternate(sides, args.worker_repeats):
    for name, count in order:
      seconds, cpu = run_workers(count, args, data_dir, log_dir)
      rates[name].append(examples / seconds)
      cpu_us[name].append(cpu / examples * 1e6)
    ratios.append(rates["2 workers"][-1] / rates["1 worker"][-1])
    print(f"pair {i + 1}/{args.worker_repeats}: 1 worker "
          f"{rates['1 worker'][-1]:,.0f}, 2 workers "
          f"{rates['2 workers'][-1]:,.0f} examples/s: {ratios[-1]:.2f}x; CPU "
          f"us/example {cpu_us['1 worker'][-1]:.2f}, "
          f"{cpu_us['2 workers'][-1]:.2f}", flush=True)
  report("(b) 2 MultiWorkerMirrored workers / 1 worker", rates, cpu_us,
         ratios)
  shutil.rmtree(log_dir, ignore_errors=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5,
                      help="(default, mirrored) pairs of (a)")
  parser.add_argument("--worker_repeats", type=int, default=3,
                      help="(1 worker, 2 workers) pairs of (b)")
  parser.add_argument("--loops", type=int, default=5,
                      help="timed host loops per measurement")
  parser.add_argument("--batch_size", type=int, default=256,
                      help="global batch of every side")
  parser.add_argument("--steps_per_call", type=int, default=None,
                      help="config.train.steps_per_call (default: the "
                      "default config's)")
  parser.add_argument("--malloc_top_pad_mb", type=int, default=None,
                      help="config.train.malloc_top_pad_mb (default: the "
                      "default config's; 0: glibc's own)")
  parser.add_argument("--json", action="store_true",
                      help="end (a) with a JSON line of its figures "
                      "(benchmarks/bench_malloc.py reads it)")
  parser.add_argument("--memory_batches", type=int, default=64,
                      help="distinct in-memory batches")
  parser.add_argument("--mirrored", action=argparse.BooleanOptionalAction,
                      default=True, help="run (a)")
  parser.add_argument("--workers", action=argparse.BooleanOptionalAction,
                      default=True, help="run (b)")
  parser.add_argument("--worker", action="store_true",
                      help="(internal) be one worker of (b)")
  parser.add_argument("--data_dir", help="(internal) the workers' data")
  args = parser.parse_args()
  if args.worker:
    worker_main(args)
    return
  config = make_config(args)
  data_dir = tempfile.mkdtemp(prefix="bench_replicas_")
  try:
    generate.ensure_dataset(data_dir, config.data, config.seed)
    print(f"batch {args.batch_size}, {config.train.steps_per_loop} steps per "
          f"host loop, steps_per_call {config.train.steps_per_call}, "
          f"{args.loops} timed loops per side, malloc top pad "
          f"{config.train.malloc_top_pad_mb} MiB; {os.cpu_count()} cores; load "
          f"{os.getloadavg()[0]:.1f} at start", flush=True)
    start = time.perf_counter()
    if args.workers:  # first: (a) splits this process's CPU
      worker_pairs(args, config, data_dir)
    if args.mirrored:
      mirrored_pairs(args, config, data_dir)
    print(f"load {os.getloadavg()[0]:.1f} at the end "
          f"({time.perf_counter() - start:.0f} s)")
  finally:
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
  main()
