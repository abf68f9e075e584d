"""trainer/training/checkpoints.py in this process: finding checkpoints by their files,
verifying them, falling back, and what only the chief may change. Plus the
run directory's strict JSON and the learning-rate check. (The same in real
trainer processes: test_fault_run_dir.py.)"""

import json
import os
import shutil

import pytest
import tensorflow as tf

from configs import smoke
from trainer import errors
from trainer.training import checkpoints
from trainer.training import plan
from trainer.training import run_dir
from trainer.training import train as train_lib


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A checkpoints directory with ckpt-20 and ckpt-40 of the smoke model."""
  directory = tmp_path_factory.mktemp("saved") / "checkpoints"
  trainer = train_lib.Trainer(smoke.get_config(), tf.distribute.get_strategy())
  manager = tf.train.CheckpointManager(trainer.checkpoint, str(directory),
                                       max_to_keep=5)
  for step in (20, 40):
    trainer.step.assign(step)
    manager.save(checkpoint_number=step)
  return directory


@pytest.fixture
def directory(saved, tmp_path):
  copy = tmp_path / "checkpoints"
  shutil.copytree(saved, copy)
  return copy


@pytest.fixture(scope="module")
def trainer():
  return train_lib.Trainer(smoke.get_config(), tf.distribute.get_strategy())


def test_find_reads_the_files_newest_first_and_ignores_other_names(
    directory):
  (directory / "ckpt-40.index.damaged").write_bytes(b"old")
  (directory / "ckpt-7_temp").mkdir()  # an interrupted save's directory
  (directory / "ckpt-x.index").write_bytes(b"not a number")
  (directory / "checkpoint").unlink()  # not needed to find them
  found = checkpoints.find(str(directory))
  assert [(f.step, f.name) for f in found] == [(40, "ckpt-40"),
                                               (20, "ckpt-20")]
  assert [os.path.basename(p) for p in found[0].files] == [
      "ckpt-40.data-00000-of-00001", "ckpt-40.index"]


def test_a_checkpoint_under_another_number_is_not_trusted(directory):
  for name in os.listdir(directory):
    if name.startswith("ckpt-20."):
      os.rename(directory / name, directory / name.replace("-20.", "-60."))
  newest = checkpoints.find(str(directory))[0]
  assert newest.step == 60
  assert checkpoints.verify(newest) == "it holds step 20, not 60"
  assert checkpoints.verify(checkpoints.find(str(directory))[1]) is None


def test_a_worker_falls_back_without_changing_anything(directory, trainer):
  (directory / "ckpt-40.index").write_bytes(b"\0" * 100)
  before = sorted(os.listdir(directory))
  state = (directory / "checkpoint").read_text()
  restored = checkpoints.restore_newest(trainer.checkpoint, str(directory),
                                        repair=False)
  assert restored.found.name == "ckpt-20" and int(trainer.step) == 20
  assert [name for name, _ in restored.damaged] == ["ckpt-40"]
  assert sorted(os.listdir(directory)) == before  # only the chief repairs
  assert (directory / "checkpoint").read_text() == state

  restored = checkpoints.restore_newest(trainer.checkpoint, str(directory),
                                        repair=True)
  assert restored.found.name == "ckpt-20"
  assert "ckpt-40.index.damaged" in os.listdir(directory)
  # The state file names what is left, and TensorFlow reads it so.
  assert tf.train.latest_checkpoint(str(directory)).endswith("ckpt-20")


def test_a_damaged_newest_of_three_falls_back_to_the_next_newest(directory,
                                                                trainer):
  """ckpt-10, ckpt-20 and ckpt-40, the newest damaged: the run resumes from
  ckpt-20 (the training it loses is 20 steps), never from ckpt-10."""
  trainer.step.assign(10)
  trainer.checkpoint.write(str(directory / "ckpt-10"))
  assert [f.name for f in checkpoints.find(str(directory))] == [
      "ckpt-40", "ckpt-20", "ckpt-10"]
  (directory / "ckpt-40.index").write_bytes(b"\0" * 100)
  restored = checkpoints.restore_newest(trainer.checkpoint, str(directory),
                                        repair=True)
  assert restored.found.name == "ckpt-20" and int(trainer.step) == 20
  assert [name for name, _ in restored.damaged] == ["ckpt-40"]
  assert tf.train.latest_checkpoint(str(directory)).endswith("ckpt-20")
  assert (directory / "ckpt-10.index").exists()  # kept, not a fallback


def test_a_checkpoint_of_another_model_is_one_error(directory):
  config = smoke.get_config()
  config.model.hidden_size = 16
  other = train_lib.Trainer(config, tf.distribute.get_strategy())
  with pytest.raises(errors.UserError, match=r"ckpt-40 does not fit this "
                     r"model .*: use another --model_dir, the checkpoint's "
                     "config, or --start_over"):
    checkpoints.restore_newest(other.checkpoint, str(directory), repair=True)


def test_start_over_moves_every_checkpoint_file_aside(directory):
  (directory / "run.lock").write_text("{}")  # the run's own lock stays
  names = sorted(n for n in os.listdir(directory) if n != "run.lock")
  moved = checkpoints.move_aside(str(directory))
  assert os.path.dirname(moved) == str(directory)
  assert os.path.basename(moved).startswith("replaced-")
  assert sorted(os.listdir(moved)) == names
  assert sorted(os.listdir(directory)) == sorted(
      ["run.lock", os.path.basename(moved)])
  assert checkpoints.move_aside(str(directory)) is None  # nothing left


def test_json_files_are_strict():
  text = run_dir.strict_json({"step": 3, "eval": {"loss": float("nan"),
                                                  "by_op": [float("-inf")]}})
  def refuse(constant):
    raise AssertionError(constant)
  assert json.loads(text, parse_constant=refuse) == {
      "step": 3, "eval": {"loss": None, "by_op": [None]},
      "non_finite": {"eval.loss": "nan", "eval.by_op[0]": "-inf"}}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -1e-3])
def test_learning_rate_must_be_finite_and_positive(value):
  config = smoke.get_config()
  config.train.learning_rate = value
  with pytest.raises(errors.UserError, match=(
      f"config.train.learning_rate={value} must be a finite number above 0")):
    plan.resolve(config, num_replicas=1)
