"""trainer/progress.py: the bar on a terminal and elsewhere, log lines above
it, and a rate that leaves the start-up out."""

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from trainer import progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeTerminal(io.StringIO):
  """A stream that says it is a terminal (and has no file descriptor)."""

  def isatty(self):
    return True


def screen(output: str) -> list[str]:
  """The lines a terminal shows after `output`: "\\r" goes back to the
  line's start, ESC[2K erases the line, "\\n" starts the next line (as a
  terminal's output processing does), text overwrites."""
  lines, row, column = [""], 0, 0
  for token in re.split(r"(\r|\n|\x1b\[2K)", output):
    if token == "\r":
      column = 0
    elif token == "\n":
      row, column = row + 1, 0
      if row == len(lines):
        lines.append("")
    elif token == "\x1b[2K":
      lines[row] = ""
    elif token:
      assert "\x1b" not in token, f"another escape sequence: {token!r}"
      line = lines[row].ljust(column)
      lines[row] = line[:column] + token + line[column + len(token):]
      column += len(token)
  return lines


@pytest.fixture
def clock(monkeypatch):
  """time.monotonic as progress.py sees it, moved by hand: clock.now = T."""

  class Clock:
    now = 1000.0

  monkeypatch.setattr(progress.time, "monotonic", lambda: Clock.now)
  return Clock


def test_a_line_written_while_the_bar_is_drawn_goes_above_it(clock):
  terminal = FakeTerminal()
  with progress.Progress(total=4, unit="steps", desc="train",
                         stream=terminal) as bar:
    clock.now += 1
    bar.update(1, extra="5,758 examples/s")
    terminal.write(progress.above("data: eval input pipeline\n", terminal))
    shown = screen(terminal.getvalue())
    assert shown[0] == "data: eval input pipeline"
    assert shown[1].startswith("train:  25% [######")
    assert shown[1].endswith("1/4 steps, ? steps/s, elapsed 00:01, ETA ?, "
                             "5,758 examples/s")
    clock.now += 1
    bar.update(3)  # redrawn in place, on the bar's line
    assert screen(terminal.getvalue())[:2] == [
        "data: eval input pipeline",
        "train: 100% [########################] 4/4 steps, 3.0 steps/s, "
        "elapsed 00:02, ETA 00:00, 5,758 examples/s"]
  # Closed: its line ended, and a line written now comes below it as is.
  assert progress.above("eval at step 4\n", terminal) == "eval at step 4\n"
  terminal.write("eval at step 4\n")
  shown = screen(terminal.getvalue())
  assert shown[0] == "data: eval input pipeline"
  assert shown[1].startswith("train: 100%")
  assert shown[2:] == ["eval at step 4", ""]


def test_an_error_inside_the_bar_ends_its_line_and_adds_none_elsewhere(clock):
  terminal, log = FakeTerminal(), io.StringIO()
  for stream in (terminal, log):
    with pytest.raises(ValueError):
      with progress.Progress(total=4, unit="steps", stream=stream) as bar:
        bar.update(1)
        clock.now += 10
        bar.update(1)
        raise ValueError
  # Both show the bar as it was (at 2 steps), no final line; then the error.
  assert screen(terminal.getvalue()) == [
      " 50% [############............] 2/4 steps, 0.1 steps/s, elapsed 00:10, "
      "ETA 00:20", ""]
  assert log.getvalue().splitlines() == [
      " 25% [######..................] 1/4 steps, ? steps/s, elapsed 00:00, "
      "ETA ?",
      " 50% [############............] 2/4 steps, 0.1 steps/s, elapsed 00:10, "
      "ETA 00:20"]
  assert progress.above("error: x\n", terminal) == "error: x\n"


def test_elsewhere_whole_lines_at_most_every_log_every_s_and_no_redraw(clock):
  log = io.StringIO()
  bar = progress.Progress(total=10, unit="files", desc="verify", stream=log,
                          log_every_s=5)
  for _ in range(10):
    clock.now += 1
    bar.update(1)
    # A log line is written as it is: no bar is drawn on this stream.
    assert progress.above("a line\n", log) == "a line\n"
  bar.close()
  bar.close()
  lines = log.getvalue().split("\n")
  assert lines[-1] == ""  # each line whole
  assert [re.match(r"verify: +(\d+)%", l).group(1) for l in lines[:-1]] == [
      "10", "60", "100"], lines  # at 1 s, 6 s, then the last one
  assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()


