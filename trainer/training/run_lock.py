"""One run per run directory at a time: the `run.lock` of the checkpoints.

  with run_lock.hold(dirs.checkpoints):
    ... the whole run ...

Two trainers started with the same --model_dir would both train and mix
their checkpoints and logs. The chief of a run therefore holds a lock object,
`run.lock` in its checkpoints directory (local or gs://), for the life of the
run; a second trainer stops at once with one line naming the holder.

The lock is a small JSON object: the holder's host, pid, the start time of
that process (to tell a reused pid apart), `since` (when it took the lock)
and `heartbeat`, refreshed every HEARTBEAT_SECONDS by a daemon thread.

Taking it is atomic on both kinds of storage:
* gs://: the object is created with `if_generation_match=0` (only if it does
  not exist); GCS lets exactly one of several writers succeed.
* local: the JSON is written to a unique temporary file, which is then
  hard-linked to `run.lock`. `link` fails with EEXIST if the name exists, so
  exactly one contender wins, and unlike `O_CREAT|O_EXCL` followed by a
  write, no reader ever sees an empty or half-written lock. This works on
  NFS too, where two hosts may share a run directory (flock would not be
  shared across hosts on every network file system, and a stale lock could
  not be told apart by its heartbeat).

A run killed with SIGKILL, `os._exit` (a second Ctrl-C) or a machine that
went down leaves its lock behind. It is stale, and the next run takes it
over with one log line, when its holder is on this host and that process is
gone (no such pid, a zombie, a pid reused by a process started at another
time, or a host rebooted since), or when its heartbeat is older than
STALE_SECONDS (a holder on another host that stopped answering), or dated
more than STALE_SECONDS ahead of this host's clock (damaged; a heartbeat
without a timezone is read as UTC). Taking over
is atomic too: on gs:// the stale object is overwritten with
`if_generation_match=<its generation>`, so one contender wins; locally the
stale file is renamed to a unique name (one rename wins), checked to be the
very file judged stale, and the lock is then created as above.

The holder refreshes the heartbeat on gs:// with `if_generation_match=<its
own generation>`; if that fails because another run took the lock over, it
logs one error line. At the end it deletes the lock only if it is still its
own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import posixpath
import socket
import stat
import threading
import time
import uuid
from typing import Iterator

from absl import logging

from trainer import errors
from trainer import procs
from trainer.cloud import gcs
from trainer.cloud import storage

LOCK_NAME = "run.lock"
# How often the holder refreshes its heartbeat, and when a lock whose
# heartbeat is that old is stale. Tests shorten them through the environment
# (or pass them to `hold`).
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0
HEARTBEAT_ENV = "TRAINER_RUN_LOCK_HEARTBEAT_SECONDS"
STALE_ENV = "TRAINER_RUN_LOCK_STALE_SECONDS"
# How often to look again when the lock changes under a contender's hands.
_ATTEMPTS = 5


@dataclasses.dataclass(frozen=True)
class Holder:
  """What a lock says about the process holding it."""
  host: str
  pid: int
  process_start: str | None  # "<boot id>/<start time in clock ticks>"
  since: str  # UTC, ISO 8601
  heartbeat: str  # UTC, ISO 8601

  @classmethod
  def this_process(cls, since: str | None = None) -> Holder:
    now = _now()
    return cls(host=socket.gethostname(), pid=os.getpid(),
               process_start=process_start(os.getpid()), since=since or now,
               heartbeat=now)

  @classmethod
  def parse(cls, data: bytes, path: str) -> Holder:
    """Raises UserError for content that is not a run lock."""
    try:
      fields = json.loads(data)
      return cls(host=str(fields["host"]), pid=int(fields["pid"]),
                 process_start=fields.get("process_start"),
                 since=str(fields["since"]), heartbeat=str(fields["heartbeat"]))
    except (ValueError, TypeError, KeyError) as e:
      raise errors.UserError(
          f"{path} is not a run lock ({type(e).__name__}: {e}): if no run "
          f"uses this directory, delete it ({_delete_command(path)})") from e

  def to_bytes(self) -> bytes:
    return (json.dumps(dataclasses.asdict(self), indent=2) + "\n").encode()

  def beat(self) -> Holder:
    return dataclasses.replace(self, heartbeat=_now())

  def heartbeat_age(self) -> float:
    """Seconds since the last heartbeat (by this host's clock)."""
    try:
      then = datetime.datetime.fromisoformat(self.heartbeat)
    except ValueError:
      return float("inf")
    if then.tzinfo is None:  # written by hand or by another tool: UTC
      then = then.replace(tzinfo=datetime.timezone.utc)
    return (datetime.datetime.now(datetime.timezone.utc) - then
            ).total_seconds()

  def describe(self) -> str:
    return f"host {self.host} pid {self.pid} (since {self.since})"


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds")


def process_start(pid: int) -> str | None:
  """"<boot id>/<start time in clock ticks>" of a process (Linux), else
  None."""
  ticks = procs.start_ticks(pid)
  return None if ticks is None else f"{procs.boot_id() or ''}/{ticks}"


def why_stale(holder: Holder, stale_seconds: float) -> str | None:
  """Why the holder of a lock is gone, or None while it may still run."""
  if holder.host == socket.gethostname():
    if holder.pid == os.getpid():
      return None  # this process (a second `hold` would deadlock on itself)
    if not _pid_exists(holder.pid):
      return "that process is gone"
    started = process_start(holder.pid)
    if holder.process_start and started and started != holder.process_start:
      if holder.process_start.split("/")[0] != started.split("/")[0]:
        return "this host restarted since"
      return ("that process is gone (its pid now belongs to another "
              "process)")
  age = holder.heartbeat_age()
  if age < -stale_seconds:
    return (f"its heartbeat {holder.heartbeat} is {_duration(-age)} ahead of "
            "this host's clock (a damaged lock, or clocks that disagree by "
            f"more than the stale limit of {_duration(stale_seconds)})")
  if age > stale_seconds:
    return (f"its last heartbeat is {_duration(age)} old (stale after "
            f"{_duration(stale_seconds)})")
  return None


def _pid_exists(pid: int) -> bool:
  """Whether a process `pid` runs on this host (a zombie does not)."""
  if pid <= 0:  # not a process: kill(0) or kill(-1) would signal groups
    return False
  try:
    os.kill(pid, 0)
  except (ProcessLookupError, OverflowError):  # OverflowError: pid > C int
    return False
  except PermissionError:
    pass  # another user's: it exists
  return procs.state(pid) != "Z"  # a zombie: dead, not yet reaped


def _duration(seconds: float) -> str:
  if seconds == float("inf"):
    return "unknown"
  for unit, size in (("years", 365 * 86400), ("days", 86400), ("h", 3600),
                     ("min", 60)):
    if seconds >= 2 * size:
      return f"{seconds / size:.0f} {unit}"
  return f"{seconds:.0f} s"


def _delete_command(path: str) -> str:
  return (f"gcloud storage rm {path}" if path.startswith("gs://")
          else f"rm {path}")


def refusal(path: str, holder: Holder) -> errors.UserError:
  """The one line a second run stops with."""
  return errors.UserError(
      f"another run holds {path}: {holder.describe()}, last heartbeat "
      f"{_duration(max(holder.heartbeat_age(), 0))} ago: wait for it to end "
      "or stop it; if you are sure it is gone, delete the lock "
      f"({_delete_command(path)})")


def _took_over(path: str, holder: Holder, reason: str) -> None:
  logging.info("took over the lock %s of %s: %s", path, holder.describe(),
               reason)


def _heartbeat_seconds(value: float | None) -> float:
  return value or float(os.environ.get(HEARTBEAT_ENV, HEARTBEAT_SECONDS))


def _stale_seconds(value: float | None) -> float:
  return value or float(os.environ.get(STALE_ENV, STALE_SECONDS))


@contextlib.contextmanager
def hold(checkpoints_dir: str, heartbeat_seconds: float | None = None,
         stale_seconds: float | None = None) -> Iterator[str]:
  """Holds `checkpoints_dir`/run.lock for the body of the `with`.

  Makes a local directory first. Yields the lock's path.

  Raises:
    UserError: another live run holds the lock (exit status 2), or the lock
      cannot be read or written (a GCS access problem: exit status 1).
  """
  path = posixpath.join(checkpoints_dir, LOCK_NAME)
  stale = _stale_seconds(stale_seconds)
  made = []  # the local directories made here, deepest first
  if storage.bucket_of(path) is None:
    _, made = storage.nearest_existing(checkpoints_dir)
    os.makedirs(checkpoints_dir, exist_ok=True)  # no TensorFlow needed here
    lock = _LocalLock(path)
  else:
    lock = _GcsLock(path)
  try:
    lock.acquire(stale)
    beats = _Heartbeat(lock, _heartbeat_seconds(heartbeat_seconds))
    try:
      yield path
    finally:
      beats.stop()
      lock.release()
  finally:
    # A run that failed before writing anything leaves no empty directory.
    for directory in made:
      try:
        os.rmdir(directory)
      except OSError:
        break  # not empty: the run wrote there


class _Heartbeat:
  """A daemon thread refreshing the lock's heartbeat until `stop`."""

  def __init__(self, lock, seconds: float):
    self._lock = lock
    self._seconds = seconds
    self._stopped = threading.Event()
    self._thread = threading.Thread(target=self._run, name="run-lock",
                                    daemon=True)
    self._thread.start()

  def _run(self) -> None:
    while not self._stopped.wait(self._seconds):
      try:
        if not self._lock.beat():
          return  # lost: said once, no more heartbeats
      except Exception as e:  # pylint: disable=broad-except
        # A failed refresh (a network glitch) is tried again next time;
        # the lock stays ours until its heartbeat is STALE_SECONDS old.
        logging.warning("could not refresh the heartbeat of %s: %s: %s",
                        self._lock.path, type(e).__name__,
                        errors.first_line(e))

  def stop(self) -> None:
    self._stopped.set()
    self._thread.join()


def _lost(path: str, holder: Holder | None) -> None:
  logging.error(
      "lost the lock %s: %s took it over (it judged this run gone); two runs "
      "may now write this directory: stop one of them", path,
      holder.describe() if holder else "another run")


class _LocalLock:
  """run.lock on a local (or network) file system; see the module."""

  def __init__(self, path: str):
    self.path = path
    self._holder: Holder | None = None
    self._fd = -1  # our lock file, open for heartbeats

  def acquire(self, stale_seconds: float) -> None:
    holder = Holder.this_process()
    for _ in range(_ATTEMPTS):
      if self._create(holder):
        return
      found = self._read()
      if found is None:
        continue  # released meanwhile: try again
      other, inode = found
      reason = why_stale(other, stale_seconds)
      if reason is None:
        raise refusal(self.path, other)
      if self._remove_stale(inode):
        _took_over(self.path, other, reason)
    raise errors.UserError(
        f"{self.path} kept changing while this run tried to take it: another "
        "run is starting in the same directory; try again once it is up, or "
        "use another directory")

  def _read(self) -> tuple[Holder, int] | None:
    """The lock's holder and inode, None when there is no lock."""
    for attempt in range(3):
      try:
        fd = os.open(self.path, os.O_RDONLY)
      except FileNotFoundError:
        return None
      try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
          kind = ("a directory" if stat.S_ISDIR(status.st_mode) else
                  "not a regular file")
          raise errors.UserError(
              f"{self.path} is {kind}, not a run lock: if no run uses this "
              f"directory, remove it (rm -r {self.path})")
        data, inode = _read_fd(fd), status.st_ino
      finally:
        os.close(fd)
      try:
        return Holder.parse(data, self.path), inode
      except errors.UserError:
        if attempt == 2:
          raise
        time.sleep(0.05)  # read during a heartbeat's write: read again
    return None

  def _create(self, holder: Holder) -> bool:
    """Writes the lock under a temporary name and links it in: False when
    the lock exists."""
    temp = f"{self.path}.{uuid.uuid4().hex[:12]}.new"
    try:
      fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as e:  # named: os.write's errors name no file
      raise OSError(e.errno, e.strerror, self.path) from e
    try:
      os.write(fd, holder.to_bytes())
      os.fsync(fd)
      os.link(temp, self.path)
    except (FileExistsError, FileNotFoundError):
      # FileNotFoundError: the holder swept our temporary file away
      # (_remove_leftovers); it holds the lock, which the caller reads.
      os.close(fd)
      return False
    except OSError as e:  # e.g. a full disk
      os.close(fd)
      raise OSError(e.errno, e.strerror, self.path) from e
    except BaseException:
      os.close(fd)
      raise
    finally:
      with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)
    self._fd, self._holder = fd, holder
    _remove_leftovers(self.path)
    return True

  def _remove_stale(self, inode: int) -> bool:
    """Moves the stale lock file (that `inode`) out of the way: True if this
    contender did (one rename wins)."""
    aside = f"{self.path}.{uuid.uuid4().hex[:12]}.stale"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return False  # another contender moved it first
    if os.stat(aside).st_ino != inode:
      # Another contender took the lock over between our read and our
      # rename: this is its new lock. Put it back (link: never over a
      # third one's).
      try:
        os.link(aside, self.path)
      except FileExistsError:
        pass
      os.unlink(aside)
      return False
    os.unlink(aside)
    return True

  def beat(self) -> bool:
    """Refreshes the heartbeat; False (said once) when the lock was lost."""
    try:
      ours = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
    except FileNotFoundError:
      ours = False
    if not ours:
      _lost(self.path, self._current_holder())
      return False
    self._holder = self._holder.beat()
    data = self._holder.to_bytes()
    # Same length every time (fixed-width times): one write in place.
    os.pwrite(self._fd, data, 0)
    os.ftruncate(self._fd, len(data))
    return True

  def _current_holder(self) -> Holder | None:
    try:
      found = self._read()
    except (OSError, errors.UserError):
      return None
    return found[0] if found else None

  def release(self) -> None:
    try:
      if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
        os.unlink(self.path)
    except FileNotFoundError:
      pass
    finally:
      os.close(self._fd)
      self._fd = -1


