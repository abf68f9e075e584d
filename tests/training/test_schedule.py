"""trainer/training/schedule.py: host-loop boundaries, what is due there
(against a step-by-step reading of the config), and the rows' actions run
in the table's order, a stop's alone."""

import itertools

import pytest

from configs import smoke
from trainer.training import plan
from trainer.training import schedule as schedule_lib

Action = schedule_lib.Action
End = schedule_lib.End


def make(num_steps=100, steps_per_loop=10, eval_every=0, checkpoint_every=0,
         profile="", histogram_every=0, target_accuracy=0.0, actions=None,
         eval_start=0):
  config = smoke.get_config()
  config.train.eval_start_step = eval_start
  config.train.histogram_every_steps = histogram_every
  config.train.num_steps = num_steps
  config.train.steps_per_loop = steps_per_loop
  config.train.eval_every_steps = eval_every
  config.train.checkpoint_every_steps = checkpoint_every
  config.train.profile_steps = profile
  config.train.target_accuracy = target_accuracy
  config.train.eval_steps = 0 if target_accuracy else config.train.eval_steps
  return schedule_lib.Schedule.of(plan.resolve(config), actions)


def walk(schedule, start=0):
  """[(boundary, due actions)] of a whole run from `start`."""
  out, step = [], start
  while step < schedule.num_steps:
    step = schedule.next_boundary(step)
    out.append((step, schedule.due(step)))
  return out


def expected_walk(num_steps, steps_per_loop, eval_every, checkpoint_every,
                  profile_bounds, histogram_every=0, start=0, eval_start=0):
  """The same, one step at a time: a host loop ends at the first step where
  something is due, after steps_per_loop steps, or at num_steps, where the
  checkpoint, the final evaluation, the histograms (unless off) and the end
  of a trace are due; no other evaluation before eval_start."""
  out, loop_start = [], start
  for step in range(start + 1, num_steps + 1):
    last = step == num_steps
    evaluate = (bool(eval_every) and step % eval_every == 0 and
                step >= eval_start) or last
    checkpoint = (bool(checkpoint_every) and step % checkpoint_every == 0
                  ) or last
    profile_start = bool(profile_bounds) and step == profile_bounds[0]
    profile_stop = bool(profile_bounds) and (step == profile_bounds[1] or last)
    histograms = bool(histogram_every) and (
        step % histogram_every == 0 or last)
    due = {a for a, on in ((Action.EVALUATE, evaluate),
                           (Action.CHECKPOINT, checkpoint),
                           (Action.PROFILE_START, profile_start),
                           (Action.PROFILE_STOP, profile_stop),
                           (Action.HISTOGRAMS, histograms)) if on}
    if due or step - loop_start == steps_per_loop:
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
  bounds = ()
  if profile:
    start, count = (int(p) for p in profile.split(","))
    bounds = (start, start + count)
  for start in (0, 3, num_steps - 1):  # a fresh run and resumed ones
    assert walk(schedule, start) == expected_walk(
        num_steps, steps_per_loop, eval_every, checkpoint_every, bounds,
        histogram_every, start), start


@pytest.mark.parametrize("num_steps, steps_per_loop, eval_every, eval_start",
                         [(100, 10, 10, 45), (100, 7, 20, 40), (100, 10, 10, 1),
                          (50, 100, 5, 60), (30, 4, 3, 30)])
def test_no_periodic_evaluation_before_eval_start_step(
    num_steps, steps_per_loop, eval_every, eval_start):
  schedule = make(num_steps, steps_per_loop, eval_every,
                  eval_start=eval_start)
  for start in (0, 3, eval_start - 1, num_steps - 1):  # fresh and resumed
    start = min(max(start, 0), num_steps - 1)
    assert walk(schedule, start) == expected_walk(
        num_steps, steps_per_loop, eval_every, 0, (), start=start,
        eval_start=eval_start), start
  evaluations = [step for step, due in walk(schedule)
                 if Action.EVALUATE in due]
  assert evaluations == sorted(
      {s for s in range(eval_every, num_steps + 1, eval_every)
       if s >= eval_start} | {num_steps})


def test_no_host_loop_is_longer_than_steps_per_loop_or_passes_the_end():
  for num_steps, steps_per_loop in itertools.product((1, 9, 64), (1, 4, 100)):
    schedule = make(num_steps, steps_per_loop, eval_every=3)
    ends = [0] + [step for step, _ in walk(schedule)]
    assert ends[-1] == num_steps
    assert all(0 < b - a <= steps_per_loop for a, b in zip(ends, ends[1:]))


class Recorder:
  """The rows' actions, recording (action, step) in the order they run; an
  evaluation at a step in `reach` returns End.TARGET."""

  def __init__(self, reach=()):
    self.calls = []
    self.reach = set(reach)

  def checkpoint(self, step):
    self.calls.append(("checkpoint", step))

  def histograms(self, step):
    self.calls.append(("histograms", step))

  def evaluate(self, step):
    self.calls.append(("evaluate", step))
    return End.TARGET if step in self.reach else None

  def keep_best(self, step):
    self.calls.append(("keep_best", step))

  def profile_start(self, step):
    self.calls.append(("profile_start", step))

  def profile_stop(self, step):
    self.calls.append(("profile_stop", step))


def test_rows_run_in_table_order_the_checkpoint_first_each_once():
  actions = Recorder()
  schedule = make(num_steps=40, eval_every=20, checkpoint_every=20,
                  histogram_every=20, profile="10,10", actions=actions)
  assert schedule.run(20) is None  # training goes on
  assert actions.calls == [("checkpoint", 20), ("histograms", 20),
                           ("evaluate", 20), ("profile_stop", 20)]
  actions.calls.clear()
  assert schedule.run(30) is None  # nothing due: nothing runs
  assert actions.calls == []
  # At num_steps: FINISH's rows, each once though also due by interval.
  assert schedule.run(40) is End.FINISH
  assert actions.calls == [("checkpoint", 40), ("histograms", 40),
                           ("evaluate", 40), ("profile_stop", 40)]


def test_a_stop_runs_the_checkpoint_and_not_the_evaluation_due_there():
  actions = Recorder()
  schedule = make(num_steps=100, eval_every=10, checkpoint_every=0,
                  histogram_every=10, profile="0,50", actions=actions)
  assert schedule.run(30, End.STOP) is End.STOP
  assert actions.calls == [("checkpoint", 30), ("profile_stop", 30)]


def test_an_evaluation_at_the_target_ends_training_with_the_targets_rows():
  actions = Recorder(reach={30})
  schedule = make(num_steps=100, eval_every=10, checkpoint_every=0,
                  histogram_every=50, target_accuracy=0.5, actions=actions)
  assert schedule.run(20) is None
  assert schedule.run(30) is End.TARGET
  # The checkpoint and histograms were not due at 30: they run after the
  # evaluation, as the target's, and the evaluation does not run again.
  assert actions.calls == [("evaluate", 20), ("evaluate", 30),
                           ("checkpoint", 30), ("histograms", 30)]


def test_the_start_runs_the_profile_start_alone():
  actions = Recorder()
  schedule = make(num_steps=100, eval_every=10, checkpoint_every=10,
                  profile="20,10", actions=actions)
  # A run resumed at 10 or 25: the profile's row decides (summaries.Profile
  # traces from 25, inside the window); nothing else runs before training.
  assert schedule.run(10, End.START) is None
  assert actions.calls == [("profile_start", 10)]
