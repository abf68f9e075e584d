r"""Prints the trainer's time to an eval accuracy, start to target, N runs.

  python benchmarks/time_to_accuracy.py --config=configs/scaled.py \
      --target=0.99 [--repeats=3] [--seeds] \
      [--against=COMMIT | --vs_config=C2] [-- TRAINER FLAGS...]

Each run is `python -m trainer.task --config=C --data_dir=D --model_dir=M`
(plus the flags after `--`), as a user runs it, in a subprocess with a fresh
--model_dir. The data set is generated beforehand (the config's data section,
into --data_dir or the trainer's own cache directory), so the clock does not
include it; the clock starts when the process starts and evaluation is on it
(MLPerf Training's "time to train").

Time to target: from the process's start to the first eval line ("eval at
step N: loss L, accuracy A ...", trainer/training/summaries.eval_line) on
its output with A >= --target. A checkout whose trainer has
config.train.target_accuracy gets --config.train.target_accuracy=TARGET and
ends by itself (its start-to-exit time, checkpoint and export included, is
printed too); an older one is killed once its target line appears. A run
that ends (or hits --timeout) without reaching the target is reported with
its best accuracy, and the script exits with status 1 at the end. A run that
ends by itself also prints where its time went (metrics.json's "time":
start-up, compile, training, input wait, evaluation, checkpointing, export,
other; docs/running.md).

CPU time is taken too (the machine is shared: CPU seconds move far less
with its load than wall seconds): the process's own CPU (all its threads,
/proc/PID/stat) when its target line appears, and its whole CPU to exit.
With --seeds, run i trains with --config.seed=i (other initial weights and
another data order on the same data set), so the runs show from how many
initial weights the recipe reaches the target, not from one.

--against=COMMIT checks COMMIT out (`git worktree add`, removed at the end)
and runs it and this checkout in pairs on the same data, the order swapped
every other pair (this, COMMIT, COMMIT, this, ...); the ratio of each pair's
times is printed, then the median and min-max of those ratios: the machine's
speed drifts too much for ratios of separate runs (benchmarks/common.py). The config path and trainer flags are passed to both
checkouts as given. --vs_config=C2 pairs the same way this checkout's
--config with its C2 (a recipe against another), each on its own config's
data set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import common  # first: the checkout on sys.path

# The trainer's eval line, as every version of it prints it.
from tests.helpers.eval_checks import parse_eval_line  # pylint: disable=wrong-import-order

ROOT = common.ROOT
# How a checkout shows that its trainer takes a target (configs/default.py).
TARGET_FIELD = "config.train.target_accuracy"


@dataclasses.dataclass
class Run:
  """One trainer run: what its output said, and when (seconds since its
  process started)."""
  label: str
  evals: list[tuple[float, int, float]] = dataclasses.field(
      default_factory=list)  # (seconds, step, accuracy)
  reached: tuple[float, int, float] | None = None  # the first at the target
  reached_cpu: float | None = None  # the process's CPU seconds by then
  exit_cpu: float | None = None  # its CPU seconds in all (ended by itself)
  exit_seconds: float | None = None  # when it ended by itself
  status: int | None = None  # its exit status; None: killed here
  timed_out: bool = False
  # metrics.json's "time" (where the time went, trainer/training/timing.py)
  # of a run that ended by itself, when its trainer writes one.
  time_split: dict[str, float] | None = None

  def best(self) -> tuple[float, int, float] | None:
    return max(self.evals, key=lambda e: e[2], default=None)

  def describe(self, target: float) -> str:
    """The run's result line."""
    if self.reached:
      seconds, step, accuracy = self.reached
      line = (f"{self.label}: time to target {seconds:.1f} s (step {step}, "
              f"accuracy {accuracy:.4f})")
      if self.reached_cpu is not None:
        line += f", {self.reached_cpu:.1f} s of CPU"
      if self.exit_seconds is not None:
        line += f"; start to exit {self.exit_seconds:.1f} s"
      if self.exit_cpu is not None:
        line += f" ({self.exit_cpu:.1f} s of CPU)"
      if self.time_split:
        line += f"; {describe_split(self.time_split)}"
      return line
    why = ("timed out" if self.timed_out else
           f"exited with status {self.status} after {self.exit_seconds:.1f} s")
    best = self.best()
    return (f"{self.label}: target {target:g} NOT reached ({why}); best "
            + (f"accuracy {best[2]:.4f} at step {best[1]}" if best else
               "accuracy: none (no eval line)"))


