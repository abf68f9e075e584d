"""The fault suite, run directories: damaged checkpoints and state files, a
diverged run, a run killed before its export, damaged run files, a run
directory that is a file, read-only or full, and a resume its checkpoint
cannot continue. Each case runs the real trainer in a real process and
asserts the line the user sees, the exit status and what is left on disk:
nothing that could still be restored is overwritten, no wrong model is
exported.

(In-process checks of trainer/training/checkpoints.py: test_checkpoints.py. A second
run on the same directory: test_run_lock.py.)
"""

import hashlib
import json
import os
import shutil
import subprocess

import pytest

from tests.helpers import error_lines, shared
from tests.helpers.damage import every_file, restored_step
from tests.helpers.trainer_process import assert_one_error, run_trainer

CKPT = "ckpt-{}.data-00000-of-00001"


@pytest.fixture
def finished(smoke_run):
  """A finished smoke run (the session's one): ckpt-20 and ckpt-40, export
  and metrics of 40. No test may write in it (`copy` is a copy)."""
  assert smoke_run.returncode == 0, smoke_run.stderr[-3000:]
  return smoke_run.model_dir


@pytest.fixture
def copy(finished, tmp_path):
  return shared.copy_of(finished, tmp_path)


def digests(directory):
  """sha256 of each file of `directory` (not below)."""
  return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
          for name in sorted(os.listdir(directory))
          if (directory / name).is_file()}


def strict_json(path):
  """The JSON file at `path`, parsed strictly (no NaN or Infinity)."""
  def refuse(constant):
    raise AssertionError(f"{path}: {constant} is not JSON")
  return json.loads(path.read_text(), parse_constant=refuse)


def state_names(checkpoints):
  """The checkpoint names the state file lists, newest last."""
  lines = (checkpoints / "checkpoint").read_text().splitlines()
  return [l.split('"')[1] for l in lines
          if l.startswith("all_model_checkpoint_paths")]


