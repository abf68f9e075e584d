"""The one error type for what a user can fix, and the wording of I/O errors.

Every module raises `UserError` where the cause is something a user can
change (a flag, a file, a path, a config field, a bucket, a worker to
restart); its message is one line naming the cause and the way out. Each
command-line entry point catches it once and prints `error: <message>` with
the exit status it carries. No TensorFlow here.
"""

from __future__ import annotations

import re


class UserError(Exception):
  """A problem the user can fix, said in one line.

  Attributes:
    exit_status: 2 for bad input (flags, config, data, paths), 1 for a run
      that failed on the way (a lost worker, a GCS transfer).
  """

  def __init__(self, message: str, exit_status: int = 2):
    super().__init__(message)
    self.exit_status = exit_status


def permission_denied(what: str, bucket: str, detail: str = "") -> str:
  """The one-line remedy for a GCS 403, shared by every command."""
  return (f"permission denied on {what}{f' ({detail})' if detail else ''}: "
          "the account in use (`gcloud auth list`) needs "
          f"roles/storage.objectAdmin on gs://{bucket}")


def missing_bucket(bucket: str, detail: str = "") -> str:
  """The one-line remedy for a GCS bucket that does not exist."""
  return (f"bucket gs://{bucket} does not exist{f' ({detail})' if detail else ''}"
          f": create it with `gcloud storage buckets create gs://{bucket}`, "
          "or fix the path")


# What TensorFlow adds to an op's message to say where in the graph, not
# what: {{function_node ...}}, [[{{node ...}}]], and [Op:...] with the rest
# of its line.
_GRAPH_DECORATIONS = re.compile(
    r"\{\{function_node [^}]*\}\}\s*|\s*\[\[[^\]]*\]\]|\s*\[Op:[^\]\n]*\][^\n]*")


def strip_graph_decorations(message: str) -> str:
  """TensorFlow's error message without its graph decorations."""
  return _GRAPH_DECORATIONS.sub("", message)


def first_line(error: BaseException) -> str:
  """The first non-empty line of an error's message, without TensorFlow's
  graph decorations."""
  message = strip_graph_decorations(
      getattr(error, "message", None) or str(error))
  return next((l.strip() for l in message.splitlines() if l.strip()), "")


def describe_io_error(error: BaseException,
                      resume_command: str = "the same command",
                      full_disk_remedy: str | None = None) -> str:
  """One line for a file system error (local or gs://), with a remedy for
  the GCS ones: permission denied, missing credentials; a full disk names
  `resume_command` as the way to resume, or says `full_disk_remedy`
  (for a command that writes no checkpoints)."""
  message = strip_graph_decorations(
      getattr(error, "message", None) or str(error))
  lines = [l.strip() for l in message.strip().splitlines() if l.strip()]
  # TF's gs:// errors end with "when <doing> gs://bucket/object".
  where = next((l for l in reversed(lines) if "gs://" in l), "")
  kind = type(error).__name__
  if kind == "PermissionDeniedError" and "gs://" in where:
    path = where[where.index("gs://"):].split()[0]
    bucket = path[len("gs://"):].split("/", 1)[0]
    return permission_denied(path, bucket, detail=where)
  if kind == "UnauthenticatedError" or "authentication bearer token" in message:
    return ("no Google Cloud credentials for gs:// (run `gcloud auth "
            "application-default login`, or set "
            f"GOOGLE_APPLICATION_CREDENTIALS): {lines[0] if lines else kind}")
  first = lines[0] if lines else ""
  if "No space left on device" in message:
    found = re.search(r"(?:^|[\s'\"])((?:gs:/)?/[^\s;'\"]+)", message)
    path = found.group(1) if found else ""
    if full_disk_remedy:
      return (f"no space left on device{f' writing {path}' if path else ''}"
              f": {full_disk_remedy}")
    return (f"no space left on device{f' writing {path}' if path else ''}: "
            "free some space or choose another --model_dir; the checkpoints "
            f"already saved are complete, and {resume_command} resumes from "
            "the latest")
  if where and where != first:
    first = f"{first} ... {where}"
  return f"{kind}: {first}"
