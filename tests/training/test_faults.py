"""The fault suite: bad data, bad run directories and stop signals, each met
by the real trainer in real processes with real files.

Every case asserts the one line the user sees (`error: ...` or the stop
line), the exit status, no traceback, and that the latest checkpoint still
restores. (kill -9 during saves: test_fault_checkpoint.py; GCS connections
cut mid-response: test_fault_gcs.py.)
"""

import os
import random
import shutil
import signal
import struct
import subprocess
import sys

import pytest
import tensorflow as tf

from configs import smoke
from trainer.data import vocab
from trainer.training import train as train_lib
from tests.helpers import ROOT, error_lines, examples
from tests.helpers.trainer_process import (LONG_RUN, Trainer,
                                           assert_one_error, run_trainer)
from tests.helpers.workers import Workers, fingerprint

SHARD = "train-00000-of-00004.tfrecord"



def restored_step(model_dir):
  """The step of the latest checkpoint, restored into the smoke Trainer
  (every object matched)."""
  latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  assert latest, f"no checkpoint in {model_dir}"
  trainer = train_lib.Trainer(smoke.get_config(), tf.distribute.get_strategy())
  trainer.checkpoint.restore(latest).assert_existing_objects_matched()
  return int(trainer.step.numpy())


@pytest.fixture(scope="module")
def trained(smoke_data, tmp_path_factory):
  """A smoke run stopped at its checkpoint of step 20 (of 40)."""
  model_dir = tmp_path_factory.mktemp("trained") / "run"
  result = run_trainer(f"--data_dir={smoke_data}", f"--model_dir={model_dir}",
                       "--config.train.num_steps=20")
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir


@pytest.fixture
def resumable(trained, tmp_path):
  """A copy of `trained`: resuming it trains steps 20..40."""
  model_dir = tmp_path / "run"
  shutil.copytree(trained, model_dir)
  return model_dir


# --- Bad data ------------------------------------------------------------------

def record_offsets(data):
  """(start, end) byte offsets of each record of a TFRecord file."""
  offsets, start = [], 0
  while start < len(data):
    (length,) = struct.unpack("<Q", data[start:start + 8])
    end = start + 8 + 4 + length + 4  # length, its CRC, data, data CRC
    offsets.append((start, end))
    start = end
  return offsets


def flip_bytes(data):
  """Bytes flipped inside record 3's data: its CRC fails (the size holds)."""
  start, end = record_offsets(data)[3]
  middle = (start + 12 + end - 4) // 2
  return data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 4]) + (
      data[middle + 4:])