@pytest.mark.parametrize("damage", ["deleted", "garbled", "names_a_gone_one"])
def test_a_damaged_state_file_is_rebuilt_from_the_checkpoint_files(
    smoke_data, copy, damage):
  checkpoints = copy / "checkpoints"
  state = checkpoints / "checkpoint"
  if damage == "deleted":
    state.unlink()
  elif damage == "garbled":
    state.write_bytes(b"\x00garbage{")
    (copy / "config.json").write_text("{not json")  # the run's own file too
  else:
    state.write_text(state.read_text().replace("ckpt-40", "ckpt-99"))
  before = digests(checkpoints)
  before.pop("checkpoint", None)
  result = run_trainer(f"--data_dir={smoke_data}", f"--model_dir={copy}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert not error_lines(result.stderr) and "Traceback" not in result.stderr
  assert f"the state file {state} did not name the checkpoints there: " \
         "rewritten (newest ckpt-40)" in result.stderr
  # Finished already: nothing trained, nothing overwritten.
  assert "is already at step 40 of 40, and the export and metrics.json" in (
      result.stderr)
  after = digests(checkpoints)
  assert state_names(checkpoints) == ["ckpt-20", "ckpt-40"]
  after.pop("checkpoint")
  assert after == before
  if damage == "garbled":  # config.json: a warning, not a traceback
    assert "config.json is not a config this trainer wrote" in result.stderr


def flip(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, reason", [
    ("index_deleted", "its index file ckpt-40.index is missing"),
    ("data_truncated", "IndexError: Read less bytes than requested"),
    ("data_flipped", "Checksum does not match"),
])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    smoke_data, copy, damage, reason):
  checkpoints = copy / "checkpoints"
  data = checkpoints / CKPT.format(40)
  if damage == "index_deleted":
    (checkpoints / "ckpt-40.index").unlink()
  elif damage == "data_truncated":
    os.truncate(data, data.stat().st_size // 2)
  else:
    flip(data)
  damaged = {name: digest for name, digest in digests(checkpoints).items()
             if name.startswith("ckpt-40")}
  good = digests(checkpoints)[CKPT.format(20)]
  result = run_trainer(f"--data_dir={smoke_data}", f"--model_dir={copy}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert not error_lines(result.stderr) and "Traceback" not in result.stderr
  warned = [l for l in result.stderr.splitlines()
            if l.startswith(f"checkpoint {checkpoints}/ckpt-40 is damaged")]
  assert len(warned) == 1 and reason in warned[0], result.stderr[-3000:]
  assert warned[0].endswith("renamed aside as ckpt-40.*.damaged; falling "
                            "back to ckpt-20")
  assert f"resuming from {checkpoints}/ckpt-20" in result.stderr
  # The damaged files are kept, byte for byte, under their new names; the
  # run trained 20 -> 40 again and saved a new ckpt-40 beside them.
  after = digests(checkpoints)
  assert {name[:-len(".damaged")]: digest for name, digest in after.items()
          if name.endswith(".damaged")} == damaged
  assert after[CKPT.format(20)] == good
  assert state_names(checkpoints) == ["ckpt-20", "ckpt-40"]
  assert strict_json(copy / "metrics.json")["step"] == 40


def test_no_checkpoint_that_restores_is_refused_unless_start_over(
    smoke_data, copy):
  checkpoints = copy / "checkpoints"
  for step in (20, 40):
    flip(checkpoints / CKPT.format(step))
  config = (copy / "config.json").read_text()
  result = run_trainer(f"--data_dir={smoke_data}", f"--model_dir={copy}")
  line = assert_one_error(
      result, 2, f"{checkpoints} holds checkpoint files but no checkpoint "
      "that restores (ckpt-40: ", "; ckpt-20: ", "Checksum does not match",
      "nothing was trained or overwritten; to train from step 0 anyway, add "
      "--start_over")
  assert "ckpt-20.data-00000-of-00001.damaged" in os.listdir(checkpoints), line
  assert (copy / "config.json").read_text() == config  # nothing rewritten
  kept = digests(checkpoints)

  result = run_trainer(f"--data_dir={smoke_data}", f"--model_dir={copy}",
                       "--start_over")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "starting at step 0" in result.stderr
  replaced = [d for d in os.listdir(checkpoints) if d.startswith("replaced-")]
  assert len(replaced) == 1, os.listdir(checkpoints)
  assert (f"--start_over: the earlier checkpoints are moved to {checkpoints}/"
          f"{replaced[0]}") in result.stderr
  assert digests(checkpoints / replaced[0]) == kept  # moved, not deleted
  assert state_names(checkpoints) == ["ckpt-20", "ckpt-40"]


def test_a_diverged_run_saves_and_exports_nothing(smoke_data, copy):
  before = digests(copy / "checkpoints")
  export = digests(copy / "export")
  metrics = (copy / "metrics.json").read_text()
  result = run_trainer(f"--data_dir={smoke_data}", f"--model_dir={copy}",
                       "--config.train.num_steps=60",
                       "--config.train.learning_rate=1e30")
  line = assert_one_error(
      result, 1, "training diverged: the loss or its gradient was not finite "
      "at step ", "(mean loss of steps 41-50: nan); nothing of it was saved "
      f"or exported, the last good checkpoint is {copy}/checkpoints/ckpt-40: "
      "lower --config.train.learning_rate (now 1e+30)", "then run again to "
      "resume from it")
  assert int(line.split("at step ")[1].split()[0]) in range(41, 51), line
  assert digests(copy / "checkpoints") == before
  assert digests(copy / "export") == export
  assert (copy / "metrics.json").read_text() == metrics


def test_a_learning_rate_of_nan_is_refused(smoke_data, tmp_path):
  # nan <= 0 is False: it passed the old check and trained on NaN.
  result = run_trainer(f"--data_dir={smoke_data}",
                       f"--model_dir={tmp_path}/run",
                       "--config.train.learning_rate=nan")
  assert_one_error(result, 2, "config.train.learning_rate=nan must be a "
                   "finite number above 0")
  assert not (tmp_path / "run").exists()


def test_a_run_killed_before_its_export_exports_on_the_rerun(
    smoke_data, copy, finished):
  # As if a run resumed from 20 to 40 had been killed between its last
  # checkpoint and its export: metrics.json (and the export) are of step 20.
  metrics = strict_json(copy / "metrics.json")
  (copy / "metrics.json").write_text(json.dumps(
      metrics | {"step": 20, "weights_sha256": "0" * 64}))
  (copy / "export" / "of_step_20").write_text("the old export's own file")
  result = run_trainer(f"--data_dir={smoke_data}", f"--model_dir={copy}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "trained already: evaluating and exporting (the export or " \
         "metrics.json of this checkpoint is missing or older" in result.stderr
  metrics = strict_json(copy / "metrics.json")
  expected = strict_json(finished / "metrics.json")
  for key in ("step", "eval", "weights_sha256"):
    assert metrics[key] == expected[key], key
  assert metrics["checkpoint"] == f"{copy}/checkpoints/ckpt-40"
  # A new export, whole: renamed into place over the old one.
  assert not (copy / "export" / "of_step_20").exists()
  assert digests(copy / "export" / "variables") == digests(
      finished / "export" / "variables")
  assert not [n for n in os.listdir(copy) if ".tmp-" in n]
  # And now it is finished: a rerun does nothing.
  again = run_trainer(f"--data_dir={smoke_data}", f"--model_dir={copy}")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "is already at step 40 of 40" in again.stderr


def test_a_resume_with_changes_says_them_and_keeps_the_config_it_replaced(
    smoke_data, copy):
  first = (copy / "config.json").read_bytes()
  # A change of model shape is refused, before anything is written.
  refused = run_trainer(f"--data_dir={smoke_data}", f"--model_dir={copy}",
                        "--config.model.hidden_size=12",
                        "--config.train.num_steps=60")
  assert_one_error(refused, 2, f"the checkpoint in {copy}/checkpoints is of "
                   "another model shape (hidden_size: checkpoint 8 vs config "
                   "12)")
  assert (copy / "config.json").read_bytes() == first
  # Others are applied, said in one line, and the config they replace kept.
  result = run_trainer(f"--data_dir={smoke_data}", f"--model_dir={copy}",
                       "--config.train.num_steps=50",
                       "--config.train.learning_rate=0.001")
  assert result.returncode == 0, result.stderr[-3000:]
  kept = copy / "config.until-step-40.json"
  assert ("resumed with changes: train.learning_rate 0.003 -> 0.001, "
          "train.num_steps 40 -> 50 (the config before them is kept as "
          f"{kept})") in result.stderr.splitlines()
  assert kept.read_bytes() == first
  config = strict_json(copy / "config.json")
  assert (config["train"]["learning_rate"], config["train"]["num_steps"]) == (
      0.001, 50)
  assert strict_json(copy / "metrics.json")["step"] == 50


# --- A run directory that cannot be written, and a resume that cannot go on ---

def test_model_dir_that_is_a_file(smoke_data, tmp_path):
  path = tmp_path / "a_file"
  path.write_text("not a directory")
  result = run_trainer(f"--data_dir={smoke_data}", f"--model_dir={path}")
  assert_one_error(result, 2, f"--model_dir={path}: {path} is a file, not a "
                   "directory: choose another --model_dir")


def test_model_dir_not_writable(smoke_data, tmp_path):
  # A read-only file system: not writable even for root, and no other user
  # needs to read this checkout (a fresh clone may sit in a 0700 directory).
  mount_point = tmp_path / "read_only"
  mount_point.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m",
                            "tmpfs", str(mount_point)], capture_output=True,
                           text=True)
  if mounted.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
  try:
    result = run_trainer(f"--data_dir={smoke_data}",
                         f"--model_dir={mount_point}/runs/1")
    assert_one_error(result, 2, f"--model_dir={mount_point}/runs/1: user ",
                     f"cannot write in {mount_point} (permission denied or a "
                     "read-only file system)")
  finally:
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(directory):
  """Writes to `directory` until its file system is full."""
  with open(directory / "filler", "wb") as f:
    try:
      while True:
        f.write(b"\0" * 65536)
        f.flush()
    except OSError:
      pass


def test_disk_full_is_one_line_and_keeps_the_checkpoint(
    smoke_data, half_trained, tiny_disk):
  model_dir = tiny_disk / "run"
  shutil.copytree(half_trained, model_dir, ignore=shutil.ignore_patterns(
      "export", "events.*"))
  fill(tiny_disk)
  result = run_trainer(f"--data_dir={smoke_data}", f"--model_dir={model_dir}")
  assert_one_error(result, 1, "no space left on device writing "
                   f"{model_dir}/", "and python -m trainer.task --config=",
                   f"--model_dir={model_dir} resumes from the latest")
  # A failed write removes its temporary file (before: a 0-byte
  # metrics.json.tmp-* stayed).
  assert not [p for p in model_dir.rglob("*") if ".tmp-" in p.name]
  (tiny_disk / "filler").unlink()
  assert restored_step(model_dir) == 20


# Before: num_steps below the checkpoint rewrote config.json with the lower
# num_steps, which no longer described the checkpoint's model; float16 on a
# float32 checkpoint failed with `expected dtype int64` and 15 warning lines
# at the restore (float16 wraps the optimizer in a loss-scale optimizer).
@pytest.mark.parametrize("flag, expected", [
    ("--config.train.num_steps=10",
     "error: the checkpoint is at step 20, past --config.train.num_steps=10: "
     "nothing to train; raise num_steps (or use another --model_dir)"),
    ("--config.train.mixed_precision=float16",
     "error: the checkpoint in {model_dir}/checkpoints was trained with "
     "config.train.mixed_precision='float32', not 'float16' (float16 "
     "checkpoints a loss-scale optimizer, the others do not): resume with "
     "--config.train.mixed_precision=float32, or use another --model_dir, "
     "or --start_over (the old checkpoints are moved aside)"),
], ids=["num_steps_below_the_checkpoint", "float16_across_a_resume"])
def test_a_resume_the_checkpoint_cannot_continue_is_refused_untouched(
    resumable, smoke_data, flag, expected):
  before = every_file(resumable)
  # As a user runs it (TF_CPP_MIN_LOG_LEVEL unset: the trainer quiets
  # TensorFlow's import itself), so any WARNING left is the restore's own.
  result = run_trainer(f"--data_dir={smoke_data}", f"--model_dir={resumable}",
                       flag, env={"TF_CPP_MIN_LOG_LEVEL": None})
  assert_one_error(result, 2)
  assert error_lines(result) == [expected.format(model_dir=resumable)]
  assert "WARNING" not in result.stderr, result.stderr[-3000:]
  after = every_file(resumable)
  assert after == before  # config.json, metrics, checkpoints: untouched
  assert restored_step(resumable) == 20