# A contender's temporary files live for milliseconds; older ones were left
# by a process killed while it took the lock (SIGTERM, kill -9).
LEFTOVER_SECONDS = 60.0


def _remove_leftovers(path: str) -> None:
  """Removes the `run.lock.<hex>.new` and `.stale` files of contenders killed
  while taking the lock (only this lock's holder calls it)."""
  directory, name = os.path.split(path)
  now = time.time()
  try:
    entries = os.listdir(directory)
  except OSError:
    return
  for entry in entries:
    if not (entry.startswith(name + ".") and
            entry.endswith((".new", ".stale"))):
      continue
    leftover = os.path.join(directory, entry)
    try:
      if now - os.lstat(leftover).st_mtime > LEFTOVER_SECONDS:
        os.unlink(leftover)
        logging.info("removed %s, left by a run stopped while it took the "
                     "lock", leftover)
    except OSError:
      pass  # gone meanwhile, or not ours to remove: harmless


def _read_fd(fd: int) -> bytes:
  chunks = []
  while chunk := os.read(fd, 65536):
    chunks.append(chunk)
  return b"".join(chunks)


class _GcsLock:
  """run.lock as a GCS object, with generation preconditions; see the
  module."""

  def __init__(self, path: str):
    self.path = path
    self._bucket_name, name = storage.split_url(path)
    self._name = name
    self._bucket = self._call(lambda: gcs.make_client(need_project=False)
                              .bucket(self._bucket_name))
    self._holder: Holder | None = None
    self._generation = 0

  def _call(self, function):
    """function(), its google-cloud-storage errors as one-line UserErrors."""
    try:
      return function()
    except gcs.api_errors() as e:
      raise gcs.describe(e, self._bucket_name, self.path) from e

  def _write(self, holder: Holder, if_generation_match: int) -> bool:
    """Writes the lock if its generation is `if_generation_match` (0: if it
    does not exist); False when it is not."""
    blob = self._bucket.blob(self._name)
    try:
      self._call(lambda: blob.upload_from_string(
          holder.to_bytes(), content_type="application/json",
          if_generation_match=if_generation_match))
    except errors.UserError as e:
      if isinstance(e.__cause__, gcs.exceptions().PreconditionFailed):
        return False
      raise
    self._holder, self._generation = holder, blob.generation
    return True

  def _read(self) -> tuple[Holder, int] | None:
    """The lock's holder and generation, None when there is no lock."""
    api = gcs.exceptions()

    def read():
      blob = self._bucket.get_blob(self._name)
      if blob is None:
        return None
      try:
        data = blob.download_as_bytes(if_generation_match=blob.generation)
      except (api.NotFound, api.PreconditionFailed):
        return None  # replaced or deleted meanwhile: look again
      return Holder.parse(data, self.path), blob.generation

    return self._call(read)

  def acquire(self, stale_seconds: float) -> None:
    holder = Holder.this_process()
    for _ in range(_ATTEMPTS):
      if self._write(holder, if_generation_match=0):
        return
      found = self._read()
      if found is None:
        continue
      other, generation = found
      reason = why_stale(other, stale_seconds)
      if reason is None:
        raise refusal(self.path, other)
      if self._write(holder, if_generation_match=generation):
        _took_over(self.path, other, reason)
        return
    raise errors.UserError(
        f"{self.path} kept changing while this run tried to take it: another "
        "run is starting in the same directory; try again once it is up, or "
        "use another directory")

  def beat(self) -> bool:
    if self._write(self._holder.beat(), if_generation_match=self._generation):
      return True
    found = self._read()
    _lost(self.path, found[0] if found else None)
    return False

  def release(self) -> None:
    api = gcs.exceptions()
    try:
      self._bucket.blob(self._name).delete(
          if_generation_match=self._generation)
    except (api.NotFound, api.PreconditionFailed):
      pass  # taken over (said by the heartbeat) or deleted by hand
    except gcs.api_errors() as e:
      logging.warning("could not delete the lock %s (%s): delete it by hand "
                      "(%s)", self.path, errors.first_line(e),
                      _delete_command(self.path))
