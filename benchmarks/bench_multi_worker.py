"""Prints examples/s of the smoke config on 1 worker and on 2 local workers.

  python benchmarks/bench_multi_worker.py [--steps=600] [--global_batch_size=16]

Both runs use --strategy=multi_worker_mirrored on 127.0.0.1 (the 1-worker run
with a TF_CONFIG of one task), started by launch/local_multi_worker.sh. On a
2-core machine the 2 workers share the cores: this measures the collective
all-reduce overhead, not a speed-up.
"""

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import common  # first: the checkout on sys.path

from configs import smoke  # pylint: disable=wrong-import-order
from trainer.data import generate  # pylint: disable=wrong-import-order

ROOT = common.ROOT


def steady_examples_per_second(model_dir):
  """Median examples/s of the train loops, the first (compiling) excluded."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  by_step = {}
  for path in glob.glob(os.path.join(model_dir, "train", "events.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == "examples_per_sec":
          by_step[event.step] = float(tf.make_ndarray(value.tensor))
  rates = [by_step[s] for s in sorted(by_step)[1:]]
  return statistics.median(rates)


def run_workers(count, data_dir, work_dir, steps, batch):
  model_dir = os.path.join(work_dir, f"run{count}")
  subprocess.run(
      ["bash", os.path.join(ROOT, "launch", "local_multi_worker.sh"),
       str(count), f"--config={os.path.join(ROOT, 'configs', 'smoke.py')}",
       f"--data_dir={data_dir}", f"--model_dir={model_dir}",
       f"--config.train.num_steps={steps}",
       f"--config.train.global_batch_size={batch}",
       "--config.train.steps_per_loop=50", "--config.train.eval_every_steps=0",
       "--config.train.checkpoint_every_steps=0"],
      cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
      env={**os.environ, "PYTHON": sys.executable,
           "LOG_DIR": os.path.join(work_dir, f"logs{count}")})
  return steady_examples_per_second(model_dir)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--global_batch_size", type=int, default=16,
                      help="16 is the smoke config's")
  args = parser.parse_args()
  work_dir = tempfile.mkdtemp(prefix="bench_multi_worker_")
  try:
    config = smoke.get_config()
    data_dir = generate.ensure_dataset(os.path.join(work_dir, "data"),
                                       config.data, config.seed)
    batch = args.global_batch_size
    one = run_workers(1, data_dir, work_dir, args.steps, batch)
    two = run_workers(2, data_dir, work_dir, args.steps, batch)
    print(f"1 worker:  {one:,.0f} examples/s (global batch {batch})")
    print(f"2 workers: {two:,.0f} examples/s (global batch {batch}, "
          f"{batch // 2} per worker): {two / one:.2f}x of 1 worker on this "
          f"{os.cpu_count()}-core machine (overhead, not speed-up)")
  finally:
    shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
  main()
