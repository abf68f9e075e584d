"""One run per run directory at a time (trainer/training/run_lock.py).

Real trainer processes on one --model_dir, local and on the GCS emulator: the
second one stops with one line naming the first; a run killed with SIGKILL
leaves a stale lock that the next run takes over. Contenders racing for one
lock (created, or taken over) in real processes: exactly one wins.

Each trainer process is shared by several assertions: starting one costs
seconds (TensorFlow's import).
"""

import dataclasses
import datetime
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import time
import uuid

from absl import logging
import pytest

from trainer import errors
from trainer.training import run_lock

from tests.helpers.trainer_process import LONG_RUN, Trainer as _Trainer, run_trainer

# Heartbeats every second: the real processes write a few of them.
FAST_HEARTBEAT = {run_lock.HEARTBEAT_ENV: "1"}


def Trainer(*flags):  # pylint: disable=invalid-name
  """test_faults.Trainer with fast heartbeats."""
  return _Trainer(*flags, env=FAST_HEARTBEAT)


def assert_refused(result, lock_path, holder_pid):
  """Exit status 2, one `error:` line naming the lock and its holder, no
  traceback; returns the line."""
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  line = lines[0]
  assert line.startswith(
      f"error: another run holds {lock_path}: host {socket.gethostname()} "
      f"pid {holder_pid} (since 20"), line
  assert "last heartbeat " in line, line
  assert " ago: wait for it to end or stop it; " in line, line
  assert line.endswith("if you are sure it is gone, delete the lock (" + (
      f"gcloud storage rm {lock_path})" if lock_path.startswith("gs://")
      else f"rm {lock_path})")), line
  return line


def stop(run):
  """SIGTERM: the run checkpoints and exits 0; returns its stderr."""
  run.process.send_signal(signal.SIGTERM)
  code, stderr = run.finish()
  assert code == 0, stderr[-3000:]
  assert "SIGTERM: saved a checkpoint at step " in stderr, stderr[-3000:]
  assert "Traceback" not in stderr and "error:" not in stderr, stderr[-3000:]
  return stderr


# --- Real trainers ------------------------------------------------------------


def test_a_second_run_is_refused_and_a_killed_runs_lock_is_taken_over(
    smoke_data, tmp_path):
  model_dir = tmp_path / "run"
  lock = f"{model_dir}/checkpoints/run.lock"
  flags = [f"--data_dir={smoke_data}", f"--model_dir={model_dir}", *LONG_RUN]
  first = Trainer(*flags)
  try:
    first.wait_for("steps/s")  # training, holding the lock
    holder = json.loads(open(lock).read())
    assert (holder["host"], holder["pid"]) == (socket.gethostname(),
                                               first.process.pid)
    assert holder["process_start"] == run_lock.process_start(
        first.process.pid)

    started = time.monotonic()
    assert_refused(run_trainer(*flags), lock, first.process.pid)
    refused_in = time.monotonic() - started
    assert refused_in < 30, refused_in  # before any graph is built
    # The first run is still there, and still beating.
    assert first.process.poll() is None
    assert json.loads(open(lock).read())["heartbeat"] > holder["heartbeat"]

    # SIGKILL: the lock stays behind, its process gone.
    first.process.kill()
    first.process.wait()
    assert os.path.exists(lock)
    # What a run killed (SIGTERM) while taking the lock over leaves: its
    # temporary files, a minute old. The next holder removes them (before,
    # they stayed).
    for leftover in ("run.lock.0123456789ab.new", "run.lock.ba9876543210.stale"):
      path = model_dir / "checkpoints" / leftover
      path.write_bytes(b"")
      os.utime(path, (time.time() - 120,) * 2)
    second = Trainer(*flags)
    try:
      took = second.wait_for("took over the lock")
      assert took.strip() == (
          f"took over the lock {lock} of host {socket.gethostname()} pid "
          f"{first.process.pid} (since {holder['since']}): that process is "
          "gone"), took
      second.wait_for("steps/s")
      assert json.loads(open(lock).read())["pid"] == second.process.pid
      stop(second)
    finally:
      second.process.kill()
  finally:
    first.process.kill()
  assert not os.path.exists(lock)  # released at the end
  # No temporary lock files left either.
  assert not [n for n in os.listdir(model_dir / "checkpoints")
              if n.startswith("run.lock")]


def test_a_second_run_on_gcs_is_refused(gcs, smoke_data):
  bucket = f"lock-{uuid.uuid4().hex[:12]}"
  gcs.create_bucket(bucket)
  lock = f"gs://{bucket}/run/checkpoints/run.lock"
  flags = [f"--data_dir={smoke_data}", f"--model_dir=gs://{bucket}/run",
           *LONG_RUN]
  first = Trainer(*flags)
  try:
    first.wait_for("steps/s")
    assert_refused(run_trainer(*flags), lock, first.process.pid)
    assert first.process.poll() is None  # the first run trains on
    stop(first)
  finally:
    first.process.kill()
  assert _blob(lock) is None  # released at the end


