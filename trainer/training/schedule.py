"""What a run does between host loops: one table of rows, each with its
action.

  schedule = Schedule.of(run_plan, actions)   # actions: the loop's _Run
  end = schedule.next_boundary(step)          # where this host loop ends
  schedule.due(end)                           # {Action.EVALUATE, ...}
  ending = schedule.run(end)                  # runs them; None: train on
  schedule.run(step, End.STOP)                # the rows of a stop alone

A row is an action (a callable of the step, e.g. `actions.checkpoint`) and
when it is due: every `every` steps (from step `start` on), at the `also`
steps, and at the ends of training it names in `at` (num_steps, the target,
a stop) or at its start.
A host loop (one compiled call of `steps_per_loop` steps or fewer) ends at
the next step where any row is due, so every action runs between host loops,
on every worker at the same step, in the table's order. A new periodic
action is one row here and its method on the loop's _Run; the loop itself
("train to the next boundary; stop checks first; run what is due",
trainer/training/loop.py) does not change. Orbit's Controller, which hands
its intervals to the `Action`s it runs, and big_vision's `itstime` work the
same way.

The stop vote is not a row: it comes before every row, after every host loop
(trainer/training/stop.py), so a stop saves before an evaluation that is due
at the same step: a preempted worker has seconds, not an eval pass.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Callable, Protocol

from trainer.training import plan as plan_lib


class Action(enum.Enum):
  CHECKPOINT = "checkpoint"
  HISTOGRAMS = "histograms"  # weight histograms and the gradient norm
  EVALUATE = "evaluate"      # may end training: the target
  KEEP_BEST = "keep best"    # the evaluation's checkpoint, if the best yet
  PROFILE_START = "profile start"  # the traced window's bounds
  PROFILE_STOP = "profile stop"


class End(enum.Enum):
  """Where training starts or ends; rows name the ones they run at."""
  START = "start"    # before this process's first host loop (a resume too)
  FINISH = "finish"  # at num_steps
  TARGET = "target"  # an evaluation reached config.train.target_*
  STOP = "stop"      # a stop signal on any worker


class Actions(Protocol):
  """The callables of the rows (the loop's _Run). Each takes the step; a
  return value other than None is how training ends there (only an
  evaluation that reaches the target returns one: End.TARGET)."""

  def checkpoint(self, step: int) -> None: ...
  def histograms(self, step: int) -> None: ...
  def evaluate(self, step: int) -> End | None: ...
  def keep_best(self, step: int) -> None: ...
  def profile_start(self, step: int) -> None: ...
  def profile_stop(self, step: int) -> None: ...


@dataclasses.dataclass(frozen=True)
class Row:
  """`action`, run by `run(step)`, due every `every` steps (0: never) from
  step `start` on, at the `also` steps and at the ends in `at`."""
  action: Action
  every: int = 0
  start: int = 0
  also: tuple[int, ...] = ()
  at: frozenset[End] = frozenset()
  run: Callable[[int], End | None] | None = dataclasses.field(
      default=None, compare=False, repr=False)

  def due(self, step: int) -> bool:
    """Due at `step` by its interval or its steps (its ends aside)."""
    return bool(self.every and step % self.every == 0 and
                step >= self.start) or step in self.also

  def next_after(self, step: int) -> int | None:
    """The first step after `step` where it is due, or None."""
    steps = [s for s in self.also if s > step]
    if self.every:
      after = max(step, self.start - 1)  # the first due step is >= start
      steps.append((after // self.every + 1) * self.every)
    return min(steps, default=None)


# What a run's end leaves behind: the training kept, whatever ended it.
_ANY_END = frozenset({End.FINISH, End.TARGET, End.STOP})


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The table of one run; see the module docstring."""
  num_steps: int
  steps_per_loop: int
  rows: tuple[Row, ...]

  @classmethod
  def of(cls, run_plan: plan_lib.RunPlan,
         actions: Actions | None = None) -> Schedule:
    """The run's table, its rows bound to `actions` (None: the table alone,
    to read when things are due)."""
    train = run_plan.config.train
    profile = run_plan.profile
    bind = (lambda name: getattr(actions, name)) if actions else (
        lambda name: None)
    histograms = (_ANY_END - {End.STOP}) if train.histogram_every_steps else (
        frozenset())
    keep_best = bool(run_plan.keep_best)
    return cls(
        num_steps=train.num_steps, steps_per_loop=train.steps_per_loop,
        # In the order they run at one step: the checkpoint first (what can
        # fail or take long comes after the training is kept).
        rows=(
            Row(Action.CHECKPOINT, train.checkpoint_every_steps,
                at=_ANY_END, run=bind("checkpoint")),
            # At the last step too (num_steps or the target), so a run
            # shorter than the interval has them; 0 = none at all.
            Row(Action.HISTOGRAMS, train.histogram_every_steps,
                at=histograms, run=bind("histograms")),
            # The final evaluation is the one at num_steps; none before
            # eval_start_step (each is on a time-to-accuracy clock).
            Row(Action.EVALUATE, train.eval_every_steps,
                start=train.eval_start_step,
                at=frozenset({End.FINISH}), run=bind("evaluate")),
            # Wherever an evaluation ran (at the target too: its step is an
            # evaluation's), right after it: config.train.keep_best.
            Row(Action.KEEP_BEST,
                train.eval_every_steps if keep_best else 0,
                start=train.eval_start_step,
                at=(frozenset({End.FINISH, End.TARGET}) if keep_best
                    else frozenset()),
                run=bind("keep_best")),
            # The traced steps are whole host loops (on every worker: all
            # workers run the same loops); a run resumed inside the window
            # traces from its first step.
            Row(Action.PROFILE_START, also=(profile.start,) if profile else (),
                at=frozenset({End.START}) if profile else frozenset(),
                run=bind("profile_start")),
            Row(Action.PROFILE_STOP, also=(profile.end,) if profile else (),
                at=_ANY_END if profile else frozenset(),
                run=bind("profile_stop")),
        ))

  def next_boundary(self, step: int) -> int:
    """Where the host loop that starts after `step` ends: the next step
    where a row is due, at most steps_per_loop steps on, at most
    num_steps."""
    stops = [self.num_steps, step + self.steps_per_loop]
    stops += [s for s in (row.next_after(step) for row in self.rows)
              if s is not None]
    return min(stops)

  def due(self, step: int, end: End | None = None) -> frozenset[Action]:
    """The actions that run at `step` (a host-loop boundary) with `end`:
    see `rows_at`."""
    return frozenset(row.action for row in self.rows_at(step, end))

  def rows_at(self, step: int, end: End | None = None) -> tuple[Row, ...]:
    """The rows that run at `step`, in order: at START or a STOP the rows of
    that end alone; else the rows due at `step` and those of `end` (at
    num_steps: FINISH's), each once."""
    if end is None and step >= self.num_steps:
      end = End.FINISH
    return tuple(row for row in self.rows if end in row.at or (
        end not in (End.STOP, End.START) and row.due(step)))

  def run(self, step: int, end: End | None = None) -> End | None:
    """Runs the rows of `rows_at(step, end)` in order; returns how training
    ends here: `end` (START: None), FINISH at num_steps, TARGET when a row
    (an evaluation) returned it — the target's rows that have not run yet
    then run too — or None: training goes on."""
    if end is None and step >= self.num_steps:
      end = End.FINISH
    ran = []
    for row in self.rows_at(step, end):
      ran.append(row)
      ending = row.run(step)
      if ending is not None and end is None:
        end = ending
    if end is End.START:
      return None
    if end is not None:
      for row in self.rows_at(step, end):
        if not any(row is done for done in ran):
          row.run(step)
    return end
