"""Where a run's time went: its wall time split into parts that add up.

  clock = Clock.since_process_start()   # "start_up" runs from here on
  clock.switch("train")                 # the time from now on is training
  with clock.during("checkpoint"):      # ... then back to what ran before
    saver.save(step)
  clock.split()                         # {"start_up": 3.1, "train": ...}

The clock is one timeline: at every moment exactly one part is running, so
the parts add up to the time since the process started (trainer/procs.py),
Python's own start-up and TensorFlow's import included. The loop
(trainer/training/loop.py) switches parts around its host loops, the
schedule's rows and the export; what no part names is "other" (summaries,
the progress line, the stop vote, histograms, a profile's bounds).

Two parts are estimates, moved out of the measured ones (`move`):
  * compile: the first call of a compiled function traces it and XLA
    compiles it. The first host loop's time (its input wait aside) beyond
    its steps at the steady rate (the later host loops' median seconds per
    step) is moved from "train" to "compile"; likewise the first evaluation's time beyond the
    median of the later ones (it also fills the eval cache). A run with a
    single host loop (or evaluation) has no steady rate: nothing is moved.
  * input_wait: the seconds the compiled host loop spent waiting for its
    batches (tf.timestamp around each get_next, inside the loop:
    train.Trainer.input_wait), moved from "train".
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Iterator

from trainer import procs

# The parts, in the order the report lists them.
PARTS = ("start_up", "compile", "train", "input_wait", "eval", "checkpoint",
         "export", "other")
# What a user reads for each part (the last line, docs/running.md).
_NAMES = {"start_up": "start-up", "compile": "compile/trace",
          "train": "training", "input_wait": "input wait",
          "eval": "evaluation", "checkpoint": "checkpointing",
          "export": "export", "other": "other"}


class Clock:
  """One timeline of a process split into PARTS; see the module
  docstring."""

  def __init__(self, origin: float, part: str = "start_up"):
    """`origin`: when the process started, in time.perf_counter() seconds;
    `part`: the part running from then on."""
    self.seconds = dict.fromkeys(PARTS, 0.0)
    self.origin = origin
    self._part = part
    self._mark = origin
    # Seconds (input wait aside) and steps of each host loop, and seconds of
    # each evaluation:
    # their first calls' compile time is what exceeds the later ones'.
    self.host_loops: list[tuple[float, int]] = []
    self.evaluations: list[float] = []

  @classmethod
  def since_process_start(cls) -> Clock:
    """A clock whose start-up began when this process did (its age from
    /proc), or now where /proc does not say."""
    age = procs.age_seconds() or 0.0
    return cls(time.perf_counter() - age)

  @property
  def part(self) -> str:
    """The part running now."""
    return self._part

  def switch(self, part: str) -> None:
    """The time until now goes to the running part; `part` runs from now."""
    if part not in self.seconds:
      raise ValueError(f"not a part of the clock: {part!r}")
    now = time.perf_counter()
    self.seconds[self._part] += now - self._mark
    self._mark = now
    self._part = part

  @contextlib.contextmanager
  def during(self, part: str) -> Iterator[None]:
    """`part` runs inside the block; the part that ran before it after."""
    before = self._part
    self.switch(part)
    try:
      yield
    finally:
      self.switch(before)

  def move(self, source: str, target: str, seconds: float) -> None:
    """Moves `seconds` measured inside `source` (at most what it holds) to
    `target`: the input wait the compiled host loop counted itself."""
    _move(self.seconds, source, target, seconds)

  def total(self) -> float:
    """Seconds since the origin: the sum of the parts, the running one's
    time so far included."""
    return time.perf_counter() - self.origin

  def split(self) -> dict[str, float]:
    """Seconds per part until now, the estimates moved (see the module
    docstring); they add up to total()."""
    self.switch(self._part)
    split = dict(self.seconds)
    compile_train = _first_call_excess(
        [seconds for seconds, _ in self.host_loops],
        [steps for _, steps in self.host_loops])
    compile_eval = _first_call_excess(self.evaluations,
                                      [1] * len(self.evaluations))
    _move(split, "train", "compile", compile_train)
    _move(split, "eval", "compile", compile_eval)
    return split


def _first_call_excess(seconds: list[float], units: list[int]) -> float:
  """How much longer the first call took than its `units` at the later
  calls' median seconds per unit; 0 without later calls."""
  if len(seconds) < 2 or not units[0]:
    return 0.0
  steady = statistics.median(s / u for s, u in zip(seconds[1:], units[1:])
                             if u)
  return max(seconds[0] - units[0] * steady, 0.0)


def _move(split: dict[str, float], source: str, target: str,
          seconds: float) -> None:
  """Moves `seconds` (at most what `source` holds) from one part to
  another."""
  seconds = min(max(seconds, 0.0), split[source])
  split[source] -= seconds
  split[target] += seconds


def report(split: dict[str, float]) -> dict[str, float]:
  """metrics.json's "time": seconds per part, "total", and
  "fraction_training" (training's share of the total)."""
  total = sum(split.values())
  return {**{part: round(split[part], 3) for part in PARTS},
          "total": round(total, 3),
          "fraction_training": round(split["train"] / total, 4) if total
                               else 0.0}


def largest_overhead(split: dict[str, float]) -> tuple[str, float]:
  """The part other than training that took longest: (its name as the
  last line says it, seconds)."""
  part = max((p for p in PARTS if p != "train"), key=lambda p: split[p])
  return _NAMES[part], split[part]


def summary(split: dict[str, float]) -> str:
  """The done line's parenthesis: "training 71%, the largest overhead:
  start-up 12 s"."""
  total = sum(split.values())
  name, seconds = largest_overhead(split)
  share = round(100 * split["train"] / total) if total else 0
  return (f"training {share}%, the largest overhead: {name} "
          f"{format_seconds(seconds)}")


def format_seconds(seconds: float) -> str:
  """"0.4 s", "12 s", "1 min 02 s", "1 h 02 min"."""
  if seconds < 10:
    return f"{seconds:.1f} s"
  minutes, whole_seconds = divmod(round(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return (f"{whole_seconds} s" if not minutes and not hours else
          f"{minutes} min {whole_seconds:02d} s" if not hours else
          f"{hours} h {minutes:02d} min")
