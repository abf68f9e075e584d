"""A small progress bar for the console (stderr).

On a terminal it redraws one line in place; elsewhere (logs, CI, pipes) it
prints a line at most every `log_every_s` seconds, and always the last one.

Why not a library: `keras.utils.Progbar` rewrites with carriage returns in
logs too and needs Keras in the data generator's parent, which otherwise
does not import it; `tqdm` would be a dependency for ~80 lines, and its
non-terminal output is one line per refresh. This prints whole lines that a
log file or a Vertex AI / TPU VM log keeps readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else (
      f"{minutes:02d}:{seconds:02d}")


class Progress:
  """Counts work done out of a total and shows rate and ETA.

  Usage:
    bar = Progress(total=8, unit="shards", desc="train")
    bar.update(1, extra="10,000 examples")
    bar.close()
  """

  def __init__(self, total: int, unit: str, desc: str = "",
               stream: TextIO | None = None, width: int = 24,
               log_every_s: float = 5.0, initial: int = 0):
    self.total = total
    self.unit = unit
    self.desc = desc
    self.done = initial
    self._initial = initial
    self._stream = stream or sys.stderr
    self._width = width
    self._log_every_s = log_every_s
    self._tty = hasattr(self._stream, "isatty") and self._stream.isatty()
    self._start = time.monotonic()
    self._last_draw = float("-inf")
    self._drawn_done = None
    self._extra = ""
    self._closed = False

  def rate(self) -> float:
    """Units per second since the bar started (work before it excluded)."""
    elapsed = time.monotonic() - self._start
    return (self.done - self._initial) / elapsed if elapsed > 0 else 0.0

  def line(self) -> str:
    fraction = self.done / self.total if self.total else 1.0
    filled = int(self._width * min(fraction, 1.0))
    bar = "#" * filled + "." * (self._width - filled)
    rate = self.rate()
    remaining = self.total - self.done
    eta = _duration(remaining / rate) if rate > 0 else "?"
    parts = [f"{self.desc}: " if self.desc else "",
             f"{100 * fraction:3.0f}% [{bar}] {self.done:,}/{self.total:,} "
             f"{self.unit}, {rate:,.1f} {self.unit}/s, "
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
    if self._tty or now - self._last_draw >= self._log_every_s:
      self._draw(final=False)
      self._last_draw = now

  def _draw(self, final: bool) -> None:
    if not self._tty and final and self._drawn_done == self.done:
      return  # that line is already in the log
    self._drawn_done = self.done
    if self._tty:
      self._stream.write("\r\x1b[2K" + self.line() + ("\n" if final else ""))
    else:
      self._stream.write(self.line() + "\n")
    self._stream.flush()

  def close(self) -> None:
    if not self._closed:
      self._closed = True
      self._draw(final=True)