# --- The lock itself, in this process -----------------------------------------


def _blob(path):
  from google.cloud import storage  # pylint: disable=g-import-not-at-top
  bucket, name = path[len("gs://"):].split("/", 1)
  return storage.Client(project=None).bucket(bucket).get_blob(name)


def _write(path, holder):
  """Writes a lock as another process left it."""
  if path.startswith("gs://"):
    from google.cloud import storage  # pylint: disable=g-import-not-at-top
    bucket, name = path[len("gs://"):].split("/", 1)
    storage.Client(project=None).bucket(bucket).blob(name).upload_from_string(
        holder.to_bytes())
  else:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(holder.to_bytes())


def _dead_pid():
  process = subprocess.Popen(["true"])
  process.wait()
  return process.pid


@pytest.fixture(params=["local", "gcs"])
def checkpoints(request, tmp_path):
  """A checkpoints directory: local, or gs:// on the emulator."""
  if request.param == "local":
    return str(tmp_path / "checkpoints")
  gcs = request.getfixturevalue("gcs")
  bucket = f"lock-{uuid.uuid4().hex[:12]}"
  gcs.create_bucket(bucket)
  return f"gs://{bucket}/run/checkpoints"


@pytest.fixture
def logged(monkeypatch):
  """The lines run_lock logs (INFO and up), as they would print."""
  lines = []
  monkeypatch.setattr(logging, "info",
                      lambda msg, *args: lines.append(msg % args))
  monkeypatch.setattr(logging, "error",
                      lambda msg, *args: lines.append("ERROR " + msg % args))
  return lines


def test_stale_locks_are_taken_over_and_live_ones_refused(checkpoints, logged):
  path = f"{checkpoints}/run.lock"
  here = run_lock.Holder.this_process(since="2024-05-01T10:00:00+00:00")
  old = "2024-05-01T10:05:00+00:00"
  cases = [
      # (holder, the reason given, or None: refused)
      (dataclasses.replace(here, pid=_dead_pid()), "that process is gone"),
      (dataclasses.replace(here, pid=1, process_start="other-boot/1"),
       "this host restarted since"),
      (dataclasses.replace(here, pid=1, process_start=(
          run_lock.process_start(1).split("/")[0] + "/1")),
       "that process is gone (its pid now belongs to another process)"),
      (dataclasses.replace(here, host="elsewhere", heartbeat=old),
       "its last heartbeat is "),
      # Damaged or foreign locks (before: a heartbeat dated 2099 never went
      # stale, one without a timezone was a TypeError, a pid of 10**14 an
      # OverflowError).
      (dataclasses.replace(here, host="elsewhere",
                           heartbeat="2099-01-01T00:00:00+00:00"),
       "its heartbeat 2099-01-01T00:00:00+00:00 is 7"),
      (dataclasses.replace(here, host="elsewhere", heartbeat=old[:-6]),
       "its last heartbeat is "),
      (dataclasses.replace(here, pid=10**14), "that process is gone"),
      (dataclasses.replace(here, pid=-1), "that process is gone"),
      (dataclasses.replace(here, pid=0), "that process is gone"),
      (dataclasses.replace(here, host="elsewhere", heartbeat=(
          datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
          .isoformat(timespec="seconds"))), None),  # no timezone: UTC
      (dataclasses.replace(here, pid=1, process_start=run_lock.process_start(
          1)), None),
      (dataclasses.replace(here, host="elsewhere").beat(), None),
  ]
  for holder, reason in cases:
    _write(path, holder)
    del logged[:]
    if reason is None:
      with pytest.raises(errors.UserError) as refused:
        with run_lock.hold(checkpoints):
          pass
      assert refused.value.exit_status == 2
      assert str(refused.value).startswith(
          f"another run holds {path}: host {holder.host} pid {holder.pid} "
          f"(since {holder.since}), last heartbeat "), refused.value
      continue
    with run_lock.hold(checkpoints):
      pass
    prefix = (f"took over the lock {path} of host {holder.host} pid "
              f"{holder.pid} (since {holder.since}): ")
    assert len(logged) == 1 and logged[0].startswith(prefix), logged
    if reason.startswith("its heartbeat 2099"):
      assert logged[0].startswith(prefix + reason), logged
      assert logged[0].endswith(
          " years ahead of this host's clock (a damaged lock, or clocks that "
          "disagree by more than the stale limit of 5 min)"), logged
    elif reason.startswith("its last heartbeat"):
      assert logged[0].startswith(prefix + reason), logged
      assert logged[0].endswith(" old (stale after 5 min)"), logged
    else:
      assert logged[0] == prefix + reason, logged


