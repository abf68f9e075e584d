"""config.train.keep_best: the best evaluation's checkpoint kept apart from
the rotating ones, surviving a resume, exported to best/ and loadable by
trainer.predict; one row of the schedule, after the evaluation."""

import json
import os
import shutil

import pytest
import tensorflow as tf

from configs import smoke
from tests.helpers.trainer_process import assert_one_error
from tests.helpers.trainer_process import run_module
from tests.helpers.trainer_process import run_trainer
from tests.training.test_schedule import Recorder
from trainer import errors
from trainer.training import plan
from trainer.training import schedule as schedule_lib

End = schedule_lib.End

# Evaluations at steps 10 and 20, one rotating checkpoint kept.
_FLAGS = ("--config.train.eval_every_steps=10",
          "--config.train.keep_checkpoints=1", "--config.train.keep_best=loss")


def _best_schedule(keep_best, num_steps=40, reach=()):
  config = smoke.get_config()
  config.train.num_steps = num_steps
  config.train.eval_every_steps = 10
  config.train.checkpoint_every_steps = 20
  config.train.histogram_every_steps = 0
  config.train.keep_best = keep_best
  if reach:
    config.train.eval_steps = 0
    config.train.target_accuracy = 0.5
  recorder = Recorder(reach)
  return schedule_lib.Schedule.of(plan.resolve(config), recorder), recorder


def test_keep_best_runs_right_after_every_evaluation_target_and_finish():
  schedule, recorder = _best_schedule("accuracy", reach=(30,))
  step = 0
  while True:
    step = schedule.next_boundary(step)
    if schedule.run(step) is not None:
      break
  assert step == 30
  evaluations = [s for a, s in recorder.calls if a == "evaluate"]
  assert evaluations == [10, 20, 30]
  for eval_step in evaluations:  # each evaluation is followed by keep_best
    at = recorder.calls.index(("evaluate", eval_step))
    assert recorder.calls[at + 1] == ("keep_best", eval_step)
  assert [c for c in recorder.calls if c[0] == "keep_best"] == [
      ("keep_best", 10), ("keep_best", 20), ("keep_best", 30)]


def test_keep_best_off_is_no_row_that_runs():
  schedule, recorder = _best_schedule("")
  for step in (10, 20, 40):
    schedule.run(step)
  assert not [c for c in recorder.calls if c[0] == "keep_best"]
  assert schedule_lib.Action.KEEP_BEST not in schedule.due(40)


def test_which_way_is_better_comes_from_the_plan():
  assert plan.resolve(smoke.get_config()).keep_best is None
  config = smoke.get_config()
  config.train.keep_best = "loss"
  assert plan.resolve(config).keep_best == "loss"
  config.train.keep_best = "acc"
  with pytest.raises(errors.UserError, match=r"^config\.train\.keep_best="
                     r"'acc' is not one of 'accuracy', 'loss' .* or '' "
                     r"\(off\)$"):
    plan.resolve(config)


def test_a_bad_keep_best_is_one_line_before_anything_runs(tmp_path):
  result = run_trainer(f"--model_dir={tmp_path / 'run'}",
                       "--config.train.keep_best=lowest")
  assert_one_error(result, 2, "config.train.keep_best='lowest'")
  assert not (tmp_path / "run" / "checkpoints").exists()


def _variables(saved_model_dir):
  reader = tf.train.load_checkpoint(
      os.path.join(saved_model_dir, "variables", "variables"))
  return {key: reader.get_tensor(key)
          for key in reader.get_variable_to_shape_map()
          if "OBJECT_GRAPH" not in key}


def test_the_best_survives_rotation_and_a_resume_and_exports(smoke_data,
                                                             tmp_path):
  model_dir = tmp_path / "run"
  common = (f"--data_dir={smoke_data}", f"--model_dir={model_dir}", *_FLAGS)
  # Steps 0-20 at the smoke learning rate: loss falls, the best is step 20's.
  first = run_trainer(*common, "--config.train.num_steps=20")
  assert first.returncode == 0, first.stderr[-3000:]
  assert "best eval loss so far" in first.stderr
  step_20_export = tmp_path / "export-20"
  shutil.copytree(model_dir / "export", step_20_export)
  best_dir = model_dir / "checkpoints" / "best"
  assert json.loads((best_dir / "best.json").read_text())["step"] == 20

  # Resumed to 40 at a learning rate that ruins the model: steps 30 and 40
  # evaluate worse, rotation (keep_checkpoints=1) deletes ckpt-20.
  second = run_trainer(*common, "--config.train.num_steps=40",
                       "--config.train.learning_rate=1.0")
  assert second.returncode == 0, second.stderr[-3000:]
  metrics = json.loads((model_dir / "metrics.json").read_text())
  assert metrics["step"] == 40
  best = metrics["best"]
  assert (best["step"], best["metric"]) == (20, "loss"), best
  assert metrics["eval"]["loss"] > best["value"]  # the best is not the last
  assert "best eval loss so far" not in second.stderr  # 30, 40: worse
  checkpoints = sorted(os.listdir(model_dir / "checkpoints"))
  assert "ckpt-20.index" not in checkpoints and "ckpt-40.index" in checkpoints
  assert sorted(os.listdir(best_dir)) == [
      "best.json", "ckpt-20.data-00000-of-00001", "ckpt-20.index"]
  assert json.loads((best_dir / "best.json").read_text()) == {
      "step": 20, "metric": "loss", "value": best["value"]}

  # best/ holds step 20's weights (as the first run exported them), export/
  # step 40's.
  best_export = model_dir / "best"
  assert best["export"] == str(best_export)
  best_weights = _variables(best_export)
  step_20 = _variables(step_20_export)
  last = _variables(model_dir / "export")
  assert best_weights.keys() == step_20.keys()
  for key, value in step_20.items():
    assert (best_weights[key] == value).all(), key
  assert any((last[key] != value).any() for key, value in step_20.items())

  predicted = run_module("trainer.predict", f"--model_dir={best_export}",
                         "x=3,y=4:x*y")
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  assert predicted.stdout.startswith("x=3,y=4:x*y -> "), predicted.stdout
