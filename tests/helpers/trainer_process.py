"""Trainer processes of the smoke config (python -m trainer.task), run to
the end or read line by line, and the one-error-line check of their exits."""

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, SMOKE, error_lines

# Runs long enough to be stopped: no evaluation or checkpoint on the way.
LONG_RUN = ["--config.train.num_steps=100000",
            "--config.train.eval_every_steps=0",
            "--config.train.checkpoint_every_steps=0"]


def trainer_command(*flags):
  return [sys.executable, "-m", "trainer.task", f"--config={SMOKE}", *flags]


def run_trainer(*flags, timeout=240, **kwargs):
  return subprocess.run(trainer_command(*flags), cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, **kwargs)


def assert_one_error(result, status, *phrases):
  """Exit status `status`, one `error:` line holding every phrase, and no
  traceback."""
  assert result.returncode == status, result.stderr[-3000:]
  errors = error_lines(result.stderr)
  assert len(errors) == 1, result.stderr[-3000:]
  for phrase in phrases:
    assert phrase in errors[0], errors[0]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  return errors[0]


class Trainer:
  """One trainer process; its stderr is read as it comes."""

  def __init__(self, *flags, preexec_fn=None, env=None):
    self.process = subprocess.Popen(
        trainer_command(*flags), cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn,
        env={**os.environ, **(env or {})})
    self.stderr = []

  def wait_for(self, text):
    """Reads stderr until a line contains `text`."""
    for line in self.process.stderr:
      self.stderr.append(line)
      if text in line:
        return line
    pytest.fail(f"ended without {text!r}:\n" + "".join(self.stderr)[-3000:])

  def finish(self, timeout=120):
    self.stderr.extend(self.process.stderr)
    return self.process.wait(timeout=timeout), "".join(self.stderr)
