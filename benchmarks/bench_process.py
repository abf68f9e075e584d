"""Prints how many times faster the whole trainer process is than the seed's.

  python benchmarks/bench_process.py [--repeats=5] [--steps=2000]

A (the trainer): `python -m trainer.task` as a user runs it, in a subprocess:
the default config (the seed's model dimensions) at global batch 256 for
`--steps` steps, reading the default data set (800k training and 10k eval
examples, generated beforehand), into a fresh --model_dir; its checkpoints,
TensorBoard logs, the final evaluation and the SavedModel export included.

B (the seed): `benchmarks/seed_fit.py`, the seed blog's tf.data pipeline and
Keras `fit` (no XLA; what is and is not identical: its docstring), in a
subprocess, at batch 256 for 10 epochs over steps / 10 batches of
seed-format shards (written beforehand): the same number of examples trained.

Each side is timed from the subprocess's start to its exit. A and B run in
`--repeats` pairs, the order swapped every other pair (A, B, B, A, ...); the
ratio B / A of each pair is taken and its median and min-max printed: the
machine's speed drifts too much for ratios of separate runs
(benchmarks/common.py). Both sides run the code of the checkout this script
is in.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import common  # first: the checkout on sys.path

from configs import default  # pylint: disable=wrong-import-order
from trainer.data import generate  # pylint: disable=wrong-import-order

ROOT = common.ROOT

SEED_EPOCHS = 10  # the seed's num_epochs


def timed(command, log_path):
  """Seconds from starting `command` (cwd ROOT) to its exit; output to log."""
  with open(log_path, "w") as log:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
  if result.returncode:
    with open(log_path) as log:
      tail = log.read()[-3000:]
    sys.exit(f"error: {' '.join(command)} exited with status "
             f"{result.returncode}; its output ends:\n{tail}")
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5,
                      help="(trainer, seed) pairs")
  parser.add_argument("--steps", type=int, default=2_000,
                      help="training steps of each run (a multiple of 10)")
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--keep", action="store_true",
                      help="keep the temporary directory (data, runs, logs)")
  args = parser.parse_args()
  if args.steps % SEED_EPOCHS:
    sys.exit(f"error: --steps={args.steps} must be a multiple of "
             f"{SEED_EPOCHS} (the seed's epochs)")
  config = default.get_config()
  work_dir = tempfile.mkdtemp(prefix="bench_process_")
  data_dir = os.path.join(work_dir, "data")
  seed_data_dir = os.path.join(work_dir, "seed_data")
  try:
    print(f"generating data in {work_dir}", flush=True)
    generate.ensure_dataset(data_dir, config.data, config.seed)
    seed_examples = args.steps * args.batch_size  # over all epochs
    seed_command = [sys.executable, os.path.join(ROOT, "benchmarks",
                                                 "seed_fit.py"),
                    f"--data_dir={seed_data_dir}",
                    f"--batch_size={args.batch_size}",
                    f"--num_epochs={SEED_EPOCHS}"]
    subprocess.run(
        seed_command + ["--generate",
                        f"--examples={seed_examples // SEED_EPOCHS}"],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL)

    trainer_seconds, seed_seconds, ratios = [], [], []
    for i, order in common.alternate(("trainer", "seed"), args.repeats):
      run = os.path.join(work_dir, f"run{i}")
      commands = {
          "trainer": [sys.executable, "-m", "trainer.task",
                      f"--data_dir={data_dir}", f"--model_dir={run}",
                      f"--config.train.global_batch_size={args.batch_size}",
                      f"--config.train.num_steps={args.steps}"],
          "seed": seed_command + [f"--log_dir={run}/seed_logs"]}
      seconds = {side: timed(commands[side],
                             os.path.join(work_dir, f"{side}{i}.log"))
                 for side in order}
      trainer_seconds.append(seconds["trainer"])
      seed_seconds.append(seconds["seed"])
      ratios.append(seed_seconds[-1] / trainer_seconds[-1])
      print(f"pair {i + 1}/{args.repeats}: trainer {trainer_seconds[-1]:.1f} s"
            f", seed {seed_seconds[-1]:.1f} s: {ratios[-1]:.2f}x", flush=True)
      if not args.keep:
        shutil.rmtree(run, ignore_errors=True)

    examples = args.steps * args.batch_size
    for name, seconds in (("trainer", trainer_seconds),
                          ("seed", seed_seconds)):
      print(f"{name}: {statistics.median(seconds):.1f} s wall "
            f"({common.spread(seconds, 'runs', '{:.1f}')}); "
            f"{examples / statistics.median(seconds):,.0f} examples/s "
            f"start to exit")
    print(f"whole process: seed / trainer = {common.ratio(ratios)}; "
          f"{args.steps} steps at batch {args.batch_size}; target >= 1.5x")
  finally:
    if args.keep:
      print(f"kept {work_dir}")
    else:
      shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
  main()
