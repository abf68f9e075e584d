"""What Linux's /proc says of a process: its state, its start, its age.

run.lock tells a live holder from a dead one or a reused pid with these
(trainer/training/run_lock.py); the run's clock starts at the process's own
start (trainer/training/loop.py). Each function answers None where /proc
does not (no such process, or not Linux).
"""

from __future__ import annotations

import os


def stat_fields(pid: int | str = "self") -> list[str] | None:
  """The fields of /proc/PID/stat from field 3 (the state) on, so that
  field N of proc(5) is item N - 3; None when it cannot be read."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii",
              errors="replace") as f:
      stat = f.read()
  except OSError:
    return None
  # The command name (field 2, in parentheses) may hold spaces and
  # parentheses: count from its last ")".
  return stat[stat.rindex(")") + 2:].split()


def state(pid: int | str = "self") -> str | None:
  """The process's state letter (field 3): "R", "S", "Z" (a zombie), ..."""
  fields = stat_fields(pid)
  return fields[0] if fields else None


def start_ticks(pid: int | str = "self") -> int | None:
  """When the process started (field 22), in clock ticks after boot."""
  fields = stat_fields(pid)
  return int(fields[19]) if fields else None


def boot_id() -> str | None:
  """This boot's id: a start time is only comparable within one boot."""
  try:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
      return f.read().strip()
  except OSError:
    return None


def age_seconds(pid: int | str = "self") -> float | None:
  """Seconds since the process started (its start against /proc/uptime)."""
  ticks = start_ticks(pid)
  try:
    with open("/proc/uptime", encoding="ascii") as f:
      uptime = float(f.read().split()[0])
  except (OSError, ValueError, IndexError):
    return None
  if ticks is None:
    return None
  return max(uptime - ticks / os.sysconf("SC_CLK_TCK"), 0.0)