def test_a_lost_lock_is_said_and_not_deleted(checkpoints, logged):
  path = f"{checkpoints}/run.lock"
  other = dataclasses.replace(run_lock.Holder.this_process(), host="elsewhere")
  with run_lock.hold(checkpoints, heartbeat_seconds=0.2):
    if path.startswith("gs://"):
      _write(path, other)  # a new generation: another run's
    else:  # another run renamed this one's aside and made its own
      os.rename(path, path + ".aside")
      _write(path, other)
    deadline = time.monotonic() + 10
    while not any(l.startswith("ERROR") for l in logged):
      assert time.monotonic() < deadline, logged
      time.sleep(0.05)
  assert logged == [
      f"ERROR lost the lock {path}: host elsewhere pid {os.getpid()} (since "
      f"{other.since}) took it over (it judged this run gone); two runs may "
      "now write this directory: stop one of them"], logged
  # Released without deleting the other run's lock.
  if path.startswith("gs://"):
    assert json.loads(_blob(path).download_as_bytes())["host"] == "elsewhere"
  else:
    with open(path) as f:
      assert json.loads(f.read())["host"] == "elsewhere"


def test_gcs_access_errors_are_one_line(gcs):
  bucket = f"lock-{uuid.uuid4().hex[:12]}"
  with pytest.raises(errors.UserError, match=(
      f"^bucket gs://{bucket} does not exist .*: create it with")):
    with run_lock.hold(f"gs://{bucket}/run/checkpoints"):
      pass
  gcs.create_bucket(bucket)
  gcs.deny_buckets.add(bucket)
  try:
    with pytest.raises(errors.UserError, match=(
        f"^permission denied on gs://{bucket}/run/checkpoints/run.lock .*"
        f"roles/storage.objectAdmin on gs://{bucket}$")):
      with run_lock.hold(f"gs://{bucket}/run/checkpoints"):
        pass
  finally:
    gcs.deny_buckets.discard(bucket)


# --- Races ------------------------------------------------------------------

CONTENDERS = 6


def _contend(checkpoints, start, results, done):
  """One contender (a process): waits for `start`, takes the lock, reports,
  holds it until `done`."""
  start.wait()
  try:
    with run_lock.hold(checkpoints, stale_seconds=300):
      results.put(("won", os.getpid()))
      done.wait()
  except errors.UserError as e:
    results.put(("refused", str(e)))


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_exactly_one_of_several_processes_takes_the_lock(checkpoints, stale):
  """CONTENDERS processes take a free lock, or a stale one (a dead pid of
  this host), at the same moment: one wins, the others name it."""
  path = f"{checkpoints}/run.lock"
  if stale:
    _write(path, dataclasses.replace(run_lock.Holder.this_process(),
                                     pid=_dead_pid()))
  context = multiprocessing.get_context("fork")
  start, done, results = context.Event(), context.Event(), context.Queue()
  processes = [context.Process(target=_contend,
                               args=(checkpoints, start, results, done))
               for _ in range(CONTENDERS)]
  for process in processes:
    process.start()
  try:
    time.sleep(0.5)  # every contender waits at the start
    start.set()
    outcomes = [results.get(timeout=60) for _ in processes]
  finally:
    done.set()
    for process in processes:
      process.join(timeout=30)
      if process.exitcode is None:
        process.kill()
  winners = [pid for kind, pid in outcomes if kind == "won"]
  assert len(winners) == 1, outcomes
  for kind, message in outcomes:
    if kind == "refused":
      assert message.startswith(f"another run holds {path}: host "
                                f"{socket.gethostname()} pid {winners[0]} "), (
                                    message)
  assert all(p.exitcode == 0 for p in processes)
  if path.startswith("gs://"):
    assert _blob(path) is None
  else:
    assert not os.path.exists(os.path.dirname(path)) or not os.listdir(
        os.path.dirname(path))


def test_a_lock_that_is_a_directory_is_one_line(smoke_data, tmp_path):
  # Before: an unnamed IsADirectoryError and a traceback.
  model_dir = tmp_path / "run"
  lock = model_dir / "checkpoints" / "run.lock"
  lock.mkdir(parents=True)
  result = run_trainer(f"--data_dir={smoke_data}", f"--model_dir={model_dir}")
  assert result.returncode == 2, result.stderr[-3000:]
  assert [l for l in result.stderr.splitlines() if l.startswith("error:")] == [
      f"error: {lock} is a directory, not a run lock: if no run uses this "
      f"directory, remove it (rm -r {lock})"], result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert sorted(os.listdir(model_dir)) == ["checkpoints"]
  assert os.listdir(model_dir / "checkpoints") == ["run.lock"]
