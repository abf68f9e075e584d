"""Shared test helpers."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_module(module, *args, env=None, timeout=300, cwd=None):
  """Runs `python -m module args...`; returns the CompletedProcess.

  `env` adds variables to this process's environment; a value None removes
  that variable.
  """
  full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
  full_env = {k: v for k, v in full_env.items() if v is not None}
  return subprocess.run(
      [sys.executable, "-m", module, *args], capture_output=True, text=True,
      env=full_env, timeout=timeout, cwd=cwd or ROOT)


@pytest.fixture
def run():
  return run_module
