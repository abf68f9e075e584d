"""Every process of this checkout's commands that a test starts
(`python -m trainer.task`, `python -m trainer.data`, ...): the one place
that says their command line, environment, working directory, timeout and
output capture. Run to the end (run_module, run_trainer), or started to be
signalled and read line by line (start, Trainer); tests/helpers/workers.py
starts its TF_CONFIG workers through `start` too. And the one-error-line
check of their exits."""

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, SMOKE, error_lines

# Runs long enough to be stopped: no evaluation or checkpoint on the way.
LONG_RUN = ["--config.train.num_steps=100000",
            "--config.train.eval_every_steps=0",
            "--config.train.checkpoint_every_steps=0"]


def environment(env=None):
  """os.environ with TensorFlow's C++ log quiet, then `env` on top; a value
  None in `env` removes that variable."""
  full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
  return {k: v for k, v in full_env.items() if v is not None}


def module_command(module, *args):
  return [sys.executable, "-m", module, *args]


def trainer_command(*flags):
  """The trainer on the smoke config, `flags` after it."""
  return module_command("trainer.task", f"--config={SMOKE}", *flags)


def run_command(command, env=None, timeout=300, cwd=None):
  """Runs `command` to its end in the checkout (or `cwd`), its output
  captured as text; the CompletedProcess. `env`: see environment()."""
  return subprocess.run(command, capture_output=True, text=True,
                        env=environment(env), timeout=timeout,
                        cwd=cwd or ROOT)


def run_module(module, *args, env=None, timeout=300, cwd=None):
  """Runs `python -m module args...`; returns the CompletedProcess."""
  return run_command(module_command(module, *args), env=env, timeout=timeout,
                     cwd=cwd)


def run_trainer(*flags, env=None, timeout=240, prefix=()):
  """Runs the smoke trainer with `flags` to its end; `prefix` goes before
  the command (a wrapper such as setpriv)."""
  return run_command([*prefix, *trainer_command(*flags)], env=env,
                     timeout=timeout)


def start(command, env=None, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
          preexec_fn=None):
  """Starts `command` in the checkout (text output, to pipes or files as
  given); the Popen, for a test that signals it or reads it as it comes.
  `env`: see environment()."""
  return subprocess.Popen(command, cwd=ROOT, env=environment(env),
                          stdout=stdout, stderr=stderr, text=True,
                          preexec_fn=preexec_fn)


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
  """One smoke trainer process; its stderr is read as it comes."""

  def __init__(self, *flags, preexec_fn=None, env=None):
    self.process = start(trainer_command(*flags), env=env,
                         preexec_fn=preexec_fn)
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
