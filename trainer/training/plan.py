"""The run's plan: its config checked once and everything derived from it.

  run_plan = plan.for_strategy(config, strategy, data_dir)  # UserError if bad
  run_plan.patterns["training"], run_plan.per_replica_batch_size,
  run_plan.profile, run_plan.target, run_plan.seed(training=True, ...), ...

Each bad field is one line naming it, before any graph is built. Nothing
else reads a config string (profile_steps, data paths) or re-derives a
count: the loop, the feeds, the schedule and the CLI read this plan (as in
big_vision's train.py or flax's imagenet example, which compute their step
counts once at the top).
"""

from __future__ import annotations

import dataclasses
import math
import posixpath
import types
from typing import Any, Mapping, Sequence

import ml_collections

from trainer import errors
from trainer.cloud import storage
from trainer.data import schema
from trainer.data import vocab

TPU_BATCH_MULTIPLE = 8  # per-core batch: TPU matrix units tile by 8
# config.train.mixed_precision -> the Keras policy.
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16",
            "float16": "mixed_float16"}


@dataclasses.dataclass(frozen=True)
class ProfileWindow:
  """config.train.profile_steps "START,COUNT": trace steps START+1 to
  START+COUNT (whole host loops: the schedule ends host loops at both
  bounds)."""
  start: int
  count: int

  @property
  def end(self) -> int:
    return self.start + self.count

  def covers(self, step: int) -> bool:
    """Whether the host loop that starts after `step` is traced."""
    return self.start <= step < self.end


# Which way each eval metric a run can aim at is better, written once (the
# target, the best value of a run): accuracy higher, loss lower.
_HIGHER_IS_BETTER = {"accuracy": True, "loss": False}


def comparison(metric: str) -> str:
  """">=" for "accuracy", "<=" for "loss": how `metric` reaches a value."""
  return ">=" if _HIGHER_IS_BETTER[metric] else "<="


def at_least(metric: str, measured: float, value: float) -> bool:
  """Whether `measured` is as good as `value` or better, for `metric`."""
  return measured >= value if _HIGHER_IS_BETTER[metric] else measured <= value


def best_of(metric: str, values: Sequence[tuple[Any, float]]
            ) -> tuple[Any, float]:
  """The (key, value) pair of `values` with the best value for `metric`."""
  return (max if _HIGHER_IS_BETTER[metric] else min)(
      values, key=lambda pair: pair[1])


@dataclasses.dataclass(frozen=True)
class Target:
  """config.train.target_accuracy or target_loss: the eval value that ends
  the run (an evaluation over the whole eval split reaching it)."""
  metric: str  # "accuracy" (reached at >= value) or "loss" (at <= value)
  value: float

  @property
  def field(self) -> str:
    return f"config.train.target_{self.metric}"

  @property
  def comparison(self) -> str:
    return comparison(self.metric)

  def reached_by(self, eval_metrics: Mapping[str, float]) -> bool:
    """Whether an eval pass's metrics ({"accuracy", "loss", ...}) reach it."""
    return at_least(self.metric, eval_metrics[self.metric], self.value)


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """A checked config and what follows from it for one strategy and data
  directory; see the module docstring. Frozen: made once per run.

  Attributes:
    config: the config it was made from (read its fields freely; derived
      values are here).
    num_replicas: replicas in sync (all workers).
    num_input_pipelines: one per worker process or TPU host.
    on_tpu: a TPUStrategy.
    patterns: {"training": glob, "evaluation": glob}, resolved against
      --data_dir (escaped: the directory is literal, storage.escape).
    pattern_sources: {"training": where each pattern came from}, the
      flag or config field to name in errors.
    per_replica_batch_size: global_batch_size / num_replicas.
    profile: the traced window, or None.
    target: the eval value that ends the run, or None (train to num_steps).
    keep_best: the eval metric whose best checkpoint the run keeps and
      exports ("accuracy" or "loss"), or None (config.train.keep_best "").
  """
  config: ml_collections.ConfigDict
  num_replicas: int
  num_input_pipelines: int
  on_tpu: bool
  patterns: Mapping[str, str]
  pattern_sources: Mapping[str, str]
  per_replica_batch_size: int
  profile: ProfileWindow | None
  target: Target | None = None
  keep_best: str | None = None

  @property
  def replicas_per_pipeline(self) -> int:
    return self.num_replicas // self.num_input_pipelines

  def seed(self, training: bool, start_step: int) -> int:
    """The data order's seed: a resumed run draws a new training order
    (seed + step) so it does not repeat the first batches after every
    restart, unless config.train.exact_resume replays the same one."""
    if training and not self.config.train.exact_resume:
      return self.config.seed + start_step
    return self.config.seed

  def skip_batches(self, start_step: int) -> int:
    """Per-replica batches each training pipeline skips to resume exactly
    (config.train.exact_resume), else 0. A step is an optimizer step: it
    read config.train.accumulation_steps batches."""
    if not self.config.train.exact_resume:
      return 0
    return (start_step * self.config.train.accumulation_steps *
            self.replicas_per_pipeline)

  @property
  def take_batches(self) -> int | None:
    """Per-replica batches each eval pipeline reads (config.train.
    eval_steps), or None: a full pass."""
    eval_steps = self.config.train.eval_steps
    return eval_steps * self.replicas_per_pipeline if eval_steps else None


