"""When the periodic actions of a run happen: one table, read two ways.

  schedule = Schedule.of(run_plan)
  end = schedule.next_boundary(step)   # where this host loop ends
  due = schedule.due(end)              # {Action.EVALUATE, Action.CHECKPOINT}

A host loop (one compiled call of `steps_per_loop` steps or fewer) ends at
the next step where anything is due, so every action happens between host
loops, on every worker at the same step; the same table answers both
questions, so a new periodic action is one row (big_vision's `itstime` and
Orbit's Controller, which hands its intervals to the actions it runs, work
the same way).

The stop vote is not in the table: it happens after every host loop
(trainer/training/stop.py).
"""

from __future__ import annotations

import dataclasses
import enum

from trainer.training import plan as plan_lib


class Action(enum.Enum):
  EVALUATE = "evaluate"      # an eval pass (the final one is the loop's)
  CHECKPOINT = "checkpoint"  # a checkpoint (always at num_steps)
  PROFILE = "profile"        # a bound of the traced window (start or end)
  # Weight histograms and the gradient norm (also at num_steps unless off).
  HISTOGRAMS = "histograms"


@dataclasses.dataclass(frozen=True)
class Row:
  """An action due every `every` steps (0: never) and at `also` steps."""
  action: Action
  every: int = 0
  also: tuple[int, ...] = ()

  def due(self, step: int) -> bool:
    return bool(self.every and step % self.every == 0) or step in self.also

  def next_after(self, step: int) -> int | None:
    """The first step after `step` where it is due, or None."""
    steps = [s for s in self.also if s > step]
    if self.every:
      steps.append((step // self.every + 1) * self.every)
    return min(steps, default=None)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The table of one run; see the module docstring."""
  num_steps: int
  steps_per_loop: int
  rows: tuple[Row, ...]

  @classmethod
  def of(cls, run_plan: plan_lib.RunPlan) -> Schedule:
    train = run_plan.config.train
    profile = run_plan.profile
    return cls(
        num_steps=train.num_steps, steps_per_loop=train.steps_per_loop,
        rows=(
            Row(Action.EVALUATE, train.eval_every_steps),
            Row(Action.CHECKPOINT, train.checkpoint_every_steps,
                also=(train.num_steps,)),
            # The traced steps are whole host loops (on every worker: all
            # workers run the same loops).
            Row(Action.PROFILE,
                also=(profile.start, profile.end) if profile else ()),
            # At the last step too, so a run shorter than the interval has
            # them (num_steps ends a host loop already); 0 = none at all.
            Row(Action.HISTOGRAMS, train.histogram_every_steps,
                also=(train.num_steps,) if train.histogram_every_steps
                else ()),
        ))

  def next_boundary(self, step: int) -> int:
    """Where the host loop that starts after `step` ends: the next step
    where an action is due, at most steps_per_loop steps on, at most
    num_steps."""
    stops = [self.num_steps, step + self.steps_per_loop]
    stops += [s for s in (row.next_after(step) for row in self.rows)
              if s is not None]
    return min(stops)

  def due(self, step: int) -> frozenset[Action]:
    """The actions due at `step`, a host-loop boundary. An evaluation at
    num_steps is left to the final one."""
    return frozenset(
        row.action for row in self.rows if row.due(step) and not (
            row.action is Action.EVALUATE and step >= self.num_steps))
