"""What many tests share: the checkout's root, the error lines of a run, a
closed port. Fakes live beside this module (cloud_fake, gcs_emulator,
workers; examples writes records by hand), each taking its facts from
documented tables, never from the product's code."""

import base64
import os
import socket

import google_crc32c

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "configs", "smoke.py")


def error_lines(result_or_text) -> list[str]:
  """The `error:` lines of a CompletedProcess's stderr (or of a text)."""
  text = getattr(result_or_text, "stderr", result_or_text)
  return [line for line in text.splitlines() if line.startswith("error:")]


def crc32c_base64(data: bytes) -> str:
  """GCS's crc32c field of `data` (big-endian, base64), computed with
  google-crc32c directly: what the manifest and the GCS listing must say."""
  return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def alive(pid: int) -> bool:
  """Whether process `pid` exists and is not a zombie (Linux /proc)."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
      # The state follows the command name, which may hold spaces.
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def closed_port() -> int:
  """A 127.0.0.1 port nothing listens on (bound, then released)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# A stand-in `nvidia-smi -L` listing FAKE_GPUS (environment, default 0) GPUs,
# for the launch/ GPU scripts' tests.
FAKE_NVIDIA_SMI = """#!/bin/sh
i=0
while [ "$i" -lt "${FAKE_GPUS:-0}" ]; do
  echo "GPU $i: Fake GPU (UUID: GPU-$i)"
  i=$((i + 1))
done
"""
