"""The fault suite, stop signals: SIGINT, SIGHUP and SIGTERM sent to the
real trainer in real processes (one worker or two), met by a checkpoint at
the end of the host loop, a finishing run, or a stop at once.

Every case asserts the stop line, the exit status, no traceback, and that
the latest checkpoint still restores. (What damages a run's inputs or
outputs is grouped by what it damages: the data in
tests/data/test_fault_data.py, the run directory in test_fault_run_dir.py,
a kill -9 during saves in test_fault_checkpoint.py, GCS connections cut
mid-response in tests/cloud/test_fault_gcs.py.)
"""

import signal

import pytest

from tests.helpers import error_lines
from tests.helpers.damage import restored_step
from tests.helpers.trainer_process import LONG_RUN, Trainer
from tests.helpers.workers import Workers, fingerprint


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
