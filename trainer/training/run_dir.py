"""Where a run writes: one --model_dir, or the directories Vertex AI names.

With `--model_dir=DIR` everything goes under DIR:

  DIR/checkpoints/     checkpoints (a re-run resumes from the latest)
  DIR/train/, eval/    TensorBoard scalars
  DIR/export/          the SavedModel
  DIR/best/            the SavedModel of the best evaluation
                       (config.train.keep_best; its checkpoint:
                       DIR/checkpoints/best/)
  DIR/config.json      the resolved config; metrics.json: the final metrics

A Vertex AI custom job (a `baseOutputDirectory`) instead sets AIP_MODEL_DIR,
AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR; without --model_dir the run
writes the SavedModel into AIP_MODEL_DIR (where Vertex AI looks for it), the
config and metrics files beside it, checkpoints into AIP_CHECKPOINT_DIR and
the TensorBoard logs into AIP_TENSORBOARD_LOG_DIR; the best evaluation's
SavedModel goes beside AIP_MODEL_DIR, in best/ (inside it only when
AIP_MODEL_DIR is a bucket's root).
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import math
import os
import posixpath
from typing import Mapping

from absl import logging

from trainer import errors
from trainer.cloud import storage  # imports TensorFlow on first file access

# No TensorFlow at import: the entry point (trainer/task.py) imports this
# module before TensorFlow loads (see check_compatible).

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
BEST_EXPORT_SUBDIR = "best"  # the best evaluation's SavedModel (keep_best)
# Vertex AI's variables (set from a custom job's baseOutputDirectory).
VERTEX_ENV = ("AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR")


@dataclasses.dataclass(frozen=True)
class RunDirs:
  """The directories of one run (local paths or gs:// URLs)."""
  checkpoints: str
  logs: str  # TensorBoard: train/ and eval/ below it
  export: str  # the SavedModel
  files: str  # config.json and metrics.json
  best_export: str  # the best evaluation's SavedModel (config.train.keep_best)
  # Where these came from, for messages: ((flag or variable, value), ...).
  origin: tuple[tuple[str, str], ...] = ()

  @classmethod
  def under(cls, model_dir: str) -> RunDirs:
    """Every output under one directory (--model_dir)."""
    return cls(checkpoints=posixpath.join(model_dir, "checkpoints"),
               logs=model_dir, export=posixpath.join(model_dir, "export"),
               files=model_dir,
               best_export=posixpath.join(model_dir, BEST_EXPORT_SUBDIR),
               origin=(("--model_dir", model_dir),))

  @classmethod
  def from_vertex_env(cls, environ: Mapping[str, str] = os.environ
                      ) -> RunDirs | None:
    """Vertex AI's directories, None when AIP_MODEL_DIR is not set.

    A job that sets AIP_MODEL_DIR alone gets checkpoints and logs beside the
    SavedModel's directory rather than inside it.
    """
    model = environ.get("AIP_MODEL_DIR", "").rstrip("/")
    if not model:
      return None
    parent = posixpath.dirname(model)
    if parent.endswith(":") or not parent:  # AIP_MODEL_DIR=gs://bucket
      parent = model
    checkpoints = environ.get("AIP_CHECKPOINT_DIR", "").rstrip("/") or (
        posixpath.join(parent, "checkpoints"))
    logs = environ.get("AIP_TENSORBOARD_LOG_DIR", "").rstrip("/") or (
        posixpath.join(parent, "logs"))
    return cls(checkpoints=checkpoints, logs=logs, export=model, files=model,
               best_export=posixpath.join(parent, BEST_EXPORT_SUBDIR),
               origin=tuple((name, environ[name]) for name in VERTEX_ENV
                            if environ.get(name)))

  def all(self) -> list[str]:
    """Each distinct directory once, in a fixed order (best_export aside:
    it is below one of them or beside AIP_MODEL_DIR, and only with
    config.train.keep_best)."""
    return list(dict.fromkeys((self.checkpoints, self.logs, self.export,
                               self.files)))

  def describe(self) -> str:
    """One line naming where each output goes."""
    return (f"checkpoints {self.checkpoints}; TensorBoard {self.logs} "
            f"(train/, eval/); SavedModel {self.export}; config and metrics "
            f"in {self.files}")


def check_buckets(dirs: RunDirs) -> None:
  """Each gs:// run directory's bucket exists and answers (every worker
  reads them); UserError naming the flag or variable otherwise."""
  for name, path in dirs.origin:
    storage.check_bucket(path, name)


# What TensorFlow's checkpoint code reads as glob syntax in a checkpoint's
# path (measured, TF 2.21): a directory holding `[` or a backslash has no
# checkpoint that tf.train.load_checkpoint or restore can find, and
# CheckpointManager deletes old checkpoints by a glob of their prefix, so
# `*` or `?` would delete the matching checkpoints of other directories.
_PATTERN_CHARACTERS = "[*?\\"


def check_literal(dirs: RunDirs) -> None:
  """The run directories hold no character TensorFlow's checkpoint code
  takes for a pattern (a run there could never be resumed).

  Raises:
    UserError: naming the flag or variable, the character and the way out.
  """
  for name, value in dirs.origin or (("the run directory", dirs.checkpoints),):
    odd = sorted({c for c in value if c in _PATTERN_CHARACTERS})
    if odd:
      raise errors.UserError(
          f"{name}={value}: a run directory cannot hold "
          f"{' '.join(repr(c) for c in odd)}: TensorFlow's checkpoint code "
          "reads its paths as glob patterns, so the run could never be "
          "resumed (and `*`/`?` would delete other directories' checkpoints);"
          f" choose a {name} without [ * ? or \\")


def check_writable(dirs: RunDirs) -> None:
  """Each local run directory is a directory this user can write, or can be
  made in one: checked before anything is built. (gs:// directories are
  checked by `storage.check_bucket`; a 403 is named when it happens.)

  Raises:
    UserError: naming the flag or variable, the path and the way out.
  """
  for path in dirs.all():
    if "://" in path:
      continue
    name, value = next(((n, v) for n, v in dirs.origin
                        if path.startswith(v.rstrip("/"))),
                       ("the run directory", path))
    existing, _ = storage.nearest_existing(path)
    if not os.path.isdir(existing):
      raise errors.UserError(
          f"{name}={value}: {existing} is a file, not a directory: choose "
          f"another {name}")
    if not os.access(existing, os.W_OK | os.X_OK):
      raise errors.UserError(
          f"{name}={value}: user {_user()} cannot write in "
          f"{existing} (permission denied or a read-only file system): fix "
          f"its permissions or choose another {name}")


def _user() -> str:
  try:
    return getpass.getuser()
  except (KeyError, OSError):  # a uid without a name (containers)
    return f"uid {os.getuid()}"


def check_compatible(dirs: RunDirs, config) -> None:
  """A run directory holding a checkpoint of another model shape is an
  error naming the fields that differ, not a crash at restore."""
  # Here, not at the top: checkpoints imports TensorFlow, and trainer.task
  # loads this module for its TF-free --help, --print_config and flag errors.
  from trainer.training import checkpoints  # pylint: disable=g-import-not-at-top
  path = posixpath.join(dirs.files, CONFIG_FILE)
  if not storage.exists(path):
    return
  try:
    saved_config = storage.read_json(path)
    saved = saved_config["model"]
    saved_precision = saved_config.get("train", {}).get("mixed_precision")
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    # Damaged: the restore checks.
    logging.warning("%s is not a config this trainer wrote (%s): the "
                    "checkpoint's model shape is checked at restore instead; "
                    "the file is rewritten", path, errors.first_line(e))
    return
  precision = config.train.mixed_precision
  if (saved_precision is not None and saved_precision != precision and
      "float16" in (saved_precision, precision) and
      checkpoints.any_in(dirs.checkpoints)):
    # float16 wraps the optimizer in a LossScaleOptimizer: its checkpoint
    # holds other objects, and a restore across fails on a dtype.
    raise errors.UserError(
        f"the checkpoint in {dirs.checkpoints} was trained with "
        f"config.train.mixed_precision={saved_precision!r}, not "
        f"{precision!r} (float16 checkpoints a loss-scale optimizer, the "
        "others do not): resume with --config.train.mixed_precision="
        f"{saved_precision}, or use another --model_dir, or --start_over "
        "(the old checkpoints are moved aside)")
  current = config.model.to_dict()
  differing = sorted(k for k in set(saved) | set(current)
                     if saved.get(k) != current.get(k))
  if differing and checkpoints.any_in(dirs.checkpoints):
    details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs config "
                        f"{current.get(k)!r}" for k in differing)
    raise errors.UserError(
        f"the checkpoint in {dirs.checkpoints} is of another model shape "
        f"({details}): use another --model_dir or the checkpoint's config, "
        "or --start_over (the old checkpoints are moved aside)")


