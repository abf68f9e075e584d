"""Work that several tests share, done once per pytest session.

Under pytest-xdist every worker process runs a session or module fixture
itself, and pytest.ini's `-n 2 --dist load` spreads the tests that use it
over both workers; `once_per_session` makes the first worker do the work and
the other read its result.
"""

import dataclasses
import fcntl
import os
import pathlib
import shutil

import pytest

from tests.helpers import trainer_process

_DONE = "DONE"  # in a directory once_per_session filled


def once_per_session(tmp_path_factory, name, produce):
  """A directory that `produce(path)` fills once per pytest session.

  Under pytest-xdist the first worker fills the directory, in the session's
  shared temporary directory and under a lock, and the other waits for it
  and reads it (the pattern of pytest-xdist's docs, with fcntl for
  filelock). A failure is kept, and raised again in the other worker
  without a second attempt.
  """
  if not os.environ.get("PYTEST_XDIST_WORKER"):
    path = tmp_path_factory.mktemp(name)
    produce(path)
    return path
  path = tmp_path_factory.getbasetemp().parent / name
  failed = path.with_name(f"{name}.failed")
  with open(path.with_name(f"{name}.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    if failed.exists():
      pytest.fail(f"(in another worker) {failed.read_text()}")
    if not (path / _DONE).exists():
      shutil.rmtree(path, ignore_errors=True)
      path.mkdir()
      try:
        produce(path)
      except BaseException as e:
        failed.write_text(str(e))
        raise
      (path / _DONE).touch()
  return path


def copy_of(model_dir, tmp_path):
  """A copy of a shared run's model_dir, as tmp_path/run: for a test that
  resumes or damages it (none may write in the shared one)."""
  copy = tmp_path / "run"
  shutil.copytree(model_dir, copy)
  return copy


@dataclasses.dataclass(frozen=True)
class FinishedRun:
  """A trainer run that ended: its model_dir and what it printed."""
  model_dir: pathlib.Path
  returncode: int
  stdout: str
  stderr: str


def trainer_run_once(tmp_path_factory, name, data_dir, *flags, env=None,
                     timeout=300):
  """`python -m trainer.task --config=configs/smoke.py --data_dir=data_dir
  --model_dir=... flags`, run once per session for every test that reads
  the same run (none may change its model_dir); a FinishedRun.

  `env` adds variables to this process's environment; a value None removes
  that variable. A run that fails is returned as it ended: each test asserts
  its returncode and shows its stderr.
  """

  def produce(root):
    result = trainer_process.run_trainer(
        f"--data_dir={data_dir}", f"--model_dir={root / 'run'}", *flags,
        env=env, timeout=timeout)
    (root / "stdout.txt").write_text(result.stdout)
    (root / "stderr.txt").write_text(result.stderr)
    (root / "returncode.txt").write_text(str(result.returncode))

  root = once_per_session(tmp_path_factory, name, produce)
  return FinishedRun(root / "run", int((root / "returncode.txt").read_text()),
                     (root / "stdout.txt").read_text(),
                     (root / "stderr.txt").read_text())