def truncate(data):
  """The file cut in the middle of record 5."""
  start, end = record_offsets(data)[5]
  return data[:(start + end) // 2]


def random_bytes(data):
  return random.Random(0).randbytes(len(data))


def too_long(data):
  """Records 0 and 1 short, records 2.. with inputs of 40 tokens (enough of
  them that a few steps surely parse one)."""
  del data
  digit = vocab.TOKEN_IDS["1"]
  return examples.file_bytes([([digit], [digit], [digit])] * 2 +
                             [([digit] * 38, [digit], [digit])] * 300)


def damaged_copy(smoke_data, tmp_path, damage, keep_manifest, shard=SHARD):
  data_dir = tmp_path / "data"
  shutil.copytree(smoke_data, data_dir)
  if not keep_manifest:  # data written by another tool
    (data_dir / "manifest.json").unlink()
  path = data_dir / shard
  path.write_bytes(damage(path.read_bytes()))
  return data_dir


@pytest.mark.parametrize("damage, keep_manifest, shard, expected", [
    (flip_bytes, True, SHARD, f"{SHARD}: record 3: corrupted record at byte"),
    (truncate, False, SHARD,
     f"{SHARD}: record 5: truncated record at byte"),
    (random_bytes, False, SHARD, f"{SHARD}: record 0: corrupted record at "
     "byte 0 (Is this even a TFRecord file?)"),
    (flip_bytes, True, "eval-00001-of-00002.tfrecord",
     "eval-00001-of-00002.tfrecord: record 3: corrupted record at byte"),
], ids=["flipped", "truncated_no_manifest", "not_tfrecord", "flipped_eval"])
def test_a_bad_record_names_the_file_and_keeps_the_checkpoint(
    smoke_data, resumable, tmp_path, damage, keep_manifest, shard, expected):
  data_dir = damaged_copy(smoke_data, tmp_path, damage, keep_manifest, shard)
  result = run_trainer(f"--data_dir={data_dir}", f"--model_dir={resumable}")
  line = assert_one_error(result, 2, f"{data_dir}/{expected}",
                          "python -m trainer.data verify --deep --data_dir="
                          f"{data_dir}")
  assert "good record(s) before it" in line
  # A bad training shard fails a training step; a bad evaluation shard, the
  # evaluation after the last step's checkpoint.
  assert restored_step(resumable) == (40 if "eval" in shard else 20)

  # verify --deep finds the same file, and only it.
  verify = subprocess.run(
      [sys.executable, "-m", "trainer.data", "verify", "--deep",
       f"--data_dir={data_dir}"], cwd=ROOT, capture_output=True, text=True,
      timeout=120)
  assert verify.returncode == 1, verify.stderr
  bad = [l for l in verify.stderr.splitlines() if l.startswith("bad: ")]
  assert len(bad) == 1 and f"{data_dir}/{expected}" in bad[0], verify.stderr
  assert "error: 1 bad file(s) of 6" in verify.stderr


def test_an_over_long_record_says_how_far_to_raise_len_max_input(
    smoke_data, resumable, tmp_path):
  data_dir = damaged_copy(smoke_data, tmp_path, too_long, keep_manifest=False)
  result = run_trainer(f"--data_dir={data_dir}", f"--model_dir={resumable}")
  assert_one_error(
      result, 2, f"{data_dir}/{SHARD}: record 2 has input length 40",
      "over len_max_input=20", "raise --config.model.len_max_input to 40")
  assert restored_step(resumable) == 20


def test_a_truncated_shard_with_a_manifest_stops_before_training(
    smoke_data, tmp_path):
  data_dir = damaged_copy(smoke_data, tmp_path, truncate, keep_manifest=True)
  result = run_trainer(f"--data_dir={data_dir}",
                       f"--model_dir={tmp_path}/run")
  assert_one_error(result, 2, f"{data_dir}/{SHARD} has ", "bytes but",
                   "manifest.json says")
  assert not (tmp_path / "run").exists()  # nothing built, nothing written


def test_verify_deep_passes_good_data(smoke_data):
  result = subprocess.run(
      [sys.executable, "-m", "trainer.data", "verify", "--deep",
       f"--data_dir={smoke_data}"], cwd=ROOT, capture_output=True, text=True,
      timeout=120)
  assert result.returncode == 0, result.stderr
  assert f"ok: 6 file(s), 2,256 records in {smoke_data} read and fit" in (
      result.stderr)
  assert "verify: 100%" in result.stderr  # the progress bar


# --- Bad run directories ------------------------------------------------------------

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


@pytest.fixture
def tiny_disk(tmp_path):
  """A 2 MiB tmpfs: a real file system that fills up."""
  mount_point = tmp_path / "disk"
  mount_point.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs",
                            str(mount_point)], capture_output=True, text=True)
  if mounted.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
  try:
    yield mount_point
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
    smoke_data, trained, tiny_disk):
  model_dir = tiny_disk / "run"
  shutil.copytree(trained, model_dir, ignore=shutil.ignore_patterns(
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


def every_file(directory):
  """{path below `directory`: its bytes} of every file there."""
  return {p.relative_to(directory): p.read_bytes()
          for p in directory.rglob("*") if p.is_file()}


def test_num_steps_below_the_checkpoint_is_refused(resumable, smoke_data):
  # Before: the run rewrote config.json with the lower num_steps, which no
  # longer described the checkpoint's model.
  before = every_file(resumable)
  result = run_trainer(f"--data_dir={smoke_data}", f"--model_dir={resumable}",
                       "--config.train.num_steps=10")
  assert_one_error(result, 2)
  assert error_lines(result) == [
      "error: the checkpoint is at step 20, past "
      "--config.train.num_steps=10: nothing to train; raise num_steps (or use "
      "another --model_dir)"]
  after = every_file(resumable)
  assert after == before  # config.json, metrics, checkpoints: untouched
  assert restored_step(resumable) == 20


def test_float16_across_a_resume_is_refused(resumable, smoke_data):
  # Before: `expected dtype int64` and 15 warning lines at the restore
  # (float16 wraps the optimizer in a loss-scale optimizer).
  before = every_file(resumable)
  result = run_trainer(f"--data_dir={smoke_data}", f"--model_dir={resumable}",
                       "--config.train.mixed_precision=float16")
  assert_one_error(result, 2)
  assert error_lines(result) == [
      f"error: the checkpoint in {resumable}/checkpoints was trained with "
      "config.train.mixed_precision='float32', not 'float16' (float16 "
      "checkpoints a loss-scale optimizer, the others do not): resume with "
      "--config.train.mixed_precision=float32, or use another --model_dir, "
      "or --start_over (the old checkpoints are moved aside)"]
  assert "WARNING" not in result.stderr, result.stderr[-3000:]
  after = every_file(resumable)
  assert after == before


def test_generate_on_a_full_disk_names_its_own_flag(tiny_disk):
  # A full disk met while writing shards (the up-front check counts the
  # bytes of the shards already there: here a stray 1.6 MB file under the
  # last shard's name fools it). Before, the line advised another
  # --model_dir, a flag generate does not have, and a 0-byte temporary
  # shard stayed.
  out_dir = tiny_disk / "data"
  out_dir.mkdir()
  (out_dir / "train-00003-of-00004.tfrecord").write_bytes(b"\0" * 1_600_000)
  result = subprocess.run(
      [sys.executable, "-m", "trainer.data", "generate", f"--out_dir={out_dir}",
       "--split=train", "--num_shards=4", "--examples_per_shard=3000",
       "--num_processes=1"], cwd=ROOT, capture_output=True, text=True,
      timeout=120)
  assert_one_error(result, 1, f"no space left on device writing {out_dir}/",
                   ": free some space or choose another --out_dir; the "
                   "complete shards are kept and the same command resumes")
  assert "--model_dir" not in result.stderr
  left = sorted(p.name for p in out_dir.iterdir())
  assert not [name for name in left if ".tmp-" in name], left
  assert "train-00000-of-00004.tfrecord" in left  # the complete shard kept


# --- Stop signals ---------------------------------------------------------------

@pytest.mark.parametrize("signum, status", [
    (signal.SIGINT, 130), (signal.SIGHUP, 0), (signal.SIGTERM, 0)])
def test_a_stop_signal_checkpoints_at_the_end_of_the_host_loop(
    smoke_data, tmp_path, signum, status):
  model_dir = tmp_path / "run"
  run = Trainer(f"--data_dir={smoke_data}", f"--model_dir={model_dir}",
                *LONG_RUN)
  try:
    run.wait_for("steps/s")  # the first host loop is done
    run.process.send_signal(signum)
    code, stderr = run.finish()
  finally:
    run.process.kill()
  name = signal.Signals(signum).name
  assert code == status, stderr[-3000:]
  assert f"{name}: stopping at the end of this host loop" in stderr
  saved = [l for l in stderr.splitlines()
           if l.startswith(f"{name}: saved a checkpoint at step ")]
  assert len(saved) == 1, stderr[-3000:]
  step = int(saved[0].split()[6])
  assert f"in {model_dir}/checkpoints; to resume: python -m trainer.task " in (
      saved[0]) and saved[0].endswith(f" --model_dir={model_dir}")
  assert "Traceback" not in stderr and not error_lines(stderr)
  assert restored_step(model_dir) == step


def test_a_stop_signal_after_training_says_the_run_is_finishing(
    resumable, smoke_data):
  # Trained already, its metrics.json missing: the run evaluates and
  # exports. A SIGTERM then was told "stopping at the end of this host
  # loop", of which there is none; the run ends after its export.
  (resumable / "metrics.json").unlink()
  run = Trainer(f"--data_dir={smoke_data}", f"--model_dir={resumable}",
                "--config.train.num_steps=20")
  try:
    run.wait_for("trained already: evaluating and exporting")
    run.process.send_signal(signal.SIGTERM)
    code, stderr = run.finish()
  finally:
    run.process.kill()
  assert code == 0, stderr[-3000:]
  assert ("SIGTERM: the run is finishing (its last evaluation, export and "
          "metrics.json): it ends after them (Ctrl-C again: stop at once, "
          "without them)") in stderr, stderr[-3000:]
  assert "stopping at the end of this host loop" not in stderr
  assert "Traceback" not in stderr and not error_lines(stderr)
  assert (resumable / "metrics.json").exists()
  assert (resumable / "export" / "saved_model.pb").exists()


def test_a_second_ctrl_c_stops_at_once(resumable, smoke_data):
  # Long host loops: the second Ctrl-C must not wait for one to end.
  run = Trainer(f"--data_dir={smoke_data}", f"--model_dir={resumable}",
                *LONG_RUN, "--config.train.steps_per_loop=50000")
  try:
    run.wait_for("resuming from")
    run.wait_for("data: train input pipeline")
    run.process.send_signal(signal.SIGINT)
    run.wait_for("SIGINT: stopping at the end of this host loop")
    run.process.send_signal(signal.SIGINT)
    code, stderr = run.finish(timeout=20)
  finally:
    run.process.kill()
  assert code == 130, stderr[-3000:]
  assert error_lines(stderr) == [
      "error: interrupted again: stopped at once, without saving; the latest "
      f"checkpoint is {resumable}/checkpoints/ckpt-20"]
  assert "Traceback" not in stderr
  assert restored_step(resumable) == 20


def test_sighup_stays_ignored_under_nohup(smoke_data, tmp_path):
  model_dir = tmp_path / "run"
  run = Trainer(f"--data_dir={smoke_data}", f"--model_dir={model_dir}",
                *LONG_RUN, preexec_fn=lambda: signal.signal(
                    signal.SIGHUP, signal.SIG_IGN))
  try:
    run.wait_for("steps/s")
    run.process.send_signal(signal.SIGHUP)
    run.wait_for("steps/s")  # still training: the next progress line
    run.process.send_signal(signal.SIGTERM)
    code, stderr = run.finish()
  finally:
    run.process.kill()
  assert code == 0, stderr[-3000:]
  assert "SIGHUP" not in stderr
  assert "SIGTERM: saved a checkpoint at step" in stderr


@pytest.mark.parametrize("signum, status", [
    (signal.SIGTERM, 0), (signal.SIGINT, 130), (signal.SIGHUP, 0)])
def test_a_stop_signal_to_one_of_two_workers_stops_both_at_the_same_step(
    smoke_data, tmp_path, signum, status):
  name = signal.Signals(signum).name
  model_dir = tmp_path / "run"
  flags = [f"--data_dir={smoke_data}", f"--model_dir={model_dir}",
           "--config.train.num_steps=1000", "--config.train.steps_per_loop=20",
           "--config.train.eval_every_steps=0",
           "--config.train.checkpoint_every_steps=0"]
  first = tmp_path / "first"
  first.mkdir()
  workers = Workers(2, flags, first)
  try:
    workers.wait_until(lambda: "steps/s" in workers.log(1))  # training
    workers.processes[1].send_signal(signum)
    # The signalled worker exits as for that signal alone; the other one
    # ends cleanly.
    assert workers.wait(timeout=120) == [0, status], workers.logs_tail()
  finally:
    workers.kill()
  steps = []
  for index, says in ((0, "stopped by another worker"), (1, name)):
    log = workers.log(index)
    saved = [l for l in log.splitlines()
             if l.startswith(f"{says}: saved a checkpoint at step ")]
    assert len(saved) == 1, workers.logs_tail()
    assert ("; to resume (every worker with its own command): python -m "
            "trainer.task ") in saved[0]
    assert "Traceback" not in log and not error_lines(log)
    steps.append(int(saved[0].split(" at step ")[1].split()[0]))
  assert steps[0] == steps[1] < 1000
  assert restored_step(model_dir) == steps[0]
  if signum != signal.SIGTERM:
    return  # resuming is the same for every signal: once is enough

  second = tmp_path / "second"
  second.mkdir()
  workers = Workers(2, flags, second)
  try:
    assert workers.wait(timeout=300) == [0, 0], workers.logs_tail()
  finally:
    workers.kill()
  for index in range(2):
    assert f"resuming from {model_dir}/checkpoints/ckpt-{steps[0]}" in (
        workers.log(index))
  assert fingerprint(workers.log(0)) == fingerprint(workers.log(1))
  assert restored_step(model_dir) == 1000