def describe_split(split: dict[str, float]) -> str:
  """metrics.json's "time" in one line: "time: training 71% (7.1 s),
  start-up 2.0 s, compile 0.4 s, ...", the parts in the trainer's order."""
  parts = [f"{part} {seconds:.1f} s" for part, seconds in split.items()
           if part not in ("train", "total", "fraction_training")]
  return (f"time: training {100 * split.get('fraction_training', 0):.0f}% "
          f"({split.get('train', 0):.1f} s), " + ", ".join(parts)
          + f"; total {split.get('total', 0):.1f} s")


def read_time_split(model_dir: str) -> dict[str, float] | None:
  """metrics.json's "time" in `model_dir`, or None (no such file or entry:
  a run that did not finish, or an older trainer)."""
  try:
    with open(os.path.join(model_dir, "metrics.json"), encoding="utf-8") as f:
      split = json.load(f).get("time")
  except (OSError, ValueError):
    return None
  return split if isinstance(split, dict) else None


def process_cpu_seconds(pid: int) -> float | None:
  """The CPU seconds (user + system, all threads) process `pid` has used so
  far, from /proc/PID/stat; None where that cannot be read."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
      fields = f.read().rsplit(")", 1)[1].split()
  except (OSError, IndexError):
    return None
  # After the ")" closing the name: field 3 (state) is fields[0], so utime
  # (14) and stime (15) are fields[11] and fields[12], in clock ticks.
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
  """CPU seconds of all waited-for child processes so far."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def trainer_command(config: str, data_dir: str, model_dir: str,
                    target: float, takes_target: bool,
                    trainer_flags: list[str]) -> list[str]:
  command = [sys.executable, "-m", "trainer.task", f"--config={config}",
             f"--data_dir={data_dir}", f"--model_dir={model_dir}"]
  if takes_target:
    command.append(f"--{TARGET_FIELD}={target}")
  return command + trainer_flags


def run_once(label: str, checkout: str, command: list[str], target: float,
             timeout: float, log_path: str) -> Run:
  """Runs `command` in `checkout` until its exit, or until its first eval
  line at the target when the command does not end there by itself
  (`--config.train.target_accuracy` not in it), or `timeout`; its output
  goes to `log_path`."""
  run = Run(label)
  ends_by_itself = any(arg.startswith(f"--{TARGET_FIELD}=")
                       for arg in command)
  with open(log_path, "w", encoding="utf-8") as log:
    cpu_before = children_cpu_seconds()
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=checkout, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               errors="replace")

    def read():
      for line in process.stdout:
        seconds = time.perf_counter() - start
        log.write(line)
        parsed = parse_eval_line(line)
        if not parsed:
          continue
        run.evals.append((seconds, *parsed))
        at_target = parsed[1] >= target and run.reached is None
        print(f"  {label}: eval at step {parsed[0]}: accuracy "
              f"{parsed[1]:.4f} at {seconds:.1f} s"
              + (" (target)" if at_target else ""), flush=True)
        if at_target:
          run.reached = run.evals[-1]
          run.reached_cpu = process_cpu_seconds(process.pid)
          if not ends_by_itself:
            process.kill()  # the time is taken: no need for the rest

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
      process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      run.timed_out = True
      process.kill()
      process.wait()
    ended = time.perf_counter() - start
    reader.join()
  killed_here = run.timed_out or (run.reached and not ends_by_itself)
  if not killed_here:
    run.status, run.exit_seconds = process.returncode, ended
    run.exit_cpu = children_cpu_seconds() - cpu_before
    if process.returncode:
      with open(log_path, encoding="utf-8") as f:
        tail = f.read()[-3000:]
      sys.exit(f"error: {label}: {' '.join(command)} (in {checkout}) exited "
               f"with status {process.returncode}; its output ends:\n{tail}")
  return run


