"""trainer/training/stop.py: stop signals become a request and a
StopReason, the handlers come back after (in-process); a stop saves before
an evaluation due at the same step (a trainer process)."""

import os
import re
import signal
import time

from trainer.training import stop

from tests.helpers.trainer_process import Trainer


def test_stop_signals_set_a_request_and_restore_the_handlers():
  before = {s: signal.getsignal(s) for s in stop.SIGNALS}
  with stop.StopSignals(lambda: None) as signals:
    assert not signals.requested
    os.kill(os.getpid(), signal.SIGHUP)
    os.kill(os.getpid(), signal.SIGTERM)  # the first signal is the one named
    deadline = time.monotonic() + 10
    while not signals.requested and time.monotonic() < deadline:
      time.sleep(0.01)
    assert signals.reason is stop.StopReason.SIGHUP
    assert str(signals.reason) == "SIGHUP"  # as messages and results name it
  assert {s: signal.getsignal(s) for s in stop.SIGNALS} == before


def test_a_stop_saves_before_the_evaluation_due_at_the_same_step(smoke_data,
                                                                 tmp_path):
  # An evaluation is due at the end of every host loop and no checkpoint:
  # the stop's checkpoint is the run's only one, and the stop vote comes
  # before the evaluation (a preempted worker has seconds, not an eval pass).
  model_dir = tmp_path / "run"
  run = Trainer(f"--data_dir={smoke_data}", f"--model_dir={model_dir}",
                "--config.train.num_steps=100000",
                "--config.train.steps_per_loop=200",
                "--config.train.eval_every_steps=200",
                "--config.train.checkpoint_every_steps=0")
  try:
    run.wait_for("eval at step 200:")  # training, and evaluating
    run.process.send_signal(signal.SIGTERM)
    code, stderr = run.finish()
  finally:
    run.process.kill()
  assert code == 0, stderr[-3000:]
  saved = re.search(r"SIGTERM: saved a checkpoint at step (\d+) ", stderr)
  assert saved, stderr[-3000:]
  step = int(saved.group(1))
  # A host loop's end, where an evaluation was due; the signal came during
  # the host loop before it, or during the evaluation before that loop.
  assert step % 200 == 0 and step > 200, stderr[-3000:]
  assert f"eval at step {step}:" not in stderr, stderr[-3000:]
  assert f"eval at step {step - 200}:" in stderr, stderr[-3000:]
  assert [p.name for p in (model_dir / "checkpoints").glob("ckpt-*.index")
          ] == [f"ckpt-{step}.index"]
