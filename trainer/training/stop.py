"""Stop signals: finish the host loop, checkpoint, exit; or stop at once.

  with stop.StopSignals(latest_checkpoint=lambda: ...) as signals:
    ... train host loops; after each: if signals.requested: save and return

SIGTERM (a preemption, a scheduler), SIGHUP (the terminal or SSH session
went away) and a first SIGINT (Ctrl-C) ask the run to save a checkpoint at
the end of the current host loop and stop. A Ctrl-C after that (after any
of the three) ends the process at once with status 130 and one line naming
the latest checkpoint, no traceback: the way out of a host loop that does
not end, e.g. an input pipeline still waiting for its first batch. A second
SIGTERM or SIGHUP does not: launchers and terminals send them more than
once (launch/local_multi_worker.sh sends SIGTERM to workers that the
terminal's Ctrl-C reached too, and they must still save). A SIGHUP that
was ignored when the run started (`nohup`, the launch scripts' detached
runs) stays ignored.

The signals are read by a thread, not only by Python's handlers: Python runs
a handler when the main thread returns from TensorFlow, which is at the end
of a host loop, but the thread wakes at once (`signal.set_wakeup_fd`), so
the run says right away that it will stop, and a second Ctrl-C does not wait
for the host loop to finish.

Enter it after the strategy is made: MultiWorkerMirroredStrategy's
coordination service installs its own SIGTERM handler when it starts, and a
handler installed before that never runs (measured with TF 2.21).
"""

from __future__ import annotations

import enum
import os
import signal
import sys
import threading
from typing import Callable

from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
INTERRUPTED_STATUS = 130  # 128 + SIGINT, what shells report for Ctrl-C


class StopReason(str, enum.Enum):
  """Why a run stopped before num_steps (a str: it goes into results and
  messages as its value)."""
  SIGTERM = "SIGTERM"
  SIGHUP = "SIGHUP"
  SIGINT = "SIGINT"
  PEER = "another worker"  # another worker's signal, through the stop vote

  def __str__(self) -> str:
    return self.value


class StopSignals:
  """Context manager turning stop signals into a request; see the module.

  Attributes:
    reason: the first stop signal received (a StopReason), or None.
  """

  def __init__(self, latest_checkpoint: Callable[[], str | None]):
    """`latest_checkpoint()` names the checkpoint a second Ctrl-C leaves."""
    self.reason: StopReason | None = None
    self._latest_checkpoint = latest_checkpoint
    self._previous: dict[int, object] = {}
    self._previous_wakeup_fd = -1
    self._write_fd = -1
    self._thread: threading.Thread | None = None
    self._finishing = False

  def finishing(self) -> None:
    """Training is over: from now on a signal is told that the run ends
    after its last evaluation and export, not at a host loop's end."""
    self._finishing = True

  @property
  def requested(self) -> bool:
    return self.reason is not None

  def __enter__(self) -> StopSignals:
    if threading.current_thread() is not threading.main_thread():
      return self  # only the main thread can handle signals: none here
    read_fd, self._write_fd = os.pipe()
    os.set_blocking(self._write_fd, False)  # set_wakeup_fd requires it
    self._thread = threading.Thread(target=self._watch, args=(read_fd,),
                                    name="stop-signals", daemon=True)
    self._thread.start()
    self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd)
    for signum in SIGNALS:
      previous = signal.getsignal(signum)
      if signum == signal.SIGHUP and previous == signal.SIG_IGN:
        continue  # nohup: the caller wants the run to outlive the terminal
      self._previous[signum] = previous
      # The handler does nothing: installing one makes Python write the
      # signal's number to the wakeup fd, which the thread reads.
      signal.signal(signum, _ignore)
    return self

  def __exit__(self, *exc_info) -> None:
    if self._thread is None:
      return
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    signal.set_wakeup_fd(self._previous_wakeup_fd)
    os.close(self._write_fd)  # the thread reads EOF and ends
    self._thread.join()
    self._thread = None

  def _watch(self, read_fd: int) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
      while data := pipe.read(1):
        self._received(data[0])

  def _received(self, signum: int) -> None:
    if signum not in self._previous:
      return  # another signal with a Python handler (none today)
    name = signal.Signals(signum).name
    if signum == signal.SIGINT and self.reason is not None:
      # A request already stands and the host loop has not ended: it may be
      # stuck (a first batch that never comes) or just long; the user
      # insists.
      again = ("interrupted again" if self.reason is StopReason.SIGINT
               else f"interrupted after {self.reason}")
      latest = self._latest_checkpoint()
      sys.stderr.write(
          f"error: {again}: stopped at once, without saving; "
          + (f"the latest checkpoint is {latest}" if latest else
             "no checkpoint was saved yet") + "\n")
      sys.stderr.flush()
      os._exit(INTERRUPTED_STATUS)  # pylint: disable=protected-access
    if self.reason is None:
      self.reason = StopReason(name)
      if self._finishing:
        logging.info("%s: the run is finishing (its last evaluation, export "
                     "and metrics.json): it ends after them (Ctrl-C again: "
                     "stop at once, without them)", name)
        return
      logging.info("%s: stopping at the end of this host loop, with a "
                   "checkpoint (Ctrl-C again: stop at once, without "
                   "saving)", name)


def _ignore(signum, frame) -> None:
  del signum, frame
