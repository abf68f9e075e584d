"""Paths are paths, both splits are checked before the first step, and the
data a run trains on is the data its manifest describes (issue 32, items
3-5): each case in real trainer processes, asserting the line, the exit
status and what is left on disk."""

import json
import os
import shutil

from tests.helpers.damage import flip_bytes, restored_step
from tests.helpers.trainer_process import assert_one_error, run_trainer

EVAL_SHARD = "eval-00001-of-00002.tfrecord"


def copy_data(smoke_data, target):
  shutil.copytree(smoke_data, target)
  return target


def test_glob_characters_in_data_dir_and_a_resume_on_another_data_set(
    smoke_data, tmp_path):
  # --data_dir holds every glob character: it is a directory, not a pattern.
  odd_data = copy_data(smoke_data, tmp_path / "d[x]*?")
  other_data = copy_data(smoke_data, tmp_path / "other[y]")
  model_dir = tmp_path / "run]x"  # `]` alone: TF's checkpoint code reads it
  first = run_trainer(f"--data_dir={odd_data}", f"--model_dir={model_dir}",
                      "--config.train.num_steps=20")
  assert first.returncode == 0, first.stderr[-3000:]
  assert "starting at step 0" in first.stderr
  recorded = json.loads((model_dir / "config.json").read_text())["data"]
  assert recorded["dir"] == str(odd_data)
  assert len(recorded["manifest_sha256"]) == 64

  resumed = run_trainer(f"--data_dir={other_data}",
                        f"--model_dir={model_dir}")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming from {model_dir}/checkpoints/ckpt-20" in resumed.stderr
  changed = [l for l in resumed.stderr.splitlines()
             if "resumed with changes:" in l]
  assert len(changed) == 1, resumed.stderr[-3000:]
  assert (f'data.dir "{odd_data}" -> "{other_data}", train.num_steps 20 -> 40'
          in changed[0])  # the same manifest: its hash is no change
  kept = json.loads((model_dir / "config.until-step-20.json").read_text())
  assert kept["data"]["dir"] == str(odd_data)
  assert json.loads((model_dir / "config.json").read_text())["data"][
      "dir"] == str(other_data)
  metrics = json.loads((model_dir / "metrics.json").read_text())
  assert metrics["step"] == 40
  assert metrics["data"] == {"dir": str(other_data),
                             "manifest_sha256": recorded["manifest_sha256"]}


def test_a_model_dir_tensorflow_would_read_as_a_pattern_is_refused(
    smoke_data, tmp_path):
  model_dir = tmp_path / "run[1]"
  result = run_trainer(f"--data_dir={smoke_data}", f"--model_dir={model_dir}")
  assert_one_error(result, 2, f"--model_dir={model_dir}: a run directory "
                   "cannot hold '['", "could never be resumed")
  assert not model_dir.exists()  # refused before anything was written


def test_a_corrupt_eval_shard_keeps_the_training_before_the_line(
    smoke_data, tmp_path):
  data_dir = copy_data(smoke_data, tmp_path / "data")
  shard = data_dir / EVAL_SHARD
  shard.write_bytes(flip_bytes(shard.read_bytes()))
  model_dir = tmp_path / "run"
  result = run_trainer(f"--data_dir={data_dir}", f"--model_dir={model_dir}")
  assert_one_error(result, 2, f"{data_dir}/{EVAL_SHARD}: record 3: "
                   "corrupted record at byte",
                   f"the training so far is saved: {model_dir}/checkpoints/"
                   "ckpt-20")
  assert restored_step(model_dir) == 20  # the first evaluation's step


def test_a_missing_eval_shard_is_refused_before_the_first_step(
    smoke_data, tmp_path):
  data_dir = copy_data(smoke_data, tmp_path / "data")
  (data_dir / EVAL_SHARD).unlink()  # deleted after generation
  model_dir = tmp_path / "run"
  result = run_trainer(f"--data_dir={data_dir}", f"--model_dir={model_dir}")
  assert_one_error(result, 2, f"{data_dir}/{EVAL_SHARD} is listed in "
                   f"{data_dir}/manifest.json but missing")
  assert "start-up:" not in result.stderr  # no host loop ran
  assert not model_dir.exists()


def test_a_shard_the_manifest_does_not_list_is_refused(smoke_data, tmp_path):
  data_dir = copy_data(smoke_data, tmp_path / "data")
  stranger = data_dir / "train-00004-of-00005.tfrecord"
  shutil.copy(data_dir / "train-00000-of-00004.tfrecord", stranger)
  model_dir = tmp_path / "run"
  result = run_trainer(f"--data_dir={data_dir}", f"--model_dir={model_dir}")
  assert_one_error(result, 2, f"{stranger} matches config.data's pattern but "
                   f"{data_dir}/manifest.json does not list it")
  assert not model_dir.exists()
  assert os.path.exists(stranger)  # named, not touched
