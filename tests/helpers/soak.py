"""A soak run: local MultiWorkerMirrored workers (tests/helpers/workers.py),
their threads, RSS and open files sampled over time, and how fast each grows
per 1,000 steps.

tests/training/test_soak.py holds a run to limits; benchmarks/bench_soak.py
runs one from the command line and prints the samples and the slopes.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import signal
import statistics
import sys
import time

from tests.helpers.workers import Workers

FIGURES = ("threads", "rss_mb", "open_files")
# The trainer's progress line: "train:  42% [...] 8,400/20,000 steps, ...".
_STEP = re.compile(r"^train: .*?([\d,]+)/[\d,]+ steps", re.MULTILINE)


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


def run_soak(num_workers: int, config: str, trainer_flags: list[str],
             work_dir: str, interval: float = 5.0,
             seconds: float | None = None, timeout: float | None = None,
             out=sys.stdout) -> SoakResult:
  """Runs the workers (`--config=config`, then `trainer_flags`; logs in
  `work_dir`) to the end, or SIGTERM to worker 0 after `seconds`, sampling
  every `interval` seconds and printing one line per sample to `out`.

  Raises:
    TimeoutError: still running after `timeout` seconds (workers killed).
  """
  workers = Workers(num_workers, trainer_flags, pathlib.Path(work_dir),
                    config=config)
  processes = workers.processes
  log_paths = [str(workers.log_dir / f"worker-{index}.log")
               for index in range(num_workers)]
  try:
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
    workers.kill()  # any still running; frees the held ports


def summarize(result: SoakResult, warmup: float, out=sys.stdout) -> None:
  """Prints, per worker, the figures at the first and last steady sample and
  their slopes per 1,000 steps."""
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
