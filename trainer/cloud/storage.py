"""File access for local paths and gs:// URLs, through tf.io.gfile.

Every read and write of shards, manifests, checkpoints and exports goes
through here or through TensorFlow's own ops, so a path may always be a
`gs://bucket/...` URL as well as a local one. The path helpers (`bucket_of`,
`split_url`, `join`, temporary names) are here too.

TensorFlow is imported by the functions that touch files, not at import:
the path helpers serve modules that load without it (`manifest`, `gcs`, the
data generator), which the command lines import before TensorFlow so that a
bad flag is one quick line (trainer/cli.py import_tensorflow).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import uuid
from typing import Any

from trainer import errors


def _tf():
  """TensorFlow, imported on first use (see the module docstring)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


def _gfile():
  return _tf().io.gfile


def bucket_of(path: str) -> str | None:
  """The bucket of a gs:// path, else None."""
  if not path.startswith("gs://"):
    return None
  return path[len("gs://"):].split("/", 1)[0]


def split_url(url: str) -> tuple[str, str]:
  """gs://bucket/some/prefix -> ("bucket", "some/prefix").

  Raises:
    UserError: `url` is not a gs:// URL with a bucket.
  """
  bucket = bucket_of(url)
  if not bucket:
    raise errors.UserError(f"{url!r} is not a gs://bucket/path URL")
  return bucket, url[len("gs://") + len(bucket):].strip("/")


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
  tf = _tf()
  try:
    tf.io.gfile.exists(path)  # a denied bucket fails here (403)
    present = tf.io.gfile.isdir(f"gs://{bucket}")
  except tf.errors.PermissionDeniedError as e:
    raise errors.UserError(errors.permission_denied(path, bucket)) from e
  if not present:
    raise errors.UserError(f"{flag}={path}: " + errors.missing_bucket(
        bucket, detail="or this account cannot see it"))


def nearest_existing(path: str) -> tuple[str, list[str]]:
  """Where a local `path` that may not exist yet would be made: its deepest
  existing ancestor (or `path` itself), and the paths below it down to
  `path`, deepest first (the directories `os.makedirs(path)` would make).
  All absolute; the existing one may be a file."""
  path = os.path.abspath(path)
  missing = []
  while not os.path.exists(path):
    missing.append(path)
    path = os.path.dirname(path)
  return path, missing


def join(*parts: str) -> str:
  """Joins path parts with '/', which is right for local and gs:// paths."""
  return posixpath.join(*parts)


def exists(path: str) -> bool:
  return _gfile().exists(path)


def isdir(path: str) -> bool:
  return _gfile().isdir(path)


def makedirs(path: str) -> None:
  if bucket_of(path) is None:  # GCS has no directories to make
    _gfile().makedirs(path)


def glob(pattern: str) -> list[str]:
  """The paths matching `pattern`, sorted. A user's directory inside it
  must be escaped (`escape`, or `glob_in`): it is a path, not a pattern."""
  return sorted(_gfile().glob(pattern))


# What tf.io.gfile.glob treats as pattern syntax, local and gs:// alike
# (measured, TF 2.21: `*`, `?`, `[...]`, and a backslash escaping the next
# character). `*`, `?`, `[` become a one-character class matching only
# themselves; a backslash is escaped by a backslash (inside a class it is
# still an escape to TF).
_GLOB_SPECIAL = re.compile(r"([*?\[])")


def escape(path: str) -> str:
  """`path` as a glob pattern matching only itself, like Python's
  glob.escape: "runs/a[x]" -> "runs/a[[]x]" (a lone "]" is literal)."""
  return _GLOB_SPECIAL.sub(r"[\1]", path.replace("\\", "\\\\"))


def glob_in(directory: str, pattern: str) -> list[str]:
  """The paths in the literal `directory` whose names below it match
  `pattern`, sorted: `directory` may hold `[`, `*` or `?` (a user's
  --model_dir or --data_dir), never a pattern."""
  return glob(join(escape(directory), pattern))


def remove(path: str) -> None:
  _gfile().remove(path)


def size(path: str) -> int:
  return _gfile().stat(path).length


def mtime(path: str) -> float:
  """When `path` was last written, in seconds since the epoch."""
  return _gfile().stat(path).mtime_nsec / 1e9


def rename(source: str, target: str) -> None:
  """Renames a file (on GCS: a copy, then a delete); an existing `target`
  is an error."""
  _gfile().rename(source, target, overwrite=False)


def read_bytes(path: str) -> bytes:
  with _gfile().GFile(path, "rb") as f:
    return f.read()


def temp_name(path: str) -> str:
  """A temporary sibling of `path`; `is_temp_name` recognizes it."""
  return f"{path}.tmp-{uuid.uuid4().hex[:12]}"


def is_temp_name(path: str) -> bool:
  return ".tmp-" in posixpath.basename(path)


def write_atomic(path: str, data: bytes | str) -> None:
  """Writes `data` to a temporary name, then renames it to `path`.

  A failed write (a full disk, a lost connection) removes its temporary
  file; only a killed process leaves one, never a partial file under the
  final name.
  """
  temp = temp_name(path)
  mode = "wb" if isinstance(data, bytes) else "w"
  try:
    with _gfile().GFile(temp, mode) as f:
      f.write(data)
    _gfile().rename(temp, path, overwrite=True)
  except BaseException:
    try:
      _gfile().remove(temp)
    except Exception:  # pylint: disable=broad-except
      pass  # never written, or already renamed: the error says the rest
    raise


def read_json(path: str) -> Any:
  with _gfile().GFile(path, "r") as f:
    return json.load(f)


def write_json_atomic(path: str, value: Any) -> None:
  write_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")
