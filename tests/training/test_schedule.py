"""trainer/training/schedule.py: host-loop boundaries and what is due there,
against a step-by-step reading of the config."""

import itertools

import pytest

from configs import smoke
from trainer.training import plan
from trainer.training import schedule as schedule_lib

Action = schedule_lib.Action


def make(num_steps=100, steps_per_loop=10, eval_every=0, checkpoint_every=0,
         profile="", histogram_every=0):
  config = smoke.get_config()
  config.train.histogram_every_steps = histogram_every
  config.train.num_steps = num_steps
  config.train.steps_per_loop = steps_per_loop
  config.train.eval_every_steps = eval_every
  config.train.checkpoint_every_steps = checkpoint_every
  config.train.profile_steps = profile
  return schedule_lib.Schedule.of(plan.resolve(config))


def walk(schedule, start=0):
  """[(boundary, due actions)] of a whole run from `start`."""
  out, step = [], start
  while step < schedule.num_steps:
    step = schedule.next_boundary(step)
    out.append((step, schedule.due(step)))
  return out


def expected_walk(num_steps, steps_per_loop, eval_every, checkpoint_every,
                  profile_bounds, histogram_every=0, start=0):
  """The same, one step at a time: a host loop ends at the first step where
  something is due, after steps_per_loop steps, or at num_steps."""
  out, loop_start = [], start
  for step in range(start + 1, num_steps + 1):
    evaluate = bool(eval_every) and step % eval_every == 0 and step < num_steps
    checkpoint = (bool(checkpoint_every) and step % checkpoint_every == 0
                  ) or step == num_steps
    profile = step in profile_bounds
    histograms = bool(histogram_every) and (
        step % histogram_every == 0 or step == num_steps)
    if (evaluate or checkpoint or profile or histograms or step == num_steps
        or step - loop_start == steps_per_loop):
      due = {a for a, on in ((Action.EVALUATE, evaluate),
                             (Action.CHECKPOINT, checkpoint),
                             (Action.PROFILE, profile),
                             (Action.HISTOGRAMS, histograms)) if on}
      out.append((step, frozenset(due)))
      loop_start = step
  return out


@pytest.mark.parametrize(
    "num_steps, steps_per_loop, eval_every, checkpoint_every, profile, "
    "histogram_every",
    [(100, 10, 0, 0, "", 0), (100, 10, 25, 40, "", 1000),
     (97, 7, 30, 0, "5,11", 20), (50, 100, 0, 0, "", 1000),
     (60, 8, 16, 24, "0,3", 0), (12, 5, 1, 3, "10,5", 5),
     (30, 30, 30, 30, "29,1", 7)])
def test_boundaries_and_due_actions_match_a_step_by_step_reading(
    num_steps, steps_per_loop, eval_every, checkpoint_every, profile,
    histogram_every):
  schedule = make(num_steps, steps_per_loop, eval_every, checkpoint_every,
                  profile, histogram_every)
  bounds = set()
  if profile:
    start, count = (int(p) for p in profile.split(","))
    bounds = {start, start + count}
  for start in (0, 3, num_steps - 1):  # a fresh run and resumed ones
    assert walk(schedule, start) == expected_walk(
        num_steps, steps_per_loop, eval_every, checkpoint_every, bounds,
        histogram_every, start), start


def test_no_host_loop_is_longer_than_steps_per_loop_or_passes_the_end():
  for num_steps, steps_per_loop in itertools.product((1, 9, 64), (1, 4, 100)):
    schedule = make(num_steps, steps_per_loop, eval_every=3)
    ends = [0] + [step for step, _ in walk(schedule)]
    assert ends[-1] == num_steps
    assert all(0 < b - a <= steps_per_loop for a, b in zip(ends, ends[1:]))


def test_the_last_boundary_checkpoints_and_leaves_evaluation_to_the_end():
  schedule = make(num_steps=40, steps_per_loop=10, eval_every=20,
                  checkpoint_every=0)
  assert walk(schedule)[-1] == (40, frozenset({Action.CHECKPOINT}))
  assert schedule.due(20) == frozenset({Action.EVALUATE})
