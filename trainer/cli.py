"""What the command-line entry points share: flag parsing and error lines.

Every bad input ends in one line `error: <cause>` on stderr and a non-zero
exit status (2 for bad flags or arguments), never a traceback.
"""

from __future__ import annotations

import atexit
import difflib
import importlib.util
import logging as std_logging
import os
import re
import sys
import tempfile
import time

from absl import flags
from absl import logging
from ml_collections import config_flags

from trainer import errors
from trainer import progress

# What `import tensorflow` writes to stderr before TensorFlow's C++ logging
# honours TF_CPP_MIN_LOG_LEVEL (TF 2.21: printed once per shared library).
_IMPORT_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|port\.cc:\d+\] oneDNN custom operations are on")


# (start, end) in time.perf_counter() seconds of the import that
# `import_tensorflow` made; None when it has not imported TensorFlow.
tensorflow_import_times: tuple[float, float] | None = None


# TensorFlow comes with an extra (setup.py): the package alone has none.
NO_TENSORFLOW = (
    "TensorFlow is not installed: install the package with the extra for "
    "this machine, pip install 'masked-attention-trainer[cpu]' (or [gpu] "
    "for NVIDIA GPUs, [tpu] on a TPU VM without TensorFlow; in a checkout: "
    "pip install -e '.[cpu]')")


def import_tensorflow():
  """Imports TensorFlow with its C++ start-up and log lines quieted.

  Unless the user set TF_CPP_MIN_LOG_LEVEL (0 brings every line back), it
  becomes 3, and the lines TensorFlow prints while it loads, before that
  setting applies, are dropped; anything else written then is passed on.
  Without TensorFlow installed, the process ends with one line naming the
  extras (exit 2). The import's start and end go to `tensorflow_import_times` (the trainer
  logs its start-up time from there). Returns the `tensorflow` module.
  """
  global tensorflow_import_times
  if sys.modules.get("tensorflow") is not None:
    return sys.modules["tensorflow"]
  start = time.perf_counter()
  try:
    tf = _import_tensorflow_quietly()
  except ModuleNotFoundError as e:
    if e.name != "tensorflow":
      raise
    sys.exit(fail(NO_TENSORFLOW))
  tensorflow_import_times = (start, time.perf_counter())
  return tf


def _import_tensorflow_quietly():
  # TensorFlow is imported here, never at the top of a module the entry
  # points load first: a bad flag is one line before its seconds-long import,
  # and a machine without it gets NO_TENSORFLOW, not a traceback.
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


# The configs shipped with the package: configs/ in a checkout, which
# trainer/configs links to, so an installed wheel holds them too.
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "configs")
CONFIG_DOCS = "docs/configuration.md"


def resolve_config_flag(argv: list[str]) -> list[str]:
  """`--config=configs/X.py` names the package's own file when no such file
  is in the working directory: an installed trainer (a Vertex AI job, a TPU
  VM, any directory after a wheel install) takes the same flag as a
  checkout.

  Raises:
    UserError: the --config file does not exist (with the near names).
  """
  resolved = []
  for arg in argv:
    name, sep, path = arg.partition("=")
    if name in ("--config", "-config") and sep:
      if path.startswith("configs/") and not os.path.exists(path):
        installed = os.path.join(CONFIGS_DIR, path[len("configs/"):])
        if os.path.exists(installed):
          arg = f"{name}={installed}"
          path = installed
      if not os.path.isfile(path):
        raise errors.UserError(_missing_config(path))
    resolved.append(arg)
  return resolved


def _missing_config(path: str) -> str:
  shipped = sorted(n for n in os.listdir(CONFIGS_DIR)
                   if n.endswith(".py") and not n.startswith("_"))
  stem = os.path.basename(path)
  guess = difflib.get_close_matches(
      stem if stem.endswith(".py") else stem + ".py", shipped, n=1,
      cutoff=0.75)
  hint = f"did you mean --config=configs/{guess[0]}? " if guess else ""
  return (f"--config={path}: no such file ({hint}the package's configs: "
          f"{', '.join('configs/' + n for n in shipped)})")


