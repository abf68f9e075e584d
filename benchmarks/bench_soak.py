"""Soak run: N local MultiWorkerMirrored workers, their threads, RSS and open
files over time, and how fast each grows per 1,000 steps.

  python benchmarks/bench_soak.py --workers=2 --steps=20000
  python benchmarks/bench_soak.py --workers=2 --seconds=3600 \\
      --config=configs/smoke.py -- --config.train.steps_per_loop=100

Each worker is `python -m trainer.task --strategy=multi_worker_mirrored` on
127.0.0.1 with its own TF_CONFIG (ports held until the run ends: see
`reserve_ports` in tests/helpers/workers.py). Every --interval seconds it
reads /proc/PID/status (Threads, VmRSS) and counts /proc/PID/fd of each
worker, with the step the worker last reported (its progress line), and
prints one line (tests/helpers/soak.py, which tests/training/test_soak.py
runs too). At the end it
prints, per worker, a least-squares slope of each figure against the step
over the samples taken while it trained, after --warmup (the first host loops
build tf.data threads and XLA code), and the figures at the first and last of
those samples.

Without --data_dir the trainer uses (and, the first time, generates) the
config's default data set. Trainer flags go after `--`. With --seconds the
run is stopped by SIGTERM to worker 0 (every worker saves and exits 0).
"""

import argparse
import os
import sys
import tempfile

import common  # first: the checkout on sys.path

from tests.helpers import soak  # pylint: disable=wrong-import-order


def main() -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      epilog="Trainer flags after --, e.g. -- --config.train.steps_per_loop=100")
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--steps", type=int, default=20_000,
                      help="config.train.num_steps (with --seconds: the "
                      "upper bound)")
  parser.add_argument("--seconds", type=float, default=None,
                      help="stop the run (SIGTERM) after this long")
  parser.add_argument("--config", default=os.path.join(
      common.ROOT, "configs", "default.py"))
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--interval", type=float, default=5.0,
                      help="seconds between samples")
  parser.add_argument("--warmup", type=float, default=0.1,
                      help="fraction of the steps left out of the slopes")
  parser.add_argument("trainer_flags", nargs="*")
  args = parser.parse_args()
  if args.workers < 1 or args.steps < 1 or args.interval <= 0:
    parser.error("--workers, --steps and --interval must be positive")
  if not 0 <= args.warmup < 1:
    parser.error("--warmup must be in [0, 1)")
  work_dir = tempfile.mkdtemp(prefix="bench_soak_")
  flags = [f"--model_dir={work_dir}/run",
           f"--config.train.num_steps={args.steps}", *(
               [f"--data_dir={args.data_dir}"] if args.data_dir else []),
           *args.trainer_flags]
  print(f"{args.workers} workers, logs and model_dir in {work_dir}",
        flush=True)
  result = soak.run_soak(args.workers, args.config, flags, work_dir,
                         interval=args.interval, seconds=args.seconds)
  soak.summarize(result, args.warmup)
  return 0 if all(code == 0 for code in result.codes) else 1


if __name__ == "__main__":
  sys.exit(main())