def _flat(tree: Mapping, prefix: str = "") -> dict:
  """{"train.num_steps": 15000, ...} of a nested dict."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _as_json(config) -> dict:
  return json.loads(config.to_json_best_effort())


def _as_record(config, data: Mapping | None) -> dict:
  """config.json's content: the resolved config, and under "data" beside
  config.data's fields the data set's identity (feeds.data_identity)."""
  record = _as_json(config)
  if data:
    record["data"] = {**record.get("data", {}), **data}
  return record


def config_changes(dirs: RunDirs, config, data: Mapping | None = None
                   ) -> list[tuple[str, object, object]]:
  """[(field, the saved value, the config's)] of each field that differs
  from the config.json in dirs.files (a resumed run's changes), sorted;
  [] when there is no readable config.json. `data`: the data set's identity
  (data.dir, data.manifest_sha256), compared like a field."""
  path = posixpath.join(dirs.files, CONFIG_FILE)
  if not storage.exists(path):
    return []
  try:
    saved = _flat(storage.read_json(path))
  except (ValueError, TypeError, AttributeError):  # damaged: rewritten
    return []
  current = _flat(_as_record(config, data))
  return [(k, saved.get(k), current.get(k))
          for k in sorted(set(saved) | set(current))
          if saved.get(k) != current.get(k)]


def describe_changes(changes: list[tuple[str, object, object]]) -> str:
  """"train.learning_rate 0.003 -> 0.001, ..." (json spelling of values)."""
  return ", ".join(f"{field} {json.dumps(old)} -> {json.dumps(new)}"
                   for field, old, new in changes)


def kept_config_name(step: int) -> str:
  """The name a changed resume keeps the config it replaces under: the
  config that trained the steps up to `step`."""
  return f"config.until-step-{step}.json"


def write_config(dirs: RunDirs, config, replaced_at: int | None = None,
                 data: Mapping | None = None) -> None:
  """The resolved config, as JSON, in dirs.files (config.json), with the
  data set's identity `data` under "data" (data.dir, data.manifest_sha256).

  Args:
    replaced_at: a resumed run whose config changed: the step it resumed
      from. The config.json it replaces is first kept as
      config.until-step-<step>.json, unless that file exists (an earlier
      resume from the same checkpoint, which may have failed, kept the
      config that trained it), so every config a run directory's
      checkpoints were trained with stays there.
  """
  storage.makedirs(dirs.files)  # the others are made by what writes there
  path = posixpath.join(dirs.files, CONFIG_FILE)
  kept = posixpath.join(dirs.files, kept_config_name(replaced_at or 0))
  if (replaced_at is not None and storage.exists(path)
      and not storage.exists(kept)):
    storage.write_atomic(kept, storage.read_bytes(path))
  storage.write_atomic(path, strict_json(_as_record(config, data),
                                         sort_keys=True))


def write_metrics(dirs: RunDirs, metrics: dict) -> None:
  """The final metrics, as JSON, in dirs.files (metrics.json)."""
  storage.write_atomic(posixpath.join(dirs.files, METRICS_FILE),
                       strict_json(metrics))


def read_metrics(dirs: RunDirs) -> dict | None:
  """metrics.json of dirs.files, or None when it is missing or is not a
  JSON object (an interrupted or foreign write: the run is not finished)."""
  path = posixpath.join(dirs.files, METRICS_FILE)
  if not storage.exists(path):
    return None
  try:
    metrics = storage.read_json(path)
  except ValueError:
    return None
  return metrics if isinstance(metrics, dict) else None


def strict_json(value, sort_keys: bool = False) -> str:
  """`value` as strict JSON (RFC 8259: no NaN or Infinity), indented.

  A non-finite float becomes null, and a top-level "non_finite" object
  says which, by dotted path: {"eval.loss": "nan"}.
  """
  non_finite = {}

  def clean(item, path):
    if isinstance(item, float) and not math.isfinite(item):
      non_finite[path] = str(item)
      return None
    if isinstance(item, dict):
      return {k: clean(v, f"{path}.{k}" if path else str(k))
              for k, v in item.items()}
    if isinstance(item, (list, tuple)):
      return [clean(v, f"{path}[{i}]") for i, v in enumerate(item)]
    return item

  cleaned = clean(value, "")
  if non_finite and isinstance(cleaned, dict):
    cleaned["non_finite"] = non_finite
  return json.dumps(cleaned, indent=2, sort_keys=sort_keys,
                    allow_nan=False) + "\n"


@dataclasses.dataclass(frozen=True)
class Paths:
  """Where this worker restores from and writes to.

  Every worker restores from the chief's directories (`read`); the chief
  writes there too, any other worker writes the same files below a
  temporary directory (`write`) that it deletes at the end: every worker
  must take part in a save, only one may keep it.
  """
  read: RunDirs
  write: RunDirs
  is_chief: bool

  @classmethod
  def for_worker(cls, dirs: RunDirs, is_chief: bool,
                 temp_dir: str | None) -> Paths:
    if is_chief:
      return cls(read=dirs, write=dirs, is_chief=True)
    return cls(read=dirs, write=RunDirs.under(temp_dir), is_chief=False)
