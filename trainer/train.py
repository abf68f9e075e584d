"""The training loop: steps, evaluation, checkpoints, summaries and export.

Keras 3 `fit` cannot be the loop under tf.distribute with XLA (see
DESIGN.md), so this is a hand-written one:

  * each replica's forward and backward pass is one XLA-compiled function
    (`jit_compile=True`; on TPU, TPUStrategy compiles the step itself);
  * `strategy.run` of the replica step runs `steps_per_loop` times inside one
    outer tf.function, so the host calls into the graph once per loop;
  * the loss is summed per replica and divided by the global batch size, so
    summing over replicas gives the mean;
  * every shape is static, so each function is traced exactly once per run.

Only the chief writes to the run's directories (`run_dir`); other workers
write the same files to a temporary directory they delete (every worker must
take part in saving).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shutil
import signal
import sys
import tempfile
import time
import warnings
from typing import Any

import keras
import ml_collections
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from trainer import errors
from trainer import export
from trainer import input_pipeline
from trainer import model as model_lib
from trainer import progress
from trainer import run_dir
from trainer import storage
from trainer import strategy as strategy_lib
from trainer import vocab

TPU_BATCH_MULTIPLE = 8  # per-core batch: TPU matrix units tile by 8
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16",
            "float16": "mixed_float16"}
# Iterating a distributed dataset inside tf.function warns about tf.data
# options on every trace; nothing here depends on them.
warnings.filterwarnings("ignore", message="To make it possible to preserve "
                        "tf.data options")


# What a collective op raises when a peer dies or stops answering.
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                tf.errors.AbortedError, tf.errors.CancelledError)


def say(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def validate_config(config: ml_collections.ConfigDict, num_replicas: int,
                    on_tpu: bool = False) -> None:
  """Raises UserError naming the first bad field (before any graph)."""
  train = config.train
  if config.model.vocab_size != vocab.VOCAB_SIZE:
    raise errors.UserError(f"config.model.vocab_size={config.model.vocab_size} but "
                     f"the vocabulary has {vocab.VOCAB_SIZE} tokens")
  for section, name in (("model", "hidden_size"), ("model", "dense_size"),
                        ("model", "len_max_input"),
                        ("train", "global_batch_size"), ("train", "num_steps"),
                        ("train", "steps_per_loop"),
                        ("train", "keep_checkpoints")):
    value = config[section][name]
    if value <= 0:
      raise errors.UserError(f"config.{section}.{name}={value} must be positive")
  for name in ("eval_every_steps", "eval_steps", "checkpoint_every_steps",
               "warmup_steps", "collective_timeout_s"):
    if train[name] < 0:
      raise errors.UserError(f"config.train.{name}={train[name]} must be >= 0")
  if train.learning_rate <= 0:
    raise errors.UserError(f"config.train.learning_rate={train.learning_rate} must "
                     "be positive")
  if train.mixed_precision not in POLICIES:
    raise errors.UserError(f"config.train.mixed_precision={train.mixed_precision!r}"
                     f" is not one of {', '.join(POLICIES)}")
  if train.global_batch_size % num_replicas:
    raise errors.UserError(
        f"config.train.global_batch_size={train.global_batch_size} is not "
        f"divisible by the {num_replicas} replicas of this strategy")
  per_replica = train.global_batch_size // num_replicas
  if on_tpu and per_replica % TPU_BATCH_MULTIPLE:
    raise errors.UserError(
        f"config.train.global_batch_size={train.global_batch_size} gives "
        f"{per_replica} examples per TPU core; use a multiple of "
        f"{TPU_BATCH_MULTIPLE} per core ({num_replicas} cores): e.g. "
        f"{TPU_BATCH_MULTIPLE * num_replicas * max(1, round(per_replica / TPU_BATCH_MULTIPLE))}")


def check_tpu_paths(config: ml_collections.ConfigDict, data_dir: str | None,
                    dirs: run_dir.RunDirs) -> None:
  """On a TPU, data and outputs must be gs://: the TPU workers read and
  write there, and cannot see this host's disk."""
  paths = {**dict(dirs.origin),
           "config.data.train_files": resolve_files(data_dir,
                                                    config.data.train_files),
           "config.data.eval_files": resolve_files(data_dir,
                                                   config.data.eval_files)}
  for name, path in paths.items():
    if not path.startswith("gs://"):
      raise errors.UserError(
          f"{name}={path} is a local path: on a TPU, data and model_dir must "
          "be gs:// URLs (the TPU workers cannot see this host's disk); "
          "copy the data with python -m trainer.data upload")


