"""Uploading a data set to GCS and verifying one, with google-cloud-storage.

  python -m trainer.data upload --src=/tmp/arith --dst=gs://BUCKET/arith
  python -m trainer.data verify --data_dir=gs://BUCKET/arith

Reading and writing during training go through TensorFlow's own gs://
filesystem (trainer/cloud/storage.py); this module is for moving and
checking data sets, where the client library gives parallel uploads and
server-side CRC32C checksums.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import sys
from typing import Callable

from trainer import errors
from trainer.cloud import storage
from trainer.data import manifest
from trainer.data import problems

# What to tell a user without credentials.
NO_CREDENTIALS = (
    "no Google Cloud credentials found: run `gcloud auth application-default "
    "login` (or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key "
    "file)")


def _failure(message: str) -> errors.UserError:
  """A GCS problem in one line; upload and verify exit with status 1."""
  return errors.UserError(message, exit_status=1)


def make_client(need_project: bool = True):
  """A storage client; STORAGE_EMULATOR_HOST selects an emulator.

  need_project=False: for reading and writing objects alone, which need no
  project (a TPU VM's or a user's credentials may name none).
  """
  import google.auth.exceptions  # pylint: disable=g-import-not-at-top
  from google.cloud import storage  # pylint: disable=g-import-not-at-top
  try:
    return storage.Client() if need_project else storage.Client(project=None)
  except google.auth.exceptions.DefaultCredentialsError as e:
    raise _failure(NO_CREDENTIALS) from e
  except OSError as e:  # credentials without a project
    raise _failure(f"{e}: set GOOGLE_CLOUD_PROJECT or run `gcloud config set "
                   "project PROJECT`") from e


def describe(error: Exception, bucket: str, what: str) -> errors.UserError:
  """Maps a google.api_core error to a UserError naming bucket and remedy."""
  from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
  import google.auth.exceptions  # pylint: disable=g-import-not-at-top
  # One line: the client's message quotes the response body, newlines and all.
  message = " ".join((getattr(error, "message", None) or str(error)).split())
  if isinstance(error, exceptions.NotFound):
    return _failure(errors.missing_bucket(bucket, detail=message))
  if isinstance(error, exceptions.Forbidden):
    return _failure(errors.permission_denied(what, bucket, detail=message))
  if isinstance(error, (exceptions.Unauthorized,
                        google.auth.exceptions.GoogleAuthError)):
    return _failure(f"{NO_CREDENTIALS} ({message})")
  return _failure(f"{what}: {type(error).__name__}: {message}")


def api_errors() -> tuple[type[Exception], ...]:
  """What google-cloud-storage raises for a failed request (to `describe`)."""
  from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
  import google.auth.exceptions  # pylint: disable=g-import-not-at-top
  return (exceptions.GoogleAPIError, google.auth.exceptions.GoogleAuthError)


def _local_files(src: str) -> list[str]:
  if not os.path.isdir(src):
    raise _failure(f"--src={src} is not a local directory")
  names = sorted(n for n in os.listdir(src)
                 if os.path.isfile(os.path.join(src, n)) and
                 not storage.is_temp_name(n))
  if not names:
    raise _failure(f"--src={src} holds no files to upload")
  return names


def _file_crc32c(path: str) -> str:
  with open(path, "rb") as f:
    return problems.crc32c_base64(f.read())


@dataclasses.dataclass
class UploadResult:
  uploaded: list[str]
  skipped: list[str]  # already there with the same CRC32C
  bytes_uploaded: int


def upload(src: str, dst: str, num_threads: int = 8,
           show_progress: bool = True) -> UploadResult:
  """Uploads the files of `src` (a data set directory) under `dst`.

  Objects whose CRC32C already matches the local file are skipped; the
  manifest goes last, so a reader never finds a manifest before its shards.

  Raises:
    UserError: a bad argument, no credentials, a missing bucket, no
      permission, or a failed upload (named).
  """
  from trainer import progress  # pylint: disable=g-import-not-at-top
  bucket_name, prefix = storage.split_url(dst)
  if num_threads <= 0:
    raise _failure(f"--num_threads={num_threads} must be positive")
  names = _local_files(src)
  client = make_client()
  bucket = client.bucket(bucket_name)
  try:
    if not bucket.exists():
      raise _failure(f"--dst={dst}: " + errors.missing_bucket(bucket_name))
  except api_errors() as e:
    raise describe(e, bucket_name, dst) from e

  def object_name(name: str) -> str:
    return f"{prefix}/{name}" if prefix else name

  def upload_one(name: str) -> tuple[str, bool, int]:
    path = os.path.join(src, name)
    blob = bucket.get_blob(object_name(name))
    if blob is not None and blob.crc32c == _file_crc32c(path):
      return name, False, 0
    blob = bucket.blob(object_name(name))
    blob.upload_from_filename(path, checksum="crc32c")
    return name, True, os.path.getsize(path)

  last = [n for n in names if n == manifest.MANIFEST_NAME]
  shards = [n for n in names if n != manifest.MANIFEST_NAME]
  bar = progress.Progress(len(names), "files", desc=f"upload to {dst}") if (
      show_progress) else None
  result = UploadResult([], [], 0)

  def record(outcome: tuple[str, bool, int]) -> None:
    name, uploaded, size = outcome
    (result.uploaded if uploaded else result.skipped).append(name)
    result.bytes_uploaded += size
    if bar:
      bar.update(1, extra=f"{len(result.uploaded)} uploaded, "
                 f"{len(result.skipped)} unchanged, "
                 f"{result.bytes_uploaded / 1e6:,.1f} MB")

  try:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      for outcome in pool.map(upload_one, shards):
        record(outcome)
    for name in last:
      record(upload_one(name))
  except api_errors() as e:
    raise describe(e, bucket_name, dst) from e
  finally:
    if bar:
      bar.close()
  return result


def _list_gcs(
    data_dir: str) -> tuple[dict[str, manifest.FileInfo], Callable]:
  bucket_name, prefix = storage.split_url(data_dir)
  client = make_client()
  bucket = client.bucket(bucket_name)
  start = f"{prefix}/" if prefix else ""
  try:
    if not bucket.exists():
      raise _failure(f"--data_dir={data_dir}: " +
                     errors.missing_bucket(bucket_name))
    objects = {}
    for blob in client.list_blobs(bucket_name, prefix=start):
      name = blob.name[len(start):]
      if "/" not in name:  # this directory only
        objects[name] = manifest.FileInfo(blob.size, blob.crc32c)
  except api_errors() as e:
    raise describe(e, bucket_name, data_dir) from e

  def read(name: str) -> bytes:
    try:
      return bucket.blob(start + name).download_as_bytes()
    except api_errors() as e:
      raise describe(e, bucket_name, f"{data_dir}/{name}") from e

  return objects, read


def _list_local(
    data_dir: str) -> tuple[dict[str, manifest.FileInfo], Callable]:
  if not os.path.isdir(data_dir):
    raise _failure(f"--data_dir={data_dir} is not a directory")
  objects = {}
  for name in os.listdir(data_dir):
    path = os.path.join(data_dir, name)
    if os.path.isfile(path):
      objects[name] = manifest.FileInfo(os.path.getsize(path),
                                        _file_crc32c(path))

  def read(name: str) -> bytes:
    with open(os.path.join(data_dir, name), "rb") as f:
      return f.read()

  return objects, read


def verify(data_dir: str) -> tuple[list[str], int]:
  """Compares the manifest of `data_dir` (gs:// or local) with its files.

  Returns:
    One line per problem (empty: everything matches) and the number of
    shards checked; see `manifest.compare`.
  Raises:
    UserError: no manifest, a manifest of another format, or an access
      problem.
  """
  files, read = (_list_gcs if data_dir.startswith("gs://")
                 else _list_local)(data_dir)
  name = manifest.MANIFEST_NAME
  if name not in files:
    raise _failure(f"{data_dir} has no {name}: nothing to verify "
                   "against (generate the data with python -m trainer.data "
                   "generate)")
  listed = manifest.parse(read(name), f"{data_dir}/{name}")
  return manifest.compare(listed, files, data_dir)


def print_verify(data_dir: str) -> int:
  """The `verify` command: prints every problem; returns the exit status."""
  found, checked = verify(data_dir)
  for line in found:
    print(f"mismatch: {line}", file=sys.stderr)
  if found:
    print(f"error: {len(found)} problem(s) in {data_dir}", file=sys.stderr)
    return 1
  print(f"ok: {checked} shard(s) in {data_dir} match the manifest (count, "
        "size, CRC32C)", file=sys.stderr)
  return 0