def generate_data(config_path: str, trainer_flags: list[str],
                  data_dir: str | None) -> str:
  """The config's data set (with the --config.* overrides among
  `trainer_flags`), generated unless present; returns its directory."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from trainer.data import generate  # pylint: disable=g-import-not-at-top
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                  lock_config=True)
  overrides = [f for f in trainer_flags if f.startswith("--config.")]
  try:
    flag_values(["time_to_accuracy", f"--config={config_path}", *overrides])
    config = flag_values.config
    config.keys()  # a file that failed to load raises on first use
  except (flags.Error, OSError, AttributeError, KeyError, TypeError,
          ValueError) as e:  # a bad file, field or value
    sys.exit(f"error: cannot load --config={config_path}"
             + (f" with {' '.join(overrides)}" if overrides else "")
             + f": {type(e).__name__}: {' '.join(str(e).split())}")
  data_dir = data_dir or generate.default_data_dir(config.data, config.seed)
  print(f"data: {data_dir} (generated before the clock starts, if missing)",
        flush=True)
  return generate.ensure_dataset(data_dir, config.data, config.seed)


def git(*args: str, error: str | None = None) -> str:
  """git's output in this checkout; exits with `error` (default: the command
  and git's message) if it fails."""
  result = subprocess.run(["git", "-C", ROOT, *args], capture_output=True,
                          text=True, check=False)
  if result.returncode:
    said = " ".join((result.stderr or result.stdout).split())
    sys.exit(f"error: {error or 'git ' + ' '.join(args)}"
             + (f": {said}" if said else ""))
  return result.stdout.strip()


def takes_target(checkout: str) -> bool:
  """Whether the checkout's trainer has config.train.target_accuracy."""
  with open(os.path.join(checkout, "configs", "default.py"),
            encoding="utf-8") as f:
    return TARGET_FIELD in f.read()


def summary(label: str, runs: list[Run]) -> str:
  """The median times to target (and start to exit) of `runs`."""
  times = [r.reached[0] for r in runs if r.reached]
  if not times:
    return f"{label}: no run reached the target"
  line = (f"{label}: time to target {statistics.median(times):.1f} s "
          f"({common.spread(times, 'runs', '{:.1f}')})")
  cpus = [r.reached_cpu for r in runs if r.reached and
          r.reached_cpu is not None]
  if cpus:
    line += (f", {statistics.median(cpus):.1f} s of CPU "
             f"({common.spread(cpus, 'runs', '{:.1f}')})")
  steps = [r.reached[1] for r in runs if r.reached]
  line += (f", step {statistics.median(steps):.0f} "
           f"({common.spread(steps, 'runs', '{:d}')})")
  exits = [r.exit_seconds for r in runs if r.reached and
           r.exit_seconds is not None]
  if exits:
    line += (f"; start to exit {statistics.median(exits):.1f} s "
             f"({common.spread(exits, 'runs', '{:.1f}')})")
  missed = len(runs) - len(times)
  return line + (f"; {missed} of {len(runs)} runs did not reach it"
                 if missed else "")


