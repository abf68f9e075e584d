"""What the command-line entry points share: flag parsing and error lines.

Every bad input ends in one line `error: <cause>` on stderr and a non-zero
exit status (2 for bad flags or arguments), never a traceback.
"""

from __future__ import annotations

import sys

from absl import flags


def fail(message: str, status: int = 2) -> int:
  """Prints `error: message` on stderr; returns the exit status to use."""
  print(f"error: {message}", file=sys.stderr)
  return status


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags parser for app.run: a bad flag is one error line, exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(fail(f"{e} (see --helpfull)"))
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    # ml_collections' --config flags raise these: an unknown field
    # (AttributeError), a missing config file, a value of the wrong type.
    sys.exit(fail(f"cannot parse the flags: {type(e).__name__}: {e} "
                  "(see --helpfull)"))


def describe_io_error(error: BaseException) -> str:
  """One line for a file system error (local or gs://)."""
  message = getattr(error, "message", None) or str(error)
  first_line = message.strip().splitlines()[0] if message.strip() else ""
  return f"{type(error).__name__}: {first_line}"