def resolve(config: ml_collections.ConfigDict, *, num_replicas: int = 1,
            num_input_pipelines: int = 1, on_tpu: bool = False,
            data_dir: str | None = None) -> RunPlan:
  """Checks `config` once and derives the run's plan.

  Args:
    config: the run's config.
    num_replicas, num_input_pipelines, on_tpu: the strategy's (see
      for_strategy).
    data_dir: --data_dir: relative config.data patterns are relative to it.
  Raises:
    UserError: the first bad field, in one line.
  """
  _check_fields(config)
  profile = _profile_window(config)
  target = _target(config)
  keep_best = _keep_best(config)
  _check_replicas(config, num_replicas, on_tpu)
  patterns, sources = {}, {}
  for split, pattern in ((schema.TRAIN, config.data.train_files),
                         (schema.EVAL, config.data.eval_files)):
    if data_dir and "://" not in pattern and not pattern.startswith("/"):
      # The config's pattern is a glob; --data_dir is a directory, even
      # when its name holds `[`, `*` or `?`.
      patterns[split.noun] = posixpath.join(storage.escape(data_dir),
                                            pattern)
      sources[split.noun] = "--data_dir"
    else:
      patterns[split.noun] = pattern
      sources[split.noun] = f"config.data.{split.config_field}"
  return RunPlan(config=config, num_replicas=num_replicas,
                 num_input_pipelines=num_input_pipelines, on_tpu=on_tpu,
                 patterns=types.MappingProxyType(patterns),
                 pattern_sources=types.MappingProxyType(sources),
                 per_replica_batch_size=(config.train.global_batch_size //
                                         num_replicas),
                 profile=profile, target=target, keep_best=keep_best)


def for_strategy(config: ml_collections.ConfigDict, strategy,
                 data_dir: str | None) -> RunPlan:
  """resolve() with the replicas, input pipelines and kind of a
  tf.distribute strategy."""
  # TensorFlow only here: the data CLI resolves plans without it.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer.training import strategy as strategy_lib  # pylint: disable=g-import-not-at-top
  return resolve(
      config, num_replicas=strategy.num_replicas_in_sync,
      num_input_pipelines=strategy_lib.num_input_pipelines(strategy),
      on_tpu=isinstance(strategy, tf.distribute.TPUStrategy),
      data_dir=data_dir)