def main():
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      usage="%(prog)s --config=C --target=A [options] [-- trainer flags]")
  parser.add_argument("--config", required=True,
                      help="config file, relative to the checkout (e.g. "
                      "configs/scaled.py)")
  parser.add_argument("--target", type=float, required=True,
                      help="eval accuracy to reach, e.g. 0.99")
  parser.add_argument("--repeats", type=int, default=3,
                      help="runs (pairs with --against)")
  parser.add_argument("--seeds", action="store_true",
                      help="run i trains with --config.seed=i (other "
                      "initial weights, the same data set)")
  parser.add_argument("--against", metavar="COMMIT",
                      help="also time COMMIT's trainer, alternating")
  parser.add_argument("--vs_config", metavar="C2",
                      help="also time this checkout with config C2, "
                      "alternating")
  parser.add_argument("--data_dir", help="where the data set is (generated "
                      "there if missing); default: the trainer's cache")
  parser.add_argument("--timeout", type=float, default=3600,
                      help="seconds a run may take")
  parser.add_argument("--keep", action="store_true",
                      help="keep the runs' directories and logs")
  parser.add_argument("trainer_flags", nargs="*",
                      help="after --: flags for every trainer run")
  args = parser.parse_args()
  if not 0 < args.target <= 1:
    sys.exit(f"error: --target={args.target} must be an accuracy in (0, 1]")
  if args.repeats < 1:
    sys.exit(f"error: --repeats={args.repeats} must be >= 1")

  if args.against and args.vs_config:
    sys.exit("error: --against and --vs_config: give one of them")
  configs = [args.config] + ([args.vs_config] if args.vs_config else [])
  for config in configs:
    if not os.path.isfile(os.path.join(ROOT, config)):
      sys.exit(f"error: {config}: no such file in {ROOT}")
  data_dirs = {config: generate_data(os.path.join(ROOT, config),
                                     args.trainer_flags, args.data_dir)
               for config in configs}
  work_dir = tempfile.mkdtemp(prefix="time_to_accuracy_")
  head = git("rev-parse", "--short", "HEAD") + (
      ", with changes" if git("status", "--porcelain",
                              "--untracked-files=no") else "")
  # (label, checkout, config) of each side; the first is "this".
  sides = [(f"this checkout ({head})"
            + (f", {args.config}" if args.vs_config else ""), ROOT,
            args.config)]
  if args.vs_config:
    sides.append((f"{args.vs_config} ({head})", ROOT, args.vs_config))
  try:
    if args.against:
      commit = git("rev-parse", "--short", "--verify", "--quiet",
                   f"{args.against}^{{commit}}",
                   error=f"--against={args.against} is not a commit here")
      checkout = os.path.join(work_dir, "against")
      git("worktree", "add", "--detach", checkout, commit)
      sides.append((f"{args.against} ({commit})", checkout, args.config))
    for label, checkout, config in sides:
      if not os.path.exists(os.path.join(checkout, config)):
        sys.exit(f"error: {label} has no {config}")
      print(f"{label}: {checkout}; "
            + ("ends at the target by itself" if takes_target(checkout) else
               f"has no {TARGET_FIELD}: killed at its target eval line"),
            flush=True)
    runs: dict[str, list[Run]] = {label: [] for label, _, _ in sides}
    for i, order in common.alternate(sides, args.repeats):
      for label, checkout, config in order:
        name = f"{'this' if label == sides[0][0] else 'against'}{i + 1}"
        model_dir = os.path.join(work_dir, name)
        command = trainer_command(
            config, data_dirs[config], model_dir, args.target,
            takes_target(checkout),
            args.trainer_flags + ([f"--config.seed={i}"] if args.seeds
                                  else []))
        print(f"run {i + 1}/{args.repeats}, {label}: started", flush=True)
        run = run_once(f"{label}, run {i + 1}", checkout, command,
                       args.target, args.timeout,
                       os.path.join(work_dir, f"{name}.log"))
        run.time_split = read_time_split(model_dir)
        runs[label].append(run)
        print(run.describe(args.target), flush=True)
        if not args.keep:
          shutil.rmtree(model_dir, ignore_errors=True)
      if len(sides) == 2:
        this, other = (runs[label][-1] for label, _, _ in sides)
        if this.reached and other.reached:
          print(f"pair {i + 1}/{args.repeats}: time to target "
                f"{this.reached[0]:.1f} s vs {other.reached[0]:.1f} s: "
                f"{this.reached[0] / other.reached[0]:.2f}x", flush=True)

    for label, _, _ in sides:
      print(summary(label, runs[label]))
    if len(sides) == 2:
      (this_label, _, _), (other_label, _, _) = sides
      pairs = [(a, b) for a, b in zip(runs[this_label], runs[other_label])
               if a.reached and b.reached]
      if pairs:
        ratios = [a.reached[0] / b.reached[0] for a, b in pairs]
        print(f"time to target, {this_label} / {other_label}: "
              f"{common.ratio(ratios)}")
        exit_ratios = [a.exit_seconds / b.reached[0] for a, b in pairs
                       if a.exit_seconds is not None]
        if exit_ratios:
          print(f"start to exit of {this_label} / time to target of "
                f"{other_label}: {common.ratio(exit_ratios)}")
        cpu_ratios = [a.reached_cpu / b.reached_cpu for a, b in pairs
                      if a.reached_cpu and b.reached_cpu]
        if cpu_ratios:
          print(f"CPU seconds to target, {this_label} / {other_label}: "
                f"{common.ratio(cpu_ratios)}")
    missed = sum(not r.reached for side in runs.values() for r in side)
    if missed:
      sys.exit(f"error: {missed} run(s) did not reach accuracy "
               f"{args.target:g}")
  finally:
    if args.against and len(sides) == 2:
      git("worktree", "remove", "--force", sides[1][1])
    if args.keep:
      print(f"kept {work_dir}")
    else:
      shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
  main()
