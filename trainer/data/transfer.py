"""Uploading a data set to GCS and verifying one (google-cloud-storage).

  python -m trainer.data upload --src=/tmp/arith --dst=gs://BUCKET/arith
  python -m trainer.data verify --data_dir=gs://BUCKET/arith

The client gives parallel uploads and server-side CRC32C checksums; the
files are compared with the data set's manifest.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import sys
from typing import Callable

from trainer import errors
from trainer import progress
from trainer.cloud import gcs
from trainer.cloud import storage
from trainer.data import manifest
from trainer.data import schema


def _local_files(src: str) -> list[str]:
  if not os.path.isdir(src):
    raise gcs.failure(f"--src={src} is not a local directory")
  names = sorted(n for n in os.listdir(src)
                 if os.path.isfile(os.path.join(src, n)) and
                 not storage.is_temp_name(n))
  if not names:
    raise gcs.failure(f"--src={src} holds no files to upload")
  return names


def _file_crc32c(path: str) -> str:
  with open(path, "rb") as f:
    return schema.crc32c_base64(f.read())


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
  bucket_name, prefix = storage.split_url(dst)
  if num_threads <= 0:
    raise gcs.failure(f"--num_threads={num_threads} must be positive")
  names = _local_files(src)
  client = gcs.make_client()
  bucket = client.bucket(bucket_name)
  try:
    if not bucket.exists():
      raise gcs.failure(f"--dst={dst}: " + errors.missing_bucket(bucket_name))
  except gcs.api_errors() as e:
    raise gcs.describe(e, bucket_name, dst) from e

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
  except gcs.api_errors() as e:
    raise gcs.describe(e, bucket_name, dst) from e
  finally:
    if bar:
      bar.close()
  return result


def _list_gcs(
    data_dir: str) -> tuple[dict[str, manifest.FileInfo], Callable]:
  bucket_name, prefix = storage.split_url(data_dir)
  client = gcs.make_client()
  bucket = client.bucket(bucket_name)
  start = f"{prefix}/" if prefix else ""
  try:
    if not bucket.exists():
      raise gcs.failure(f"--data_dir={data_dir}: " +
                     errors.missing_bucket(bucket_name))
    objects = {}
    for blob in client.list_blobs(bucket_name, prefix=start):
      name = blob.name[len(start):]
      if "/" not in name:  # this directory only
        objects[name] = manifest.FileInfo(blob.size, blob.crc32c)
  except gcs.api_errors() as e:
    raise gcs.describe(e, bucket_name, data_dir) from e

  def read(name: str) -> bytes:
    try:
      return bucket.blob(start + name).download_as_bytes()
    except gcs.api_errors() as e:
      raise gcs.describe(e, bucket_name, f"{data_dir}/{name}") from e

  return objects, read


def _list_local(
    data_dir: str) -> tuple[dict[str, manifest.FileInfo], Callable]:
  if not os.path.isdir(data_dir):
    raise gcs.failure(f"--data_dir={data_dir} is not a directory")
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
    raise gcs.failure(f"{data_dir} has no {name}: nothing to verify "
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