def _check_fields(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first bad field (strategy aside)."""
  train = config.train
  if config.model.vocab_size != vocab.VOCAB_SIZE:
    raise errors.UserError(
        f"config.model.vocab_size={config.model.vocab_size} but the "
        f"vocabulary has {vocab.VOCAB_SIZE} tokens")
  for section, name in (("model", "hidden_size"), ("model", "dense_size"),
                        ("model", "len_max_input"), ("model", "num_heads"),
                        ("model", "num_layers"),
                        ("train", "global_batch_size"), ("train", "num_steps"),
                        ("train", "accumulation_steps"),
                        ("train", "steps_per_loop"),
                        ("train", "steps_per_call"),
                        ("train", "keep_checkpoints")):
    value = config[section][name]
    if value <= 0:
      raise errors.UserError(
          f"config.{section}.{name}={value} must be positive")
  if config.data.memory_cache_mb < 0:
    raise errors.UserError(
        f"config.data.memory_cache_mb={config.data.memory_cache_mb} must be "
        ">= 0 (0: stream from the files)")
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
  for name in ("eval_every_steps", "eval_start_step", "eval_steps",
               "checkpoint_every_steps", "warmup_steps",
               "histogram_every_steps", "inter_op_threads"):
    if train[name] < 0:
      raise errors.UserError(f"config.train.{name}={train[name]} must be >= 0")
  if not 0 <= train.malloc_top_pad_mb <= 2047:  # mallopt takes an int
    raise errors.UserError(
        f"config.train.malloc_top_pad_mb={train.malloc_top_pad_mb} must be "
        "in [0, 2047]")
  if not (math.isfinite(train.learning_rate) and train.learning_rate > 0):
    raise errors.UserError(
        f"config.train.learning_rate={train.learning_rate} must be a finite "
        "number above 0")
  if not 0 <= train.min_learning_rate_ratio <= 1:  # False for nan too
    raise errors.UserError(
        "config.train.min_learning_rate_ratio="
        f"{train.min_learning_rate_ratio} must be in [0, 1]")
  if not 0 <= train.ema_decay < 1:  # False for nan too
    raise errors.UserError(
        f"config.train.ema_decay={train.ema_decay} must be in [0, 1) (0: off; "
        "e.g. 0.999)")
  if train.mixed_precision not in POLICIES:
    raise errors.UserError(
        f"config.train.mixed_precision={train.mixed_precision!r} is not one "
        f"of {', '.join(POLICIES)}")


def _check_replicas(config: ml_collections.ConfigDict, num_replicas: int,
                    on_tpu: bool) -> None:
  """Raises UserError if the batch does not split over the replicas."""
  train = config.train
  if train.global_batch_size % num_replicas:
    raise errors.UserError(
        f"config.train.global_batch_size={train.global_batch_size} is not "
        f"divisible by the {num_replicas} replicas of this strategy")
  per_replica = train.global_batch_size // num_replicas
  if on_tpu and per_replica % TPU_BATCH_MULTIPLE:
    suggestion = TPU_BATCH_MULTIPLE * num_replicas * max(
        1, round(per_replica / TPU_BATCH_MULTIPLE))
    raise errors.UserError(
        f"config.train.global_batch_size={train.global_batch_size} gives "
        f"{per_replica} examples per TPU core; use a multiple of "
        f"{TPU_BATCH_MULTIPLE} per core ({num_replicas} cores): e.g. "
        f"{suggestion}")


def _profile_window(config: ml_collections.ConfigDict) -> ProfileWindow | None:
  """config.train.profile_steps "START,COUNT", or None when it is ""
  (off).

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
  if start >= config.train.num_steps:
    raise errors.UserError(
        f"config.train.profile_steps={value!r} starts at or after "
        f"config.train.num_steps={config.train.num_steps}: nothing to trace")
  return ProfileWindow(start, count)


def _target(config: ml_collections.ConfigDict) -> Target | None:
  """config.train.target_accuracy or target_loss (0.0: off), or None.

  Raises:
    UserError: a value out of range, both set, or evaluations that cannot
      tell (not over the whole eval split, or none before num_steps).
  """
  train = config.train
  accuracy, loss = train.target_accuracy, train.target_loss
  if not 0 <= accuracy <= 1:  # False for nan too
    raise errors.UserError(
        f"config.train.target_accuracy={accuracy} must be in [0, 1] (0: off)")
  if not (math.isfinite(loss) and loss >= 0):
    raise errors.UserError(
        f"config.train.target_loss={loss} must be a finite number >= 0 "
        "(0: off)")
  if accuracy and loss:
    raise errors.UserError(
        f"config.train.target_accuracy={accuracy} and config.train."
        f"target_loss={loss} are both set: set one of them (the other 0)")
  if not (accuracy or loss):
    return None
  target = (Target("accuracy", float(accuracy)) if accuracy else
            Target("loss", float(loss)))
  if train.eval_steps:
    raise errors.UserError(
        f"{target.field}={target.value} is judged on evaluations over the "
        f"whole eval split, but config.train.eval_steps={train.eval_steps} "
        "reads part of it: set config.train.eval_steps=0")
  if not train.eval_every_steps:
    raise errors.UserError(
        f"{target.field}={target.value} needs evaluations during the run, "
        "but config.train.eval_every_steps=0: set it to how often to "
        "evaluate (e.g. 1000)")
  return target


def _keep_best(config: ml_collections.ConfigDict) -> str | None:
  """config.train.keep_best: "accuracy" or "loss" (which way is better:
  `comparison`), or None when it is "" (off).

  Raises:
    UserError: any other value.
  """
  value = config.train.keep_best
  if not value:
    return None
  if value not in _HIGHER_IS_BETTER:
    raise errors.UserError(
        f"config.train.keep_best={value!r} is not one of "
        f"{', '.join(repr(m) for m in _HIGHER_IS_BETTER)} (the eval metric to "
        "keep the best checkpoint of) or '' (off)")
  return value


def check_tpu_paths(run_plan: RunPlan, dirs) -> None:
  """On a TPU, data and outputs must be gs://: the TPU workers read and
  write there, and cannot see this host's disk."""
  paths = {**dict(dirs.origin),
           **{f"config.data.{split.config_field}": run_plan.patterns[split.noun]
              for split in schema.SPLITS}}
  for name, path in paths.items():
    if not path.startswith("gs://"):
      raise errors.UserError(
          f"{name}={path} is a local path: on a TPU, data and model_dir must "
          "be gs:// URLs (the TPU workers cannot see this host's disk); "
          "copy the data with python -m trainer.data upload")