def test_the_rate_and_eta_leave_a_slow_first_update_out(clock):
  # Elapsed counts from the bar's creation; the rate from the first update:
  # a first host loop of 60 s (tracing, XLA compile) then 1 step per second.
  bar = progress.Progress(total=100, unit="steps", stream=io.StringIO(),
                          initial=0)
  clock.now += 60
  bar.update(1)
  assert bar.rate() is None
  assert bar.line().endswith("1/100 steps, ? steps/s, elapsed 01:00, ETA ?")
  clock.now += 9
  bar.update(9)
  assert bar.rate() == 1.0
  # 90 steps at 1 step/s; counted from the creation it would be 10 steps in
  # 69 s, an ETA of 10:21.
  assert bar.line().endswith("10/100 steps, 1.0 steps/s, elapsed 01:09, "
                             "ETA 01:30")


def test_a_resumed_bar_counts_its_rate_from_its_own_updates(clock):
  bar = progress.Progress(total=1000, unit="steps", stream=io.StringIO(),
                          initial=900)
  clock.now += 30
  bar.update(10)
  clock.now += 10
  bar.update(20)
  assert bar.rate() == 2.0
  assert bar.line().endswith("930/1,000 steps, 2.0 steps/s, elapsed 00:40, "
                             "ETA 00:35")


# A command-line program as the trainer is one: absl's app, cli.log_plainly,
# a bar and absl log lines while it is drawn. (Without TensorFlow: log lines
# from outside the package pass log_plainly's filter at WARNING.)
_PROGRAM = """
from absl import app, logging
from trainer import cli, progress

def main(argv):
  cli.log_plainly()
  with progress.Progress(total=3, unit="steps", desc="train") as bar:
    bar.update(1, extra="loss 2.9183, accuracy 0.089, 5,758 examples/s")
    logging.warning("data: eval input pipeline")
    bar.update(1)
    logging.warning("eval at step 2")
    bar.update(1)
  logging.warning("done")

app.run(main)
"""


def _program(stderr, **kwargs):
  return subprocess.run([sys.executable, "-c", _PROGRAM], stderr=stderr,
                        stdout=subprocess.DEVNULL, cwd=ROOT, timeout=60,
                        check=True, **kwargs)


def test_log_lines_and_the_bar_on_a_real_terminal_of_60_columns():
  controller, terminal = pty.openpty()
  fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 60, 0, 0))
  try:
    _program(terminal)
  finally:
    os.close(terminal)
  output = b""
  while True:
    try:
      chunk = os.read(controller, 65536)
    except OSError:  # EIO: the program ended and closed its side
      break
    if not chunk:
      break
    output += chunk
  os.close(controller)
  shown = screen(output.decode())
  # Each log line on a line of its own, the bar below them until it ends.
  assert [l[:12] for l in shown] == [
      "data: eval i", "eval at step", "train: 100% ", "done", ""], shown
  # The bar was drawn each time, cut to 59 columns (a wrapped line would
  # leave its first part behind at each redraw).
  bars = re.findall(r"\r\x1b\[2K(train:[^\r\n]*)", output.decode())
  assert [b[:12] for b in bars[-2:]] == ["train: 100% ", "train: 100% "], bars
  assert max(len(b) for b in bars) == 59, bars


def test_log_lines_and_the_bar_elsewhere_are_whole_lines():
  result = _program(subprocess.PIPE, text=True)
  lines = result.stderr.split("\n")
  assert [l[:11] for l in lines] == [
      "train:  33%", "data: eval ", "eval at ste", "train: 100%", "done", ""
  ], result.stderr
  assert "\r" not in result.stderr and "\x1b" not in result.stderr
  assert lines[3].endswith(", loss 2.9183, accuracy 0.089, 5,758 examples/s")