def resolve_files(data_dir: str | None, pattern: str) -> str:
  """A pattern relative to data_dir, unless it is absolute or a URL."""
  if "://" in pattern or pattern.startswith("/") or not data_dir:
    return pattern
  return storage.join(data_dir, pattern)


class _Stop:
  """Turns SIGTERM into a request to checkpoint and stop after this loop."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no signal handling
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class Trainer:
  """Builds the model, optimizer, data and compiled steps of one run."""

  def __init__(self, config: ml_collections.ConfigDict,
               strategy: tf.distribute.Strategy, data_dir: str | None):
    self.config = config
    self.strategy = strategy
    train = config.train
    self.global_batch_size = train.global_batch_size
    self.num_replicas = strategy.num_replicas_in_sync
    self.use_xla = train.jit_compile and not isinstance(
        strategy, tf.distribute.TPUStrategy)
    self.train_files = resolve_files(data_dir, config.data.train_files)
    self.eval_files = resolve_files(data_dir, config.data.eval_files)
    self.file_lists = {}  # training: bool -> every matching file
    self.pipeline_reads = []  # (split, pipeline id, count, files), logged
    for split, pattern in (("training", self.train_files),
                           ("evaluation", self.eval_files)):
      try:
        files = input_pipeline.list_files(pattern)
        input_pipeline.check_against_manifests(
            files, config.model.len_max_input, whole_split=True)
        self.file_lists[split == "training"] = files
      except FileNotFoundError as e:
        raise errors.UserError(
            f"no {split} shards: {e} (generate them with python -m "
            "trainer.data generate --out_dir=DATA_DIR, or fix --data_dir / "
            "config.data)") from e
      except ValueError as e:
        raise errors.UserError(str(e)) from e

    keras.mixed_precision.set_global_policy(POLICIES[train.mixed_precision])
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
      self.model = model_lib.build_model(config.model)
      schedule = keras.optimizers.schedules.CosineDecay(
          initial_learning_rate=0.0 if train.warmup_steps else
          train.learning_rate,
          decay_steps=max(train.num_steps - train.warmup_steps, 1),
          alpha=train.min_learning_rate_ratio,
          warmup_target=train.learning_rate if train.warmup_steps else None,
          warmup_steps=train.warmup_steps)
      optimizer = keras.optimizers.Adam(learning_rate=schedule)
      if train.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
      self.optimizer = optimizer
      self.optimizer.build(self.model.trainable_variables)
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    self.checkpoint = tf.train.Checkpoint(
        model=self.model, optimizer=self.optimizer, step=self.step)

    self.forward_backward = tf.function(self._forward_backward,
                                        jit_compile=self.use_xla)
    self.forward = tf.function(self._forward, jit_compile=self.use_xla)
    self.train_loop = tf.function(self._train_loop)
    self.eval_loop = tf.function(self._eval_loop)

  # --- per-replica computations -------------------------------------------

  def _weights(self):
    """This replica's variable values, as tensors.

    The XLA functions take the weights as arguments instead of capturing the
    variables: under MirroredStrategy a compiled function that captures
    replica 1's variables is launched from replica 0's device and fails
    ("Trying to access resource ... located in device CPU:1 from device
    CPU:0"). On tensors, each replica's launch stays on its own device.
    """
    return ([tf.convert_to_tensor(v.value) for v in
             self.model.trainable_variables],
            [tf.convert_to_tensor(v.value) for v in
             self.model.non_trainable_variables])

  def _loss_and_correct(self, trainable, non_trainable, x, y):
    logits, _ = self.model.stateless_call(trainable, non_trainable, x,
                                          training=True)
    logits = tf.cast(logits, tf.float32)
    per_example = keras.losses.sparse_categorical_crossentropy(
        y, logits, from_logits=True)  # [per_replica_batch]
    correct = tf.reduce_sum(tf.cast(
        tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y),
        tf.int32))
    return per_example, correct

  def _forward_backward(self, trainable, non_trainable, x, y):
    with tf.GradientTape() as tape:
      tape.watch(trainable)
      per_example, correct = self._loss_and_correct(trainable, non_trainable,
                                                    x, y)
      # Summed per replica over the global batch: replica sums add to the mean.
      loss = tf.reduce_sum(per_example) / self.global_batch_size
      scaled_loss = self.optimizer.scale_loss(loss)
    gradients = tape.gradient(scaled_loss, trainable)
    return loss, correct, gradients

  def _replica_train_step(self, x, y):
    loss, correct, gradients = self.forward_backward(*self._weights(), x, y)
    # Outside XLA: the all-reduce of gradients and the update.
    self.optimizer.apply_gradients(
        zip(gradients, self.model.trainable_variables))
    return loss, correct

  def _forward(self, trainable, non_trainable, x, y):
    per_example, correct = self._loss_and_correct(trainable, non_trainable,
                                                  x, y)
    return tf.reduce_sum(per_example), correct, tf.shape(y)[0]

  def _replica_eval_step(self, x, y):
    return self.forward(*self._weights(), x, y)

  # --- host loops ---------------------------------------------------------

  def _train_loop(self, iterator, num_steps):
    """Runs num_steps steps; returns the mean loss and accuracy."""
    loss_sum = tf.constant(0.0)
    correct = tf.constant(0, tf.int64)
    for _ in tf.range(num_steps):
      x, y = next(iterator)
      replica_loss, replica_correct = self.strategy.run(
          self._replica_train_step, args=(x, y))
      loss_sum += self.strategy.reduce(
          tf.distribute.ReduceOp.SUM, replica_loss, axis=None)
      correct += tf.cast(self.strategy.reduce(
          tf.distribute.ReduceOp.SUM, replica_correct, axis=None), tf.int64)
    self.step.assign_add(tf.cast(num_steps, tf.int64))
    steps = tf.cast(num_steps, tf.float32)
    return (loss_sum / steps,
            tf.cast(correct, tf.float32) / (steps * self.global_batch_size))

  def _eval_loop(self, dataset):
    """One pass over the distributed eval dataset: loss sum, correct, count."""
    loss_sum = tf.constant(0.0)
    correct = tf.constant(0, tf.int64)
    count = tf.constant(0, tf.int64)
    for x, y in dataset:
      replica_loss, replica_correct, replica_count = self.strategy.run(
          self._replica_eval_step, args=(x, y))
      loss_sum += self.strategy.reduce(
          tf.distribute.ReduceOp.SUM, replica_loss, axis=None)
      correct += tf.cast(self.strategy.reduce(
          tf.distribute.ReduceOp.SUM, replica_correct, axis=None), tf.int64)
      count += tf.cast(self.strategy.reduce(
          tf.distribute.ReduceOp.SUM, replica_count, axis=None), tf.int64)
    return loss_sum, correct, count

  # --- data -----------------------------------------------------------------

  def distributed_dataset(self, training: bool, start_step: int = 0):
    """The train or eval split, one input pipeline per worker (or host)."""
    config = self.config
    deterministic = config.train.deterministic
    # A resumed run either replays the exact order (deterministic: skip the
    # batches already trained on) or draws a fresh one (seed + step), so it
    # does not repeat the first batches after every restart.
    seed = config.seed if deterministic or not training else (
        config.seed + start_step)

    def dataset_fn(context: tf.distribute.InputContext):
      replicas_per_pipeline = (context.num_replicas_in_sync //
                               context.num_input_pipelines)
      skip = start_step * replicas_per_pipeline if (
          training and deterministic) else 0
      take = (config.train.eval_steps * replicas_per_pipeline
              if not training and config.train.eval_steps else None)
      # This pipeline's share of the files (disjoint across workers).
      files = input_pipeline.pipeline_files(
          self.file_lists[training], training=training, seed=seed,
          input_context=context)
      self.pipeline_reads.append(
          ("train" if training else "eval", context.input_pipeline_id,
           context.num_input_pipelines, files))
      return input_pipeline.make_dataset(
          files, context.get_per_replica_batch_size(self.global_batch_size),
          len_max_input=config.model.len_max_input, training=training,
          seed=seed, shuffle_buffer_size=config.data.shuffle_buffer_size,
          skip_batches=skip, take_batches=take)

    try:
      return self.strategy.distribute_datasets_from_function(dataset_fn)
    except ValueError as e:  # e.g. fewer files than workers
      raise errors.UserError(f"{'training' if training else 'evaluation'} data: "
                       f"{e}") from e

  def trace_counts(self) -> dict[str, int]:
    """How often each compiled function was traced (1 each: static shapes)."""
    return {name: getattr(self, name).experimental_get_tracing_count()
            for name in ("forward_backward", "forward", "train_loop",
                         "eval_loop")}

  def weights_fingerprint(self) -> str:
    """sha256 of the model's weights (this replica's copy)."""
    digest = hashlib.sha256()
    for weight in self.model.weights:
      digest.update(np.asarray(weight.value).tobytes())
    return digest.hexdigest()[:16]

  def learning_rate(self) -> float:
    optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
    return float(optimizer.learning_rate)


def _check_model_dir(dirs: run_dir.RunDirs,
                     config: ml_collections.ConfigDict) -> None:
  """A model_dir from another model shape is an error, not a crash."""
  path = storage.join(dirs.files, run_dir.CONFIG_FILE)
  if not storage.exists(path):
    return
  saved = storage.read_json(path).get("model", {})
  current = config.model.to_dict()
  differing = sorted(k for k in set(saved) | set(current)
                     if saved.get(k) != current.get(k))
  if differing and tf.train.latest_checkpoint(dirs.checkpoints):
    details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs config "
                        f"{current.get(k)!r}" for k in differing)
    raise errors.UserError(
        f"the checkpoint in {dirs.checkpoints} is of another model shape "
        f"({details}): use another --model_dir or the checkpoint's config")


# TensorBoard's scalar format, written with TensorFlow's own summary op: the
# `tensorboard` package is needed to view the logs, not to write them.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR)


def _write_scalars(writer, step: int, scalars: dict[str, float]) -> None:
  with writer.as_default(step=step):
    for name, value in scalars.items():
      tf.summary.write(name, tf.constant(value, tf.float32),
                       metadata=_SCALAR_METADATA)
  writer.flush()


def train_and_evaluate(config: ml_collections.ConfigDict,
                       strategy: tf.distribute.Strategy,
                       data_dir: str | None,
                       dirs: run_dir.RunDirs) -> dict[str, Any]:
  """Trains (or resumes) to config.train.num_steps, evaluates and exports.

  Returns:
    The final metrics (also written to metrics.json in dirs.files), with
    "stopped": True when SIGTERM ended the run early.
  Raises:
    UserError: a bad config, missing data, or a model_dir holding another
      model shape; found before any graph is built.
  """
  on_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
  validate_config(config, strategy.num_replicas_in_sync, on_tpu=on_tpu)
  if on_tpu:
    check_tpu_paths(config, data_dir, dirs)
  for name, path in dirs.origin:
    storage.check_bucket(path, name)
  for name in ("train_files", "eval_files"):
    storage.check_bucket(resolve_files(data_dir, config.data[name]),
                         "--data_dir" if data_dir else f"config.data.{name}")
  is_chief = strategy_lib.is_chief(strategy)
  temp_dir = None if is_chief else tempfile.mkdtemp(prefix="worker_")
  paths = run_dir.Paths.for_worker(dirs, is_chief, temp_dir)
  try:
    # SIGTERM from here on (preemption, a scheduler) ends in a checkpoint
    # after the current host loop.
    with _Stop() as stop:
      return _run(config, strategy, data_dir, paths, stop)
  except _PEER_ERRORS as e:
    if not strategy_lib.is_multi_worker(strategy):
      raise
    latest = tf.train.latest_checkpoint(dirs.checkpoints)
    raise errors.UserError(
        f"lost contact with another worker ({type(e).__name__}; a worker "
        "died or a collective op waited longer than "
        f"config.train.collective_timeout_s={config.train.collective_timeout_s}"
        "): start every worker again with the same command to resume from "
        f"{latest or 'the start (no checkpoint yet)'}", exit_status=1) from e
  finally:
    if temp_dir:
      shutil.rmtree(temp_dir, ignore_errors=True)


def _run(config, strategy, data_dir, paths: run_dir.Paths,
         stop: _Stop) -> dict[str, Any]:
  _check_model_dir(paths.read, config)
  trainer = Trainer(config, strategy, data_dir)
  train = config.train
  out = paths.write

  latest = tf.train.latest_checkpoint(paths.read.checkpoints)
  if latest:
    trainer.checkpoint.restore(latest).assert_existing_objects_matched()
  start_step = int(trainer.step.numpy())
  if start_step >= train.num_steps:
    say(f"{paths.read.checkpoints} is already at step {start_step} of "
        f"{train.num_steps}: nothing to train")
    return {"step": start_step, "stopped": False}

  storage.makedirs(out.files)  # the others are made by what writes there
  storage.write_atomic(storage.join(out.files, run_dir.CONFIG_FILE),
                       config.to_json_best_effort(
      indent=2, sort_keys=True) + "\n")
  if paths.is_chief:
    say(f"config:\n{config}")
  say(f"strategy: {type(strategy).__name__} with "
      f"{trainer.num_replicas} replica(s); XLA per replica step: "
      f"{trainer.use_xla}; {'chief' if paths.is_chief else 'worker'}")
  say(f"data: train {trainer.train_files}, eval {trainer.eval_files}")
  say(f"{'resuming from ' + latest if latest else 'starting at step 0'}; "
      f"checkpoints in {paths.read.checkpoints}")

  manager = tf.train.CheckpointManager(
      trainer.checkpoint, out.checkpoints,
      max_to_keep=train.keep_checkpoints, step_counter=trainer.step)
  train_writer = tf.summary.create_file_writer(storage.join(out.logs, "train"))
  eval_writer = tf.summary.create_file_writer(storage.join(out.logs, "eval"))
  train_iterator = iter(trainer.distributed_dataset(True, start_step))
  eval_dataset = trainer.distributed_dataset(False)
  for split, pipeline_id, num_pipelines, files in trainer.pipeline_reads:
    names = [posixpath.basename(f) for f in files]
    say(f"data: {split} input pipeline {pipeline_id} of {num_pipelines} "
        f"reads {len(files)} file(s): {' '.join(names[:8])}"
        f"{f' (+{len(names) - 8} more)' if len(names) > 8 else ''}")

  def evaluate(step: int) -> dict[str, float]:
    loss_sum, correct, count = (t.numpy() for t in
                                trainer.eval_loop(eval_dataset))
    metrics = {"loss": float(loss_sum / max(count, 1)),
               "accuracy": float(correct / max(count, 1)),
               "examples": int(count)}
    _write_scalars(eval_writer, step, {k: metrics[k]
                                       for k in ("loss", "accuracy")})
    say(f"eval at step {step}: loss {metrics['loss']:.4f}, accuracy "
        f"{metrics['accuracy']:.4f} over {metrics['examples']:,} examples")
    return metrics

  def next_stop(step: int) -> int:
    stops = [train.num_steps, step + train.steps_per_loop]
    for every in (train.eval_every_steps, train.checkpoint_every_steps):
      if every:
        stops.append((step // every + 1) * every)
    return min(stops)

  bar = progress.Progress(total=train.num_steps, unit="steps", desc="train",
                          initial=start_step)
  step = start_step
  train_metrics: dict[str, float] = {}
  while step < train.num_steps:
    num_steps = next_stop(step) - step
    start = time.perf_counter()
    loss, accuracy = trainer.train_loop(train_iterator,
                                        tf.constant(num_steps))
    loss, accuracy = float(loss), float(accuracy)
    seconds = time.perf_counter() - start
    step += num_steps
    train_metrics = {
        "loss": loss, "accuracy": accuracy,
        "learning_rate": trainer.learning_rate(),
        "steps_per_sec": num_steps / seconds,
        "examples_per_sec": num_steps * trainer.global_batch_size / seconds}
    _write_scalars(train_writer, step, train_metrics)
    bar.update(num_steps, extra=f"loss {loss:.4f}, accuracy "
               f"{accuracy:.3f}, {train_metrics['examples_per_sec']:,.0f} "
               "examples/s")
    if train.eval_every_steps and step % train.eval_every_steps == 0 and (
        step < train.num_steps):
      evaluate(step)
    if stop.requested:
      manager.save(checkpoint_number=step)
      bar.close()
      say(f"SIGTERM: saved a checkpoint at step {step} in "
          f"{paths.read.checkpoints}; re-run the same command to resume")
      return {"step": step, "stopped": True, "train": train_metrics}
    if (train.checkpoint_every_steps and
        step % train.checkpoint_every_steps == 0) or step == train.num_steps:
      manager.save(checkpoint_number=step)
  bar.close()

  eval_metrics = evaluate(step)
  export.export_saved_model(trainer.model, out.export,
                            config.model.len_max_input)
  results = {"step": step, "stopped": False, "train": train_metrics,
             "eval": eval_metrics, "num_replicas": trainer.num_replicas,
             "trace_counts": trainer.trace_counts(),
             "weights_sha256": trainer.weights_fingerprint()}
  # Every worker prints it: workers of one run must agree.
  say(f"final weights sha256: {results['weights_sha256']}")
  storage.write_atomic(storage.join(out.files, run_dir.METRICS_FILE),
                       json.dumps(results, indent=2) + "\n")
  if paths.is_chief:
    say(f"outputs: {out.describe()}")
  return results
