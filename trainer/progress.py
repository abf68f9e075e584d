"""A small progress bar for the console (stderr).

On a terminal it redraws one line in place, cut to the terminal's width (a
line that wraps would leave its first part behind at each redraw). A line
written to that terminal while the bar is drawn goes above it: `above` gives
the text that clears the bar's line, writes the line, and draws the bar
again below it (the run's log lines pass through it: cli.log_plainly).
Elsewhere (logs, CI, pipes) it prints a line at most every `log_every_s`
seconds, and always the last one.

The rate and the ETA count from the bar's first update, not from its
creation: the first unit of work also holds the start-up (a training run's
first XLA compile, a worker pool's start), which would make the first ETA
many times too long. Until a second update they show "?". Elapsed counts from
the bar's creation.

Why not a library: `keras.utils.Progbar` rewrites with carriage returns in
logs too and needs Keras in the data generator's parent, which otherwise
does not import it; `tqdm` would be a dependency for ~170 lines, and its
non-terminal output is one line per refresh. This prints whole lines that a
log file or a Vertex AI / TPU VM log keeps readable.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

# Back to the start of the line, and erase it.
_CLEAR = "\r\x1b[2K"

# The bar drawn on a terminal and not closed yet (a line written to its
# stream goes above it), or None.
_drawn: Progress | None = None


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else (
      f"{minutes:02d}:{seconds:02d}")


def above(text: str, stream: TextIO) -> str:
  """What to write to `stream` so that `text` (whole lines, each ending in a
  newline) appears above the progress bar drawn there on a terminal: its
  line cleared, `text`, then the bar again. Without such a bar, `text`."""
  bar = _drawn
  if bar is None or bar._stream is not stream:  # pylint: disable=protected-access
    return text
  return _CLEAR + text + bar._screen_line()  # pylint: disable=protected-access


class Progress:
  """Counts work done out of a total and shows rate and ETA.

  Usage:
    bar = Progress(total=8, unit="shards", desc="train")
    bar.update(1, extra="10,000 examples")
    bar.close()

  Or `with Progress(...) as bar:`, which closes it at the end; an exception
  instead only ends the bar's line on a terminal (the error that follows gets
  a line of its own) and adds no line elsewhere.
  """

  def __init__(self, total: int, unit: str, desc: str = "",
               stream: TextIO | None = None, width: int = 24,
               log_every_s: float = 5.0, initial: int = 0):
    self.total = total
    self.unit = unit
    self.desc = desc
    self.done = initial
    self._stream = stream or sys.stderr
    self._width = width
    self._log_every_s = log_every_s
    self._tty = hasattr(self._stream, "isatty") and self._stream.isatty()
    self._start = time.monotonic()
    # (time, done) at the first update: the rate counts from there.
    self._rate_from: tuple[float, int] | None = None
    self._last_draw = float("-inf")
    self._drawn_done = None
    self._extra = ""
    self._closed = False

  def rate(self) -> float | None:
    """Units per second since the first update; None before there is any
    work done after it (what came before it, start-up included, does not
    count)."""
    if self._rate_from is None:
      return None
    since, done = self._rate_from
    elapsed = time.monotonic() - since
    return ((self.done - done) / elapsed
            if elapsed > 0 and self.done > done else None)

  def line(self) -> str:
    fraction = self.done / self.total if self.total else 1.0
    filled = int(self._width * min(fraction, 1.0))
    bar = "#" * filled + "." * (self._width - filled)
    rate = self.rate()
    remaining = max(self.total - self.done, 0)
    if not remaining:
      eta = _duration(0)
    elif rate:
      eta = _duration(remaining / rate)
    else:  # not measured yet
      eta = "?"
    parts = [f"{self.desc}: " if self.desc else "",
             f"{100 * fraction:3.0f}% [{bar}] {self.done:,}/{self.total:,} "
             f"{self.unit}, {'?' if rate is None else f'{rate:,.1f}'} "
             f"{self.unit}/s, "
             f"elapsed {_duration(time.monotonic() - self._start)}, "
             f"ETA {eta}"]
    if self._extra:
      parts.append(f", {self._extra}")
    return "".join(parts)

  def update(self, n: int = 1, extra: str | None = None) -> None:
    self.done += n
    if extra is not None:
      self._extra = extra
    now = time.monotonic()
    if self._rate_from is None:
      self._rate_from = (now, self.done)
    if self._tty or now - self._last_draw >= self._log_every_s:
      self._draw(final=False)
      self._last_draw = now

  def _screen_line(self) -> str:
    """line(), cut to the width of the terminal it is drawn on."""
    line = self.line()
    try:
      columns = os.get_terminal_size(self._stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # no file descriptor
      return line
    # One column spare: a line as wide as the terminal may wrap the cursor.
    return line[:max(columns - 1, 1)]

  def _draw(self, final: bool) -> None:
    global _drawn
    if self._tty:
      self._stream.write(_CLEAR + self._screen_line() +
                         ("\n" if final else ""))
      _drawn = None if final else self
    else:
      if final and self._drawn_done == self.done:
        return  # that line is already in the log
      self._drawn_done = self.done
      self._stream.write(self.line() + "\n")
    self._stream.flush()

  def close(self) -> None:
    if not self._closed:
      self._closed = True
      self._draw(final=True)

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
      return
    global _drawn
    self._closed = True
    if _drawn is self:  # end its line, as it stands
      self._stream.write("\n")
      self._stream.flush()
      _drawn = None
