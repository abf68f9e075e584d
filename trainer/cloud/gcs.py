"""The google-cloud-storage client, and its errors in one line.

Reading and writing during training go through TensorFlow's own gs://
filesystem (trainer/cloud/storage.py); the client is for moving and checking
data sets (trainer/data/transfer.py), where it gives parallel uploads and
server-side CRC32C checksums, and for run.lock's generation preconditions
(trainer/training/run_lock.py).

The client library and google.api_core are imported on first use (`_client`,
`exceptions`): their import takes about a second, which every command and
every run with local directories would pay at start for nothing.
"""

from __future__ import annotations

import google.auth.exceptions

from trainer import errors

# What to tell a user without credentials.
NO_CREDENTIALS = (
    "no Google Cloud credentials found: run `gcloud auth application-default "
    "login` (or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key "
    "file)")


def failure(message: str) -> errors.UserError:
  """A GCS problem in one line; upload and verify exit with status 1."""
  return errors.UserError(message, exit_status=1)


def make_client(need_project: bool = True):
  """A storage client; STORAGE_EMULATOR_HOST selects an emulator.

  need_project=False: for reading and writing objects alone, which need no
  project (a TPU VM's or a user's credentials may name none).
  """
  from google.cloud import storage  # pylint: disable=g-import-not-at-top
  try:
    return storage.Client() if need_project else storage.Client(project=None)
  except google.auth.exceptions.DefaultCredentialsError as e:
    raise failure(NO_CREDENTIALS) from e
  except OSError as e:  # credentials without a project
    raise failure(f"{e}: set GOOGLE_CLOUD_PROJECT or run `gcloud config set "
                   "project PROJECT`") from e


def describe(error: Exception, bucket: str, what: str) -> errors.UserError:
  """Maps a google.api_core error to a UserError naming bucket and remedy."""
  api = exceptions()
  # One line: the client's message quotes the response body, newlines and all.
  message = " ".join((getattr(error, "message", None) or str(error)).split())
  if isinstance(error, api.NotFound):
    return failure(errors.missing_bucket(bucket, detail=message))
  if isinstance(error, api.Forbidden):
    return failure(errors.permission_denied(what, bucket, detail=message))
  if isinstance(error, (api.Unauthorized,
                        google.auth.exceptions.GoogleAuthError)):
    return failure(f"{NO_CREDENTIALS} ({message})")
  return failure(f"{what}: {type(error).__name__}: {message}")


def api_errors() -> tuple[type[Exception], ...]:
  """What google-cloud-storage raises for a failed request (to `describe`)."""
  return (exceptions().GoogleAPIError, google.auth.exceptions.GoogleAuthError)


def exceptions():
  """google.api_core.exceptions, imported on first use (see the module)."""
  from google.api_core import exceptions as api  # pylint: disable=g-import-not-at-top
  return api
