"""Soak run: N local MultiWorkerMirrored workers, their threads, RSS and open
files over time, and how fast each grows per 1,000 steps.

  python benchmarks/bench_soak.py --workers=2 --steps=20000
  python benchmarks/bench_soak.py --workers=2 --seconds=3600 \\
      --config=configs/smoke.py -- --config.train.steps_per_loop=100

Each worker is `python -m trainer.task --strategy=multi_worker_mirrored` on
127.0.0.1 with its own TF_CONFIG (ports held until the run ends: see
`reserve_ports`). Every --interval seconds it reads /proc/PID/status
(Threads, VmRSS) and counts /proc/PID/fd of each worker, with the step the
worker last reported (its progress line), and prints one line. At the end it
prints, per worker, a least-squares slope of each figure against the step
over the samples taken while it trained, after --warmup (the first host loops
build tf.data threads and XLA code), and the figures at the first and last of
those samples.

Without --data_dir the trainer uses (and, the first time, generates) the
config's default data set. Trainer flags go after `--`. With --seconds the
run is stopped by SIGTERM to worker 0 (every worker saves and exits 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = ("threads", "rss_mb", "open_files")
# The trainer's progress line: "train:  42% [...] 8,400/20,000 steps, ...".
_STEP = re.compile(r"^train: .*?([\d,]+)/[\d,]+ steps", re.MULTILINE)


def reserve_ports(count: int) -> list[socket.socket]:
  """`count` localhost ports, each held by a bound socket until closed.

  SO_REUSEPORT: a worker started with TF_GRPC_REUSE_PORT=1 (TensorFlow's
  gRPC server then binds with SO_REUSEPORT too) listens on a held port while
  any other process gets "address in use" for it: no window between finding
  a free port and the worker binding it. The sockets never listen, so every
  connection goes to the worker.
  """
  sockets = []
  for _ in range(count):
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind(("127.0.0.1", 0))
    sockets.append(held)
  return sockets


@dataclasses.dataclass
class Sample:
  seconds: float  # since the workers started
  step: int  # the worker's last reported step (0 before its first)
  threads: int
  rss_mb: float
  open_files: int


def read_figures(pid: int) -> tuple[int, float, int] | None:
  """(threads, RSS in MB, open file descriptors) of a live process."""
  try:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
      fields = dict(line.split(":", 1) for line in status if ":" in line)
    open_files = len(os.listdir(f"/proc/{pid}/fd"))
  except (OSError, ValueError):
    return None  # ended meanwhile
  if "VmRSS" not in fields:
    return None  # ended, not yet reaped (a zombie has no memory)
  return (int(fields["Threads"]), int(fields["VmRSS"].split()[0]) / 1024,
          open_files)


def last_step(log_path: str) -> int:
  with open(log_path, encoding="utf-8", errors="replace") as log:
    found = _STEP.findall(log.read())
  return int(found[-1].replace(",", "")) if found else 0


def slope_per_1000_steps(samples: list[Sample], figure: str) -> float:
  """Least-squares slope of `figure` against the step, per 1,000 steps (0
  when every sample is at one step)."""
  steps = [s.step for s in samples]
  if len(set(steps)) < 2:
    return 0.0
  return statistics.linear_regression(
      steps, [getattr(s, figure) for s in samples]).slope * 1000


@dataclasses.dataclass
class SoakResult:
  codes: list[int]  # exit status of each worker
  samples: list[list[Sample]]  # per worker
  log_paths: list[str]

  def steady(self, worker: int, warmup: float) -> list[Sample]:
    """The samples of `worker` while it trained, after the first `warmup` of
    its steps (from its last step on it evaluates, exports and exits)."""
    samples = self.samples[worker]
    last = max((s.step for s in samples), default=0)
    return [s for s in samples if warmup * last < s.step < last]

  def slopes(self, worker: int, warmup: float) -> dict[str, float]:
    steady = self.steady(worker, warmup)
    return {figure: slope_per_1000_steps(steady, figure)
            for figure in FIGURES}


def run_soak(num_workers: int, trainer_flags: list[str], work_dir: str,
             interval: float = 5.0, seconds: float | None = None,
             timeout: float | None = None, out=sys.stdout) -> SoakResult:
  """Runs the workers to the end (or SIGTERM after `seconds`), sampling.

  Raises:
    TimeoutError: still running after `timeout` seconds (workers killed).
  """
  held = reserve_ports(num_workers)
  addresses = [f"127.0.0.1:{s.getsockname()[1]}" for s in held]
  processes, log_paths = [], []
  try:
    for index in range(num_workers):
      log_paths.append(os.path.join(work_dir, f"worker-{index}.log"))
      env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
             "TF_GRPC_REUSE_PORT": "1",
             "TF_CONFIG": json.dumps({"cluster": {"worker": addresses},
                                      "task": {"type": "worker",
                                               "index": index}})}
      with open(log_paths[-1], "w", encoding="utf-8") as log:
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "trainer.task",
             "--strategy=multi_worker_mirrored", *trainer_flags],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    samples = [[] for _ in processes]
    started = time.monotonic()
    stopping = False
    while any(p.poll() is None for p in processes):
      elapsed = time.monotonic() - started
      if timeout and elapsed > timeout:
        raise TimeoutError(f"workers still running after {timeout:.0f} s")
      if seconds and elapsed > seconds and not stopping:
        processes[0].send_signal(signal.SIGTERM)  # all save, then stop
        stopping = True
      parts = []
      for index, process in enumerate(processes):
        figures = read_figures(process.pid) if process.poll() is None else None
        if figures:
          sample = Sample(elapsed, last_step(log_paths[index]), *figures)
          samples[index].append(sample)
          parts.append(f"w{index} step {sample.step:>7,} threads "
                       f"{sample.threads:>5} rss {sample.rss_mb:7.1f} MB "
                       f"files {sample.open_files:>4}")
        else:
          parts.append(f"w{index} ended ({process.poll()})")
      print(f"{elapsed:7.0f} s  " + " | ".join(parts), file=out, flush=True)
      time.sleep(interval)
    return SoakResult([p.returncode for p in processes], samples, log_paths)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
    for socket_ in held:
      socket_.close()


def summarize(result: SoakResult, warmup: float, out=sys.stdout) -> None:
  for index in range(len(result.samples)):
    steady = result.steady(index, warmup)
    if len(steady) < 2:
      print(f"worker {index}: too few samples after the warm-up to fit a "
            "slope", file=out)
      continue
    first, last = steady[0], steady[-1]
    slopes = result.slopes(index, warmup)
    print(f"worker {index} (exit {result.codes[index]}), steps "
          f"{first.step:,} to {last.step:,} ({len(steady)} samples): " +
          "; ".join(f"{figure} {getattr(first, figure):,.1f} -> "
                    f"{getattr(last, figure):,.1f}, "
                    f"{slopes[figure]:+.2f} per 1,000 steps"
                    for figure in FIGURES), file=out)


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
  parser.add_argument("--config", default=os.path.join(ROOT, "configs",
                                                       "default.py"))
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
  flags = [f"--config={args.config}", f"--model_dir={work_dir}/run",
           f"--config.train.num_steps={args.steps}", *(
               [f"--data_dir={args.data_dir}"] if args.data_dir else []),
           *args.trainer_flags]
  print(f"{args.workers} workers, logs and model_dir in {work_dir}",
        flush=True)
  result = run_soak(args.workers, flags, work_dir, interval=args.interval,
                    seconds=args.seconds)
  summarize(result, args.warmup)
  return 0 if all(code == 0 for code in result.codes) else 1


if __name__ == "__main__":
  sys.exit(main())
