"""The outer loop: when to train, evaluate, checkpoint, summarize and stop.

`train_and_evaluate` reads top to bottom: check the config and the paths,
list the data once, build the Trainer (model, optimizer, compiled steps),
restore the latest checkpoint, then run host loops of `steps_per_loop` steps
until `num_steps`, evaluating and checkpointing on their schedules; at the
end evaluate, export the SavedModel and write the metrics.

Only the chief writes to the run's directories (`run_dir`); other workers
write the same files to a temporary directory they delete (every worker must
take part in saving).

Stops (trainer/training/stop.py): SIGTERM, SIGHUP or Ctrl-C on any worker ends the
run at the end of the current host loop with a checkpoint; in a multi-worker
run the workers agree on that once per host loop (an all-reduce of their stop
flags), so every worker saves the same step and stops. A worker that dies
becomes one line telling how to resume; so does a bad record in the input
(trainer/data/records.py names the file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import posixpath
import re
import shutil
import tempfile
import time
import warnings
from typing import Any

from absl import logging
import ml_collections
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from trainer import cli
from trainer import errors
from trainer import progress
from trainer.cloud import storage
from trainer.data import input_pipeline
from trainer.data import manifest
from trainer.data import problems
from trainer.data import records
from trainer.model import export
from trainer.training import checkpoints
from trainer.training import plan
from trainer.training import run_dir
from trainer.training import run_lock
from trainer.training import stop as stop_lib
from trainer.training import strategy as strategy_lib
from trainer.training import train as train_lib

# Iterating a distributed dataset inside tf.function warns about tf.data
# options on every trace; nothing here depends on them.
warnings.filterwarnings("ignore", message="To make it possible to preserve "
                        "tf.data options")

# What a step raises when its input pipeline reads a bad record.
_DATA_ERRORS = (tf.errors.DataLossError, tf.errors.InvalidArgumentError)

# What a collective op raises when a peer dies or stops answering.
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                tf.errors.AbortedError, tf.errors.CancelledError)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       strategy: tf.distribute.Strategy,
                       data_dir: str | None,
                       dirs: run_dir.RunDirs,
                       start_over: bool = False) -> dict[str, Any]:
  """Trains (or resumes) to config.train.num_steps, evaluates and exports.

  Resumes from the newest checkpoint that restores (trainer/training/checkpoints.py:
  damaged ones are set aside); a directory holding checkpoint files none of
  which restores is an error, unless `start_over`: then the run starts at
  step 0 and the chief first moves every earlier checkpoint into
  checkpoints/replaced-<time>/.

  Returns:
    The final metrics (also written to metrics.json in dirs.files), with
    "stopped": the signal that ended the run early ("SIGTERM", "SIGHUP",
    "SIGINT", or "another worker" for a worker that another worker's
    signal stopped), else None.
  Raises:
    UserError: a bad config, missing or inconsistent data, a model_dir
      holding another model shape (before any graph is built), a run
      directory another run holds (its run.lock); a bad record
      met in training (exit status 2); a lost peer in a multi-worker run
      (exit status 1); training that diverged (a non-finite loss or
      gradient norm: exit status 1, nothing saved after the last good
      checkpoint).
  """
  on_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
  plan.validate_config(config, strategy.num_replicas_in_sync,
                                on_tpu=on_tpu)
  if on_tpu:
    plan.check_tpu_paths(config, data_dir, dirs)
  for name, path in dirs.origin:
    storage.check_bucket(path, name)
  is_chief = strategy_lib.is_chief(strategy)
  if is_chief:  # the only one that writes there
    run_dir.check_writable(dirs)
  # One run per run directory at a time: the chief holds its run.lock until
  # the end (trainer/training/run_lock.py); a second run stops here.
  with (run_lock.hold(dirs.checkpoints) if is_chief
        else contextlib.nullcontext()):
    return _train_and_evaluate(config, strategy, data_dir, dirs, is_chief,
                               start_over)


def _train_and_evaluate(config, strategy, data_dir: str | None,
                        dirs: run_dir.RunDirs, is_chief: bool,
                        start_over: bool) -> dict[str, Any]:
  """train_and_evaluate from the checkpoints' compatibility on, holding the
  run lock (the chief)."""
  if start_over:
    moved = checkpoints.move_aside(dirs.checkpoints) if is_chief else None
    if moved:
      say(f"--start_over: the earlier checkpoints are moved to {moved}")
  else:
    run_dir.check_compatible(dirs, config)
  files = list_data_files(config, data_dir)
  patterns = plan.data_patterns(config, data_dir)
  input_pipeline.check_split_sizes(
      files, patterns, config.train.global_batch_size,
      strategy.num_replicas_in_sync, strategy_lib.num_input_pipelines(strategy))

  temp_dir = None if is_chief else tempfile.mkdtemp(prefix="worker_")
  paths = run_dir.Paths.for_worker(dirs, is_chief, temp_dir)
  try:
    # A stop signal from here on ends in a checkpoint after the current
    # host loop (a second Ctrl-C: at once, naming this one).
    with stop_lib.StopSignals(
        lambda: tf.train.latest_checkpoint(dirs.checkpoints)) as signals:
      return _run(config, strategy, files, patterns, paths, signals,
                  start_over)
  except _PEER_ERRORS as e:
    if not strategy_lib.is_multi_worker(strategy):
      raise
    latest = tf.train.latest_checkpoint(dirs.checkpoints)
    raise errors.UserError(
        f"lost contact with another worker ({_lost_peer(e)}{type(e).__name__}"
        ": it died, or sent no heartbeat to TensorFlow's coordination service "
        "for 10 s): start every worker again with the same command to resume "
        f"from {latest or 'the start (no checkpoint yet)'}",
        exit_status=1) from e
  finally:
    if temp_dir:
      shutil.rmtree(temp_dir, ignore_errors=True)


def _lost_peer(error: tf.errors.OpError) -> str:
  """"worker 1; " when the coordination service named the silent task (a
  leader that went silent itself is named by no one), else ""."""
  found = re.search(r"/job:(\w+)/replica:\d+/task:(\d+)", error.message)
  return f"{found.group(1)} {found.group(2)}; " if found else ""


def list_data_files(config: ml_collections.ConfigDict,
                    data_dir: str | None) -> dict[str, list[str]]:
  """{"training": files, "evaluation": files}: every file of each split,
  listed once and checked against its manifest (counts, sizes, input
  length), before anything is built.

  Raises:
    UserError: a missing bucket, no file for a pattern, a manifest that
      disagrees with the files.
  """
  files = {}
  for split, pattern in plan.data_patterns(config, data_dir).items():
    storage.check_bucket(pattern, "--data_dir" if data_dir else (
        f"config.data.{'train' if split == 'training' else 'eval'}_files"))
    files[split] = input_pipeline.list_split_files(
        pattern, config.model.len_max_input, split)
  return files


def _run(config, strategy, files: dict[str, list[str]],
         patterns: dict[str, str], paths: run_dir.Paths,
         signals: stop_lib.StopSignals, start_over: bool) -> dict[str, Any]:
  """Restores, trains to num_steps (or a stop), then evaluates and exports."""
  started = time.perf_counter()
  trainer = train_lib.Trainer(config, strategy)
  restored = None if start_over else _restore(trainer, paths.read.checkpoints,
                                              paths.is_chief)
  latest = restored.prefix if restored else None
  start_step = int(trainer.step.numpy())
  finished = start_step >= config.train.num_steps
  if finished and _complete(paths.read, trainer, start_step):
    say(f"{paths.read.checkpoints} is already at step {start_step} of "
        f"{config.train.num_steps}, and the export and metrics.json in "
        f"{paths.read.files} are of that checkpoint: nothing to do")
    return {"step": start_step, "stopped": None}

  out = paths.write
  run_dir.write_config(out, config)
  if paths.is_chief:
    say(f"config:\n{config}")
  say(f"strategy: {type(strategy).__name__} with {trainer.num_replicas} "
      f"replica(s); XLA per replica step: {trainer.use_xla}; "
      f"{'chief' if paths.is_chief else 'worker'}")
  say(f"data: train {patterns['training']}, eval {patterns['evaluation']}")
  say(f"{'resuming from ' + latest if latest else 'starting at step 0'}; "
      f"checkpoints in {paths.read.checkpoints}" + (
          "; trained already: evaluating and exporting (the export or "
          "metrics.json of this checkpoint is missing or older: the last run "
          "ended before writing them)" if finished else ""))

  feeds = Feeds(config, strategy, files, start_step)
  run = _Run(config, trainer, out, start_step, files, strategy, started)
  train_metrics, stopped = ({}, None) if finished else run.train(
      feeds, signals)
  if stopped:
    run.save()
    every = " on every worker" if strategy_lib.is_multi_worker(strategy) else ""
    by = "stopped by another worker" if stopped == "another worker" else (
        stopped)
    say(f"{by}: saved a checkpoint at step {run.step} in "
        f"{paths.read.checkpoints}; run the same command{every} to resume")
    run.any_worker(False)  # a barrier: none ends while another still works
    return {"step": run.step, "stopped": stopped, "train": train_metrics}

  eval_metrics = run.evaluate(feeds.eval_dataset)
  # The SavedModel first, metrics.json last: a run is finished when both are
  # there and metrics.json names this checkpoint's weights (_complete).
  export.export_saved_model(trainer.model, out.export,
                            config.model.len_max_input,
                            replace_whole=out.export != out.files)
  results = {"step": run.step, "stopped": None, "train": train_metrics,
             "eval": eval_metrics, "num_replicas": trainer.num_replicas,
             "trace_counts": trainer.trace_counts(),
             "checkpoint": run.manager.latest_checkpoint,
             "weights_sha256": trainer.weights_sha256()}
  # Every worker prints it: workers of one run must agree.
  say(f"final weights sha256: {results['weights_sha256']}")
  run_dir.write_metrics(out, results)
  if paths.is_chief:
    say(f"outputs: {out.describe()}")
  run.any_worker(False)  # a barrier: none ends while another still writes
  return results


def _restore(trainer: train_lib.Trainer, directory: str,
             is_chief: bool) -> checkpoints.Found | None:
  """The newest checkpoint of `directory` that restores, restored (the
  chief sets damaged ones aside); None in a directory without checkpoints.

  Raises:
    UserError: checkpoint files of which none restores: the run would
      start at step 0 and overwrite them.
  """
  restored = checkpoints.restore_newest(trainer.checkpoint, directory,
                                        repair=is_chief)
  if restored.found is None and restored.leftovers:
    why = "; ".join(f"{name}: {reason}" for name, reason in restored.damaged
                    ) or "holding only " + ", ".join(
                        posixpath.basename(p) for p in restored.leftovers[:4]
                    ) + (", ..." if len(restored.leftovers) > 4 else "")
    raise errors.UserError(
        f"{directory} holds checkpoint files but no checkpoint that restores "
        f"({why}): nothing was trained or overwritten; to train from step 0 "
        "anyway, add --start_over (they are moved to a replaced-<time>/ "
        "directory beside them, not deleted)")
  return restored.found


def _complete(dirs: run_dir.RunDirs, trainer: train_lib.Trainer,
              step: int) -> bool:
  """Whether the run in `dirs` is finished at `step`: its SavedModel is
  there and metrics.json is of this step and of these very weights."""
  metrics = run_dir.read_metrics(dirs)
  return bool(metrics and metrics.get("step") == step and
              metrics.get("weights_sha256") == trainer.weights_sha256() and
              export.is_saved_model(dirs.export))


@dataclasses.dataclass
class Feeds:
  """The distributed train iterator and eval dataset of one run.

  Each worker (or TPU host) builds one input pipeline per split from its
  share of the files; a resumed run either replays the exact order
  (config.train.exact_resume: skip the batches already trained on) or draws
  a new one (seed + step), so it does not repeat the first batches after
  every restart.
  """
  config: ml_collections.ConfigDict
  strategy: tf.distribute.Strategy
  files: dict[str, list[str]]
  start_step: int

  def __post_init__(self):
    self.train_iterator = iter(self._distribute(training=True))
    self.eval_dataset = self._distribute(training=False)

  def _distribute(self, training: bool):
    config = self.config
    exact = config.train.exact_resume
    seed = config.seed if exact or not training else (
        config.seed + self.start_step)
    split = "training" if training else "evaluation"

    def dataset_fn(context: tf.distribute.InputContext):
      replicas_per_pipeline = (context.num_replicas_in_sync //
                               context.num_input_pipelines)
      # This pipeline's share of the files (disjoint across workers).
      files = input_pipeline.pipeline_files(
          self.files[split], training=training, seed=seed,
          input_context=context)
      input_pipeline.check_holds_a_batch(
          files, context.get_per_replica_batch_size(
              config.train.global_batch_size), split)
      names = [posixpath.basename(f) for f in files]
      say(f"data: {'train' if training else 'eval'} input pipeline "
          f"{context.input_pipeline_id} of {context.num_input_pipelines} "
          f"reads {len(files)} file(s): {' '.join(names[:8])}"
          f"{f' (+{len(names) - 8} more)' if len(names) > 8 else ''}")
      return input_pipeline.make_dataset(
          files, context.get_per_replica_batch_size(
              config.train.global_batch_size),
          len_max_input=config.model.len_max_input, training=training,
          seed=seed, shuffle_buffer_size=config.data.shuffle_buffer_size,
          skip_batches=(self.start_step * replicas_per_pipeline
                        if training and exact else 0),
          take_batches=(config.train.eval_steps * replicas_per_pipeline
                        if not training and config.train.eval_steps else None))

    try:
      return self.strategy.distribute_datasets_from_function(dataset_fn)
    except errors.UserError as e:  # e.g. fewer files than workers
      raise errors.UserError(f"{split} data: {e}", e.exit_status) from e


class _Run:
  """The schedule of one run: host loops, evaluations, checkpoints and the
  TensorBoard scalars written along the way."""

  def __init__(self, config, trainer: train_lib.Trainer, out: run_dir.RunDirs,
               start_step: int, files: dict[str, list[str]],
               strategy: tf.distribute.Strategy, started: float):
    self.config = config
    self.trainer = trainer
    self.step = start_step
    self.files = files
    self.started = started  # when _run began (without the CLI's import)
    # What a full eval pass (eval_steps=0) should count, from the manifests.
    self.eval_split_examples = None if config.train.eval_steps else (
        manifest.count_examples(files["evaluation"]))
    self.any_worker = _any_worker(strategy)
    self.manager = tf.train.CheckpointManager(
        trainer.checkpoint, out.checkpoints,
        max_to_keep=config.train.keep_checkpoints,
        step_counter=trainer.step)
    self.train_writer = tf.summary.create_file_writer(
        storage.join(out.logs, "train"))
    self.eval_writer = tf.summary.create_file_writer(
        storage.join(out.logs, "eval"))
    # The chief's trace (is_chief: every TPU host is one), into its logs.
    self.profile = _Profile(
        plan.profile_steps(config) if strategy_lib.is_chief(
            strategy) else None, out.logs)

  def next_stop(self) -> int:
    """The step where this host loop ends: the next evaluation, checkpoint,
    steps_per_loop boundary or the end."""
    train = self.config.train
    stops = [train.num_steps, self.step + train.steps_per_loop]
    for every in (train.eval_every_steps, train.checkpoint_every_steps):
      if every:
        stops.append((self.step // every + 1) * every)
    # The profiled steps are whole host loops (on every worker: all workers
    # run the same loops).
    profile = plan.profile_steps(self.config)
    if profile:
      start, count = profile
      stops += [s for s in (start, start + count) if s > self.step]
    return min(stops)

  def train(self, feeds: Feeds, signals: stop_lib.StopSignals
            ) -> tuple[dict[str, float], str | None]:
    """Host loops until num_steps or a stop request.

    Returns:
      The last loop's metrics, and what stopped training early (the signal's
      name, "another worker" for another worker's signal) or None. A stop
      requested during the last host loop lets the run finish.
    """
    train = self.config.train
    bar = progress.Progress(total=train.num_steps, unit="steps", desc="train",
                            initial=self.step)
    metrics: dict[str, float] = {}
    stopped = None
    while self.step < train.num_steps:
      num_steps = self.next_stop() - self.step
      start = time.perf_counter()
      try:
        with self.profile.host_loop(self.step, num_steps):
          loss, accuracy, diverged = (
              t.numpy() for t in self.trainer.train_loop(
                  feeds.train_iterator, tf.constant(num_steps)))
      except _DATA_ERRORS as e:
        raise self._data_error(e, "training") from e
      if diverged >= 0:  # before anything of this host loop is kept
        raise self._diverged(int(diverged), num_steps, float(loss))
      loss, accuracy = float(loss), float(accuracy)
      seconds = time.perf_counter() - start
      if not metrics:  # the first host loop
        self._say_start_up(start, seconds, num_steps)
      self.step += num_steps
      examples_per_sec = num_steps * train.global_batch_size / seconds
      metrics = {"loss": loss, "accuracy": accuracy,
                 "learning_rate": self.trainer.learning_rate(),
                 "steps_per_sec": num_steps / seconds,
                 "examples_per_sec": examples_per_sec}
      _write_scalars(self.train_writer, self.step, metrics)
      bar.update(num_steps, extra=f"loss {loss:.4f}, accuracy "
                 f"{accuracy:.3f}, {examples_per_sec:,.0f} examples/s")
      if (train.eval_every_steps and self.step % train.eval_every_steps == 0
          and self.step < train.num_steps):
        self.evaluate(feeds.eval_dataset)
      # Every worker takes part, once per host loop, so all stop together.
      if self.any_worker(signals.requested) and self.step < train.num_steps:
        stopped = signals.signal_name or "another worker"
        break
      if (train.checkpoint_every_steps and
          self.step % train.checkpoint_every_steps == 0) or (
              self.step == train.num_steps):
        self.save()
    self.profile.stop(self.step)  # stopped inside the profiled steps
    bar.close()
    return metrics, stopped

  def save(self) -> None:
    """A checkpoint of this step, unless the latest one already is: TF
    rewrites an existing checkpoint's index file in place, so a kill -9
    during a second save of one step could leave it unrestorable (new
    numbers are written under temporary names, and `checkpoint` names them
    only once they are whole)."""
    latest = self.manager.latest_checkpoint
    if not (latest and latest.endswith(f"-{self.step}")):
      self.manager.save(checkpoint_number=self.step)

  def _diverged(self, step: int, num_steps: int,
                loss: float) -> errors.UserError:
    """The one line for a host loop in which training diverged."""
    train = self.config.train
    latest = self.manager.latest_checkpoint
    precision = (f", or train in float32 (now mixed_precision="
                 f"{train.mixed_precision})"
                 if train.mixed_precision != "float32" else "")
    return errors.UserError(
        f"training diverged: the loss or its gradient was not finite at step "
        f"{step} (mean loss of steps {self.step + 1}-{self.step + num_steps}: "
        f"{loss}); nothing of it was saved or exported, "
        + (f"the last good checkpoint is {latest}" if latest else
           "no checkpoint was saved yet")
        + f": lower --config.train.learning_rate (now {train.learning_rate:g})"
        f" or raise --config.train.warmup_steps (now {train.warmup_steps})"
        f"{precision}, then run again" + (" to resume from it" if latest
                                          else ""), exit_status=1)

  def _say_start_up(self, first_step: float, seconds: float,
                    num_steps: int) -> None:
    """How long the run took to start: from TensorFlow's import (or, without
    the CLI, from building the trainer) to the first step, then the first
    host loop (tracing and compiling included)."""
    imported = cli.tensorflow_import_times
    since = (f"{first_step - imported[1]:.1f} s from TensorFlow import to the "
             f"first step (the import itself: {imported[1] - imported[0]:.1f}"
             " s)" if imported else f"{first_step - self.started:.1f} s from "
             "building the trainer to the first step")
    say(f"start-up: {since}; first host loop (tracing"
        f"{' + XLA compile' if self.trainer.use_xla else ''} + {num_steps} "
        f"steps) {seconds:.1f} s")

  def evaluate(self, eval_dataset) -> dict[str, Any]:
    """One eval pass: says it, writes eval/ scalars and returns the metrics.

    Returns:
      {"loss", "accuracy", "examples", "by_op": {name: {"loss", "accuracy",
      "examples"}}}, names of train.OPERATION_NAMES; an operation without
      examples has loss and accuracy None (and no scalars).
    """
    try:
      sums = {name: t.numpy()
              for name, t in self.trainer.eval_loop(eval_dataset).items()}
    except _DATA_ERRORS as e:
      raise self._data_error(e, "evaluation") from e
    count = int(sums["count"])
    if not count:  # a split smaller than a batch per input pipeline
      raise errors.UserError(
          "the evaluation pass read 0 examples from "
          f"{len(self.files['evaluation'])} file(s): fewer than one batch "
          "per input pipeline (config.train.global_batch_size="
          f"{self.config.train.global_batch_size}); lower --config.train."
          "global_batch_size or generate more eval examples")
    metrics = {"loss": float(sums["loss_sum"] / max(count, 1)),
               "accuracy": float(sums["correct"] / max(count, 1)),
               "examples": count}
    metrics["by_op"] = {
        name: _mean_metrics(op_loss_sum, op_correct, op_count)
        for name, op_loss_sum, op_correct, op_count in zip(
            train_lib.OPERATION_NAMES, sums["op_loss_sum"],
            sums["op_correct"], sums["op_count"])}
    scalars = {"loss": metrics["loss"], "accuracy": metrics["accuracy"]}
    for name, op_metrics in metrics["by_op"].items():
      if op_metrics["examples"]:
        scalars[f"loss_{name}"] = op_metrics["loss"]
        scalars[f"accuracy_{name}"] = op_metrics["accuracy"]
    _write_scalars(self.eval_writer, self.step, scalars)
    by_op = ", ".join(
        f"{operator} " + (f"{op_metrics['accuracy']:.4f}"
                          if op_metrics["examples"] else "n/a")
        for operator, op_metrics in zip(problems.OPERATORS,
                                        metrics["by_op"].values()))
    say(f"eval at step {self.step}: loss {metrics['loss']:.4f}, accuracy "
        f"{metrics['accuracy']:.4f} over {self._eval_count(count)}; {by_op}")
    return metrics

  def _eval_count(self, count: int) -> str:
    """"296 of 300 examples (4 left out: ...)" for a full pass of a split
    with manifests, else "N examples"."""
    total = self.eval_split_examples
    if total is None or total == count:
      return f"{count:,} examples"
    return (f"{count:,} of {total:,} examples ({total - count:,} left out: "
            "static shapes drop each input pipeline's last partial batch)")

  def _data_error(self, error: tf.errors.OpError,
                  split: str) -> errors.UserError:
    """The one line for a step that failed on its input: names the file."""
    return records.describe_data_error(
        error, self.files[split], self.config.model.len_max_input, split)


class _Profile:
  """A tf.profiler trace of the host loops inside config.train.profile_steps,
  written to `logdir`/plugins/profile/<time>/<host>.xplane.pb (TensorBoard's
  profile plugin reads it; writing it needs TensorFlow alone)."""

  def __init__(self, steps: tuple[int, int] | None, logdir: str):
    self.steps = steps  # (start, count), or None: no trace
    self.logdir = logdir
    self.first_step = None  # where the running trace started, or None

  @contextlib.contextmanager
  def host_loop(self, step: int, num_steps: int):
    """Traces the host loop of num_steps steps after `step` if it is one of
    the profiled ones (next_stop makes their bounds host-loop bounds)."""
    if self.steps and self.first_step is None and (
        self.steps[0] <= step < sum(self.steps)):
      tf.profiler.experimental.start(self.logdir)
      self.first_step = step
    try:
      yield
    except BaseException:
      self.stop(None)
      raise
    if self.steps and step + num_steps >= sum(self.steps):
      self.stop(step + num_steps)

  def stop(self, last_step: int | None) -> None:
    """Stops a running trace (writes it) and says where it went; last_step
    None: a host loop failed."""
    if self.first_step is None:
      return
    tf.profiler.experimental.stop()
    runs = sorted(storage.glob(storage.join(self.logdir, "plugins", "profile",
                                            "*")))
    steps = (f"steps {self.first_step} to {last_step}" if last_step is not None
             else f"from step {self.first_step} until a host loop failed")
    say(f"profile: {steps} traced to {runs[-1] if runs else self.logdir}; "
        f"view it with tensorboard --logdir {self.logdir} (Profile tab: "
        "pip install tensorboard-plugin-profile)")
    self.first_step = None


def _any_worker(strategy: tf.distribute.Strategy):
  """A function of this worker's stop flag: True when any worker's is set.

  Multi-worker: an all-reduce over every replica (one per host loop, every
  worker must call it at the same point). Otherwise the flag itself.
  """
  if not strategy_lib.is_multi_worker(strategy):
    return bool

  @tf.function
  def count(flag: tf.Tensor) -> tf.Tensor:
    per_replica = strategy.run(lambda: tf.identity(flag))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

  return lambda flag: int(count(tf.constant(int(flag)))) > 0


def _mean_metrics(loss_sum, correct, count) -> dict[str, Any]:
  """Mean loss and accuracy of one operation's sums (None: no examples)."""
  count = int(count)
  if not count:
    return {"loss": None, "accuracy": None, "examples": 0}
  return {"loss": float(loss_sum / count), "accuracy": float(correct / count),
          "examples": count}


# TensorBoard's scalar format, written with TensorFlow's own summary op.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR)


def _write_scalars(writer, step: int, scalars: dict[str, float]) -> None:
  with writer.as_default(step=step):
    for name, value in scalars.items():
      tf.summary.write(name, tf.constant(value, tf.float32),
                       metadata=_SCALAR_METADATA)
  writer.flush()


def say(message: str) -> None:
  """Logs one of the run's own lines (INFO, through absl logging)."""
  logging.info(message)

