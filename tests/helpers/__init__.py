"""What many tests share: the checkout's root, the error lines of a run, a
closed port. Fakes live beside this module (cloud_fake, gcs_emulator,
workers; examples writes records by hand), each taking its facts from
documented tables, never from the product's code."""

import os
import socket

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "configs", "smoke.py")


def error_lines(result_or_text) -> list[str]:
  """The `error:` lines of a CompletedProcess's stderr (or of a text)."""
  text = getattr(result_or_text, "stderr", result_or_text)
  return [line for line in text.splitlines() if line.startswith("error:")]


def closed_port() -> int:
  """A 127.0.0.1 port nothing listens on (bound, then released)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
