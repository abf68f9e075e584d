"""Config checks, before any graph is built: each bad field is one line.

Also where the config's data lives: its shard patterns resolved against
--data_dir.
"""

from __future__ import annotations

import math
import posixpath

import ml_collections

from trainer import errors
from trainer.data import vocab
from trainer.training import run_dir

TPU_BATCH_MULTIPLE = 8  # per-core batch: TPU matrix units tile by 8
# config.train.mixed_precision -> the Keras policy.
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16",
            "float16": "mixed_float16"}


def validate_config(config: ml_collections.ConfigDict, num_replicas: int,
                    on_tpu: bool = False) -> None:
  """Raises UserError naming the first bad field."""
  train = config.train
  if config.model.vocab_size != vocab.VOCAB_SIZE:
    raise errors.UserError(
        f"config.model.vocab_size={config.model.vocab_size} but the "
        f"vocabulary has {vocab.VOCAB_SIZE} tokens")
  for section, name in (("model", "hidden_size"), ("model", "dense_size"),
                        ("model", "len_max_input"), ("model", "num_heads"),
                        ("model", "num_layers"),
                        ("train", "global_batch_size"), ("train", "num_steps"),
                        ("train", "steps_per_loop"),
                        ("train", "keep_checkpoints")):
    value = config[section][name]
    if value <= 0:
      raise errors.UserError(
          f"config.{section}.{name}={value} must be positive")
  model = config.model
  if model.hidden_size % model.num_heads:
    raise errors.UserError(
        f"config.model.num_heads={model.num_heads} does not divide "
        f"config.model.hidden_size={model.hidden_size}")
  if model.ffn_size < 0:
    raise errors.UserError(f"config.model.ffn_size={model.ffn_size} must be "
                           ">= 0 (0: the seed's bare attention layers)")
  if not 0 <= model.dropout < 1:
    raise errors.UserError(
        f"config.model.dropout={model.dropout} must be in [0, 1)")
  for name in ("eval_every_steps", "eval_steps", "checkpoint_every_steps",
               "warmup_steps"):
    if train[name] < 0:
      raise errors.UserError(f"config.train.{name}={train[name]} must be >= 0")
  if not (math.isfinite(train.learning_rate) and train.learning_rate > 0):
    raise errors.UserError(
        f"config.train.learning_rate={train.learning_rate} must be a finite "
        "number above 0")
  if not 0 <= train.min_learning_rate_ratio <= 1:  # False for nan too
    raise errors.UserError(
        "config.train.min_learning_rate_ratio="
        f"{train.min_learning_rate_ratio} must be in [0, 1]")
  if train.mixed_precision not in POLICIES:
    raise errors.UserError(
        f"config.train.mixed_precision={train.mixed_precision!r} is not one "
        f"of {', '.join(POLICIES)}")
  if train.global_batch_size % num_replicas:
    raise errors.UserError(
        f"config.train.global_batch_size={train.global_batch_size} is not "
        f"divisible by the {num_replicas} replicas of this strategy")
  profile = profile_steps(config)
  if profile and profile[0] >= train.num_steps:
    raise errors.UserError(
        f"config.train.profile_steps={train.profile_steps!r} starts at or "
        f"after config.train.num_steps={train.num_steps}: nothing to trace")
  per_replica = train.global_batch_size // num_replicas
  if on_tpu and per_replica % TPU_BATCH_MULTIPLE:
    suggestion = TPU_BATCH_MULTIPLE * num_replicas * max(
        1, round(per_replica / TPU_BATCH_MULTIPLE))
    raise errors.UserError(
        f"config.train.global_batch_size={train.global_batch_size} gives "
        f"{per_replica} examples per TPU core; use a multiple of "
        f"{TPU_BATCH_MULTIPLE} per core ({num_replicas} cores): e.g. "
        f"{suggestion}")


def profile_steps(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """(start, count) of config.train.profile_steps "START,COUNT", or None
  when it is "" (off).

  Raises:
    UserError: any other form, naming the field and the expected one.
  """
  value = config.train.profile_steps
  if not value:
    return None
  parts = str(value).split(",")
  try:
    start, count = (int(p) for p in parts)
  except ValueError:
    start, count = -1, 0  # not two integers
  if start < 0 or count <= 0:
    raise errors.UserError(
        f"config.train.profile_steps={value!r} is not START,COUNT: two "
        "integers, START >= 0 and COUNT > 0 (e.g. '100,20': the 20 steps "
        "after step 100), or '' for no profile")
  return start, count


def data_patterns(config: ml_collections.ConfigDict,
                  data_dir: str | None) -> dict[str, str]:
  """{"training": pattern, "evaluation": pattern}: the config's shard globs,
  relative to data_dir unless absolute or a URL."""
  def resolve(pattern: str) -> str:
    if "://" in pattern or pattern.startswith("/") or not data_dir:
      return pattern
    return posixpath.join(data_dir, pattern)
  return {"training": resolve(config.data.train_files),
          "evaluation": resolve(config.data.eval_files)}


def check_tpu_paths(config: ml_collections.ConfigDict, data_dir: str | None,
                    dirs: run_dir.RunDirs) -> None:
  """On a TPU, data and outputs must be gs://: the TPU workers read and
  write there, and cannot see this host's disk."""
  patterns = data_patterns(config, data_dir)
  paths = {**dict(dirs.origin),
           "config.data.train_files": patterns["training"],
           "config.data.eval_files": patterns["evaluation"]}
  for name, path in paths.items():
    if not path.startswith("gs://"):
      raise errors.UserError(
          f"{name}={path} is a local path: on a TPU, data and model_dir must "
          "be gs:// URLs (the TPU workers cannot see this host's disk); "
          "copy the data with python -m trainer.data upload")
