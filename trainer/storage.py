"""File access for local paths and gs:// URLs, through tf.io.gfile.

Every read and write of shards, manifests, checkpoints and exports goes
through here or through TensorFlow's own ops, so a path may always be a
`gs://bucket/...` URL as well as a local one.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from typing import Any

import tensorflow as tf

from trainer import errors

gfile = tf.io.gfile


def bucket_of(path: str) -> str | None:
  """The bucket of a gs:// path, else None."""
  if not path.startswith("gs://"):
    return None
  return path[len("gs://"):].split("/", 1)[0]


def check_bucket(path: str, flag: str) -> None:
  """For a gs:// path: its bucket exists and this account may read it.

  Checked up front because TensorFlow's gs:// filesystem answers a missing
  bucket in confusing ways (measured: `makedirs` under a missing bucket
  retries without end; a glob fails with a bare HTTP 404).

  Raises:
    UserError: naming the bucket or object and what to do.
  """
  bucket = bucket_of(path)
  if bucket is None:
    return
  try:
    gfile.exists(path)  # a denied bucket fails here (403)
    present = gfile.isdir(f"gs://{bucket}")
  except tf.errors.PermissionDeniedError as e:
    raise errors.UserError(errors.permission_denied(path, bucket)) from e
  if not present:
    raise errors.UserError(f"{flag}={path}: " + errors.missing_bucket(
        bucket, detail="or this account cannot see it"))


def join(*parts: str) -> str:
  """Joins path parts with '/', which is right for local and gs:// paths."""
  return posixpath.join(*parts)


def exists(path: str) -> bool:
  return gfile.exists(path)


def isdir(path: str) -> bool:
  return gfile.isdir(path)


def makedirs(path: str) -> None:
  if bucket_of(path) is None:  # GCS has no directories to make
    gfile.makedirs(path)


def glob(pattern: str) -> list[str]:
  return sorted(gfile.glob(pattern))


def remove(path: str) -> None:
  gfile.remove(path)


def size(path: str) -> int:
  return gfile.stat(path).length


def read_bytes(path: str) -> bytes:
  with gfile.GFile(path, "rb") as f:
    return f.read()


def temp_name(path: str) -> str:
  """A temporary sibling of `path`; `is_temp_name` recognizes it."""
  return f"{path}.tmp-{uuid.uuid4().hex[:12]}"


def is_temp_name(path: str) -> bool:
  return ".tmp-" in posixpath.basename(path)


def write_atomic(path: str, data: bytes | str) -> None:
  """Writes `data` to a temporary name, then renames it to `path`.

  An interrupted write leaves at most a temporary file, never a partial file
  under the final name.
  """
  temp = temp_name(path)
  mode = "wb" if isinstance(data, bytes) else "w"
  with gfile.GFile(temp, mode) as f:
    f.write(data)
  gfile.rename(temp, path, overwrite=True)


def read_json(path: str) -> Any:
  with gfile.GFile(path, "r") as f:
    return json.load(f)


def write_json_atomic(path: str, value: Any) -> None:
  write_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")
