"""What the command-line entry points share: flag parsing and error lines.

Every bad input ends in one line `error: <cause>` on stderr and a non-zero
exit status (2 for bad flags or arguments), never a traceback.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import tempfile
import time

from absl import flags

from trainer import progress

# What `import tensorflow` writes to stderr before TensorFlow's C++ logging
# honours TF_CPP_MIN_LOG_LEVEL (TF 2.21: printed once per shared library).
_IMPORT_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|port\.cc:\d+\] oneDNN custom operations are on")


# (start, end) in time.perf_counter() seconds of the import that
# `import_tensorflow` made; None when it has not imported TensorFlow.
tensorflow_import_times: tuple[float, float] | None = None


def import_tensorflow():
  """Imports TensorFlow with its C++ start-up and log lines quieted.

  Unless the user set TF_CPP_MIN_LOG_LEVEL (0 brings every line back), it
  becomes 3, and the lines TensorFlow prints while it loads, before that
  setting applies, are dropped; anything else written then is passed on.
  The import's start and end go to `tensorflow_import_times` (the trainer
  logs its start-up time from there). Returns the `tensorflow` module.
  """
  global tensorflow_import_times
  if "tensorflow" in sys.modules:
    return sys.modules["tensorflow"]
  start = time.perf_counter()
  tf = _import_tensorflow_quietly()
  tensorflow_import_times = (start, time.perf_counter())
  return tf


def _import_tensorflow_quietly():
  if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf
  os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
  sys.stderr.flush()
  saved_stderr = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    finally:
      os.dup2(saved_stderr, 2)
      os.close(saved_stderr)
      captured.seek(0)
      for line in captured.read().decode(errors="replace").splitlines(True):
        if not _IMPORT_NOISE.search(line):
          sys.stderr.write(line)
      sys.stderr.flush()
  return tf


def log_plainly() -> None:
  """The run's own lines (absl logging.info) print as they are, on stderr,
  without absl's prefix, and above a progress bar drawn on the terminal
  (progress.above); TensorFlow's Python INFO lines do not print.
  An explicit `--verbosity` still wins."""
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  handler = logging.get_absl_handler()
  writer = handler.python_handler  # the logging.StreamHandler that writes

  class AboveProgress(std_logging.Formatter):
    """The message and its newline (the handler adds none), put above a
    progress bar drawn on the stream the handler writes to."""

    def format(self, record):
      return progress.above(super().format(record) + "\n", writer.stream)

  writer.setFormatter(AboveProgress("%(message)s"))
  writer.terminator = ""  # the formatter ends the line, before the bar
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)
    # TensorFlow logs INFO lines through absl too (SavedModel writing,
    # sharding callbacks): below WARNING, only this package's lines pass.
    package_dir = os.path.dirname(os.path.abspath(__file__)) + os.sep
    handler.addFilter(lambda record: record.levelno >= std_logging.WARNING
                      or record.pathname.startswith(package_dir))
  std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)


def exit_now(status: int) -> None:
  """Runs the atexit handlers (autograph deletes its generated files in
  TMPDIR there), flushes the console, then ends the process with `status`
  without the rest of Python's teardown (no destructors)."""
  atexit._run_exitfuncs()  # pylint: disable=protected-access
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access


def fail(message: str, status: int = 2) -> int:
  """Prints `error: message` on stderr; returns the exit status to use."""
  print(f"error: {message}", file=sys.stderr)
  return status


def resolve_config_flag(argv: list[str]) -> list[str]:
  """`--config=configs/X.py` names the installed `configs` package's file
  when no such file is in the working directory: an installed trainer (a
  Vertex AI job, a TPU VM) takes the same flag as a checkout."""
  resolved = []
  for arg in argv:
    name, sep, path = arg.partition("=")
    if (name in ("--config", "-config") and sep and path.startswith(
        "configs/") and not os.path.exists(path)):
      import configs  # pylint: disable=g-import-not-at-top
      installed = os.path.join(os.path.dirname(configs.__file__),
                               path[len("configs/"):])
      if os.path.exists(installed):
        arg = f"{name}={installed}"
    resolved.append(arg)
  return resolved


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags parser for app.run: a bad flag is one error line, exit 2."""
  try:
    return flags.FLAGS(resolve_config_flag(argv))
  except flags.Error as e:
    sys.exit(fail(f"{e} (see --helpfull)"))
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    # ml_collections' --config flags raise these: an unknown field
    # (AttributeError), a missing config file, a value of the wrong type.
    sys.exit(fail(f"cannot parse the flags: {type(e).__name__}: {e} "
                  "(see --helpfull)"))