def config_fields(config, prefix: str = "") -> list[str]:
  """Every leaf field of a ConfigDict as a dotted path ("train.num_steps")."""
  fields = []
  for key, value in config.items():
    if hasattr(value, "items"):
      fields += config_fields(value, f"{prefix}{key}.")
    else:
      fields.append(f"{prefix}{key}")
  return fields


def _config_overrides(argv: list[str]) -> list[tuple[str, str]]:
  """[(the argument, its dotted field)] of each `--config.FIELD[=VALUE]`."""
  found = []
  for arg in argv:
    name = arg.partition("=")[0].lstrip("-")
    if name.startswith("config."):
      found.append((arg, name[len("config."):]))
  return found


def _load_config_file(path: str):
  """The ConfigDict of a config file's get_config(), as --config loads it
  (the file is run; configs import no TensorFlow)."""
  spec = importlib.util.spec_from_file_location("_checked_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _config_path(argv: list[str]) -> str:
  return next((a.partition("=")[2] for a in argv
               if a.partition("=")[0] in ("--config", "-config")),
              os.path.join(CONFIGS_DIR, "default.py"))


def _shown(path: str) -> str:
  """A config's path as users name it: configs/X.py for a shipped one."""
  if os.path.dirname(os.path.abspath(path)) == CONFIGS_DIR:
    return f"configs/{os.path.basename(path)}"
  return path


def explain_config_error(argv: list[str], error: Exception) -> str:
  """One line for a failed --config load or override: the field that does
  not exist (with the nearest ones), else the config file's own error,
  else the override's error; never the exception's repr."""
  try:
    path = _config_path(resolve_config_flag(argv))
    config = _load_config_file(path)
  except errors.UserError as e:  # no such file
    return str(e)
  except Exception as e:  # pylint: disable=broad-except
    return (f"cannot load --config={_shown(path)}: {type(e).__name__}: "
            f"{' '.join(str(e).split())}")
  fields = config_fields(config)
  nodes = {f.rsplit(".", n)[0]
           for f in fields for n in range(1, f.count(".") + 1)}
  for arg, field in _config_overrides(argv):
    if field not in fields and field not in nodes:
      guess = difflib.get_close_matches(field, fields, n=1, cutoff=0.6)
      hint = f"did you mean --config.{guess[0]}? " if guess else ""
      return (f"{arg.partition('=')[0]}: no such config field in "
              f"{_shown(path)} "
              f"({hint}every field: {CONFIG_DOCS}, or --print_config)")
  detail = " ".join(str(error).split()) or type(error).__name__
  if isinstance(error, flags.Error):
    return f"{detail} (see --helpfull; config fields: {CONFIG_DOCS})"
  return f"bad --config override ({type(error).__name__}): {detail}"


def define_config_file(name: str, default: str, help_text: str):
  """config_flags.DEFINE_config_file(lock_config=True), but a field that
  does not exist is one error line (exit 2): ml_collections resolves the
  default config's --config.* overrides from sys.argv here, at definition
  time, not at parse time."""
  try:
    return config_flags.DEFINE_config_file(name, default, help_text,
                                           lock_config=True)
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(fail(explain_config_error(sys.argv, e)))


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags parser for app.run: a bad flag, a missing config file or a
  config field that does not exist is one error line, exit 2, before
  TensorFlow loads (the config is loaded and overridden here)."""
  try:
    argv = resolve_config_flag(argv)
  except errors.UserError as e:
    sys.exit(fail(str(e), status=e.exit_status))
  try:
    rest = flags.FLAGS(argv)
    if "config" in flags.FLAGS:
      flags.FLAGS.config.keys()  # a default config loads lazily: now
  except Exception as e:  # pylint: disable=broad-except
    # Beside flags.Error, only the --config flag raises here: a field that
    # does not exist (AttributeError, KeyError), a config file that fails
    # to load (whatever its code raises), a value of the wrong type.
    if isinstance(e, flags.Error) and not _config_overrides(argv):
      sys.exit(fail(f"{e} (see --helpfull)"))
    sys.exit(fail(explain_config_error(argv, e)))
  return rest
