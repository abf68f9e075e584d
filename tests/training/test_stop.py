"""trainer/training/stop.py in-process: stop signals become a request and a
StopReason; the handlers come back after."""

import os
import signal
import time

from trainer.training import stop


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
