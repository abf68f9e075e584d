"""The outer loop: when to train, evaluate, checkpoint, summarize and stop.

`train_and_evaluate` reads top to bottom: check the paths, list the data
once, build the Trainer (model, optimizer, compiled steps), restore the
latest checkpoint, then run host loops until `num_steps`; after each, the
stop vote, then the schedule's rows due there (checkpoint, histograms,
evaluation, the best checkpoint kept, profile:
trainer/training/schedule.py; at num_steps the final evaluation); then
export the SavedModel (and the best evaluation's, with
config.train.keep_best) and write the metrics; the
chief's last line says how long the run took and the commands that show it
(done_line).
The config comes checked, as a RunPlan (trainer/training/plan.py).

A target (config.train.target_accuracy or target_loss) ends the run early:
the first evaluation that reaches it is the run's last; the run saves,
exports and writes its metrics as at num_steps. The eval metrics are
all-reduced and the workers vote on the target (like the stop vote below),
so every worker ends at the same step.

Only the chief writes to the run's directories (`run_dir`); other workers
write the same files to a temporary directory they delete (every worker must
take part in saving).

Stops (trainer/training/stop.py): SIGTERM, SIGHUP or Ctrl-C on any worker
ends the run at the end of the current host loop with a checkpoint, before
anything else due there (an evaluation would spend the grace period); in a
multi-worker run the workers agree on that once per host loop (an all-reduce
of their stop flags), so every worker saves the same step and stops. A
worker that dies becomes one line telling how to resume; so does a bad
record in the input (trainer/data/verify.py names the file).
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import tempfile
import time
import warnings
from typing import Any

from absl import logging
import tensorflow as tf

from trainer import cli
from trainer import errors
from trainer import procs
from trainer import progress
from trainer.cloud import storage
from trainer.model import export
from trainer.training import checkpoints
from trainer.training import feeds as feeds_lib
from trainer.training import hypertune
from trainer.training import plan as plan_lib
from trainer.training import run_dir
from trainer.training import run_lock
from trainer.training import schedule as schedule_lib
from trainer.training import stop as stop_lib
from trainer.training import strategy as strategy_lib
from trainer.training import summaries
from trainer.training import timing
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


def train_and_evaluate(run_plan: plan_lib.RunPlan,
                       strategy: tf.distribute.Strategy,
                       dirs: run_dir.RunDirs,
                       start_over: bool = False,
                       resume_command: str = "run the same command again"
                       ) -> dict[str, Any]:
  """Trains (or resumes) to config.train.num_steps, evaluates and exports.

  `run_plan` is the checked config for this strategy and data
  (plan.for_strategy).

  Resumes from the newest checkpoint that restores (damaged ones are set
  aside: trainer/training/checkpoints.py); a directory holding checkpoint
  files none of which restores is an error, unless `start_over`: then the run starts at
  step 0 and the chief first moves every earlier checkpoint into
  checkpoints/replaced-<time>/.

  `resume_command` is what the lines that tell how to resume (a stop, a
  lost peer) name: the CLI's command line with the run directory made
  explicit, so pasting it resumes this run.

  Returns:
    The final metrics (also written to metrics.json in dirs.files), with
    "stopped": the stop.StopReason that ended the run early (a str:
    "SIGTERM", "SIGHUP", "SIGINT", or "another worker" for a worker that
    another worker's signal stopped), else None; with a target
    (config.train.target_*), "target": {"metric", "value", "reached": the
    value reached or False, "step", "seconds" since the process started}.
  Raises:
    UserError: data or model_dir off gs:// on a TPU, missing or
      inconsistent data, a model_dir
      holding another model shape (before any graph is built), a run
      directory another run holds (its run.lock); a bad record
      met in training (exit status 2); a lost peer in a multi-worker run
      (exit status 1); training that diverged (a non-finite loss or
      gradient norm: exit status 1, nothing saved after the last good
      checkpoint).
  """
  if run_plan.on_tpu:
    plan_lib.check_tpu_paths(run_plan, dirs)
  run_dir.check_buckets(dirs)
  run_dir.check_literal(dirs)  # before anything is written there
  is_chief = strategy_lib.is_chief(strategy)
  if is_chief:  # the only one that writes there
    run_dir.check_writable(dirs)
  # One run per run directory at a time: the chief holds its run.lock until
  # the end (trainer/training/run_lock.py); a second run stops here.
  with (run_lock.hold(dirs.checkpoints) if is_chief
        else contextlib.nullcontext()):
    return _train_and_evaluate(run_plan, strategy, dirs, is_chief,
                               start_over, resume_command)


def _train_and_evaluate(run_plan: plan_lib.RunPlan, strategy,
                        dirs: run_dir.RunDirs, is_chief: bool,
                        start_over: bool, resume_command: str
                        ) -> dict[str, Any]:
  """train_and_evaluate from the checkpoints' compatibility on, holding the
  run lock (the chief)."""
  if start_over:
    moved = checkpoints.move_aside(dirs.checkpoints) if is_chief else None
    if moved:
      say(f"--start_over: the earlier checkpoints are moved to {moved}")
  else:
    run_dir.check_compatible(dirs, run_plan.config)
  files = feeds_lib.list_data_files(run_plan)

  temp_dir = None if is_chief else tempfile.mkdtemp(prefix="worker_")
  paths = run_dir.Paths.for_worker(dirs, is_chief, temp_dir)
  try:
    # A stop signal from here on ends in a checkpoint after the current
    # host loop (a second Ctrl-C: at once, naming this one).
    with stop_lib.StopSignals(
        lambda: checkpoints.latest(dirs.checkpoints)) as signals:
      return _run(run_plan, strategy, files, paths, signals, start_over,
                  resume_command)
  except _PEER_ERRORS as e:
    if not strategy_lib.is_multi_worker(strategy):
      raise
    latest = checkpoints.latest(dirs.checkpoints)
    raise errors.UserError(
        f"lost contact with another worker ({_lost_peer(e)}{type(e).__name__}"
        ": it died, or sent no heartbeat to TensorFlow's coordination service "
        "for 10 s): start every worker again to resume from "
        f"{latest or 'the start (no checkpoint yet)'}; this one with: "
        f"{resume_command}",
        exit_status=1) from e
  finally:
    if temp_dir:
      shutil.rmtree(temp_dir, ignore_errors=True)


def _lost_peer(error: tf.errors.OpError) -> str:
  """"worker 1; " when the coordination service named the silent task (a
  leader that went silent itself is named by no one), else ""."""
  found = re.search(r"/job:(\w+)/replica:\d+/task:(\d+)", error.message)
  return f"{found.group(1)} {found.group(2)}; " if found else ""


def _run(run_plan: plan_lib.RunPlan, strategy, files: dict[str, list[str]],
         paths: run_dir.Paths, signals: stop_lib.StopSignals,
         start_over: bool, resume_command: str) -> dict[str, Any]:
  """Restores, trains to num_steps (or a stop, or the target), then
  evaluates and exports."""
  started = time.perf_counter()
  # Where the time goes (metrics.json's "time"): start-up runs from the
  # process's start until the first host loop.
  clock = timing.Clock.since_process_start()
  config = run_plan.config
  trainer = train_lib.Trainer(config, strategy)
  restored = None if start_over else checkpoints.restore_or_refuse(
      trainer.checkpoint_for, paths.read.checkpoints, repair=paths.is_chief)
  latest = restored.prefix if restored else None
  start_step = int(trainer.step.numpy())
  if trainer.ema is not None and latest and not train_lib.has_ema(latest):
    trainer.start_ema()
    say(f"ema_decay={config.train.ema_decay} but {latest} holds no EMA of "
        f"the weights: the EMA starts from the weights of step {start_step}")
  if start_step > config.train.num_steps:
    # Nothing written: config.json stays the checkpoint's.
    raise errors.UserError(
        f"the checkpoint is at step {start_step}, past "
        f"--config.train.num_steps={config.train.num_steps}: nothing to "
        f"train; raise num_steps (or use another --model_dir)")
  finished = start_step >= config.train.num_steps
  if finished:  # a signal from now on: the run ends after its export
    signals.finishing()
  reached = not finished and _reached_before(paths.read, run_plan.target,
                                             start_step)
  if (finished or reached) and _complete(paths.read, trainer, start_step,
                                         run_plan.keep_best):
    at = (f"at step {start_step}, where an evaluation reached "
          f"{run_plan.target.field}={run_plan.target.value}" if reached else
          f"already at step {start_step} of {config.train.num_steps}")
    say(f"{paths.read.checkpoints} is {at}, and the export and metrics.json "
        f"in {paths.read.files} are of that checkpoint: nothing to do")
    return {"step": start_step, "stopped": None}

  out = paths.write
  # A resumed run may change fields that leave the checkpoint meaningful
  # (a model shape change was refused before the restore): each change is
  # said, and the config it replaces is kept beside the new one.
  data = feeds_lib.data_identity(files)  # compared and recorded like a field
  changes = run_dir.config_changes(paths.read, config, data) if latest else []
  run_dir.write_config(out, config,
                       replaced_at=start_step if changes else None, data=data)
  if paths.is_chief:
    say(f"config:\n{config}")
  if changes:
    kept = storage.join(paths.read.files, run_dir.kept_config_name(start_step))
    say(f"resumed with changes: {run_dir.describe_changes(changes)} (the "
        f"config before them is kept as {kept})")
  say(f"strategy: {type(strategy).__name__} with {trainer.num_replicas} "
      f"replica(s); XLA per replica step: {trainer.use_xla}; "
      f"{'chief' if paths.is_chief else 'worker'}")
  say(f"data: train {run_plan.patterns['training']}, eval "
      f"{run_plan.patterns['evaluation']}")
  say(f"{'resuming from ' + latest if latest else 'starting at step 0'}; "
      f"checkpoints in {paths.read.checkpoints}" + (
          "; trained already: evaluating and exporting (the export or "
          "metrics.json of this checkpoint is missing or older: the last run "
          "ended before writing them)" if finished else ""))

  feeds = feeds_lib.Feeds(run_plan, strategy, files, start_step)
  run = _Run(run_plan, trainer, feeds, paths, start_step, strategy, started,
             clock)
  if finished:  # trained already: the final evaluation alone
    clock.switch("other")
    run.evaluate(run.step)
    run.keep_best(run.step)
    end = schedule_lib.End.FINISH
  else:
    end = run.train(signals)
  signals.finishing()
  if end is schedule_lib.End.STOP:  # the schedule saved this step
    every = (" (every worker with its own command)"
             if strategy_lib.is_multi_worker(strategy) else "")
    by = ("stopped by another worker"
          if run.stopped is stop_lib.StopReason.PEER else run.stopped)
    say(f"{by}: saved a checkpoint at step {run.step} in "
        f"{paths.read.checkpoints}; to resume{every}: {resume_command}")
    run.any_worker(False)  # a barrier: none ends while another still works
    return {"step": run.step, "stopped": run.stopped,
            "train": run.train_metrics}

  # At num_steps or the target the schedule saved and evaluated this step.
  eval_metrics = run.last_eval
  # The SavedModel first, metrics.json last: a run is finished when both are
  # there and metrics.json names this checkpoint's weights (_complete).
  # The EMA weights, when on (config.train.ema_decay).
  with clock.during("export"), trainer.ema_in_model():
    export.export_saved_model(trainer.model, out.export,
                              config.model.len_max_input,
                              replace_whole=out.export != out.files)
  results = {"step": run.step, "stopped": None, "train": run.train_metrics,
             "eval": eval_metrics, "num_replicas": trainer.num_replicas,
             "trace_counts": trainer.trace_counts(),
             "checkpoint": run.saver.latest,
             "weights_sha256": trainer.weights_sha256(), "data": data}
  if run_plan.target:
    results["target"] = run.target_record()
  if run.best:  # after the last step's weights are recorded: it loads others
    with clock.during("export"):
      results["best"] = run.export_best(out.best_export)
  # Every worker prints it: workers of one run must agree.
  say(f"final weights sha256: {results['weights_sha256']}")
  # Until now: metrics.json's own write and the lines below are not in it.
  split = clock.split()
  results["time"] = timing.report(split)
  run_dir.write_metrics(out, results)
  if paths.is_chief:
    say(f"outputs: {out.describe()}")
  if run_plan.target and end is not schedule_lib.End.TARGET:
    say(summaries.target_line(results["target"], run.step, stopping=False))
  run.any_worker(False)  # a barrier: none ends while another still writes
  if paths.is_chief:  # the run's last line
    say(done_line(clock.total(), paths.read, split))
  return results


def done_line(seconds: float, dirs: run_dir.RunDirs,
              split: dict[str, float] | None = None) -> str:
  """The last line of a finished run: how long it took (`seconds`), where
  the time went (`split`, timing.Clock.split: training's share and the
  largest overhead) and the commands that show it, e.g. "done in 1 min 02 s
  (training 71%, the largest overhead: start-up 12 s); look at it:
  tensorboard --logdir RUN; try it: python -m trainer.predict
  --model_dir=RUN 'x=3,y=4:x*y'"."""
  minutes, whole_seconds = divmod(round(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  took = (f"{seconds:.1f} s" if seconds < 60 else
          f"{minutes} min {whole_seconds:02d} s" if not hours else
          f"{hours} h {minutes:02d} min")
  # predict takes a run directory or the SavedModel's (Vertex AI's
  # AIP_MODEL_DIR): dirs.files is the one of the two this run has.
  where = f" ({timing.summary(split)})" if split else ""
  return (f"done in {took}{where}; look at it: tensorboard --logdir "
          f"{shlex.quote(dirs.logs)}; try it: python -m trainer.predict "
          f"--model_dir={shlex.quote(dirs.files)} 'x=3,y=4:x*y'")


def _reached_before(dirs: run_dir.RunDirs, target: plan_lib.Target | None,
                    step: int) -> bool:
  """Whether metrics.json in `dirs` is of `step` and its evaluation reaches
  `target` (a run that ended there at its target)."""
  if not target:
    return False
  metrics = run_dir.read_metrics(dirs) or {}
  eval_metrics = metrics.get("eval")
  return (metrics.get("step") == step and isinstance(eval_metrics, dict) and
          isinstance(eval_metrics.get(target.metric), (int, float)) and
          target.reached_by(eval_metrics))


def _complete(dirs: run_dir.RunDirs, trainer: train_lib.Trainer,
              step: int, keep_best: str | None) -> bool:
  """Whether the run in `dirs` is finished at `step`: its SavedModel is
  there and metrics.json is of this step and of these very weights (and,
  with `keep_best`, names the best of that metric: exported before it)."""
  metrics = run_dir.read_metrics(dirs)
  best = (metrics or {}).get("best")
  return bool(metrics and metrics.get("step") == step and
              metrics.get("weights_sha256") == trainer.weights_sha256() and
              export.is_saved_model(dirs.export) and (
                  not keep_best or (isinstance(best, dict) and
                                    best.get("metric") == keep_best)))


class _Run:
  """One run's host loops and what runs between them: the rows of the
  schedule (its actions are the methods named for them: checkpoint,
  histograms, evaluate, keep_best, profile_start, profile_stop), the stop
  vote, TensorBoard summaries and the progress line."""

  def __init__(self, run_plan: plan_lib.RunPlan, trainer: train_lib.Trainer,
               feeds: feeds_lib.Feeds, paths: run_dir.Paths, start_step: int,
               strategy: tf.distribute.Strategy, started: float,
               clock: timing.Clock | None = None):
    read, out = paths.read, paths.write
    self.config = run_plan.config
    self.trainer = trainer
    self.schedule = schedule_lib.Schedule.of(run_plan, self)
    self.step = start_step
    self.train_metrics: dict[str, float] = {}  # of the last host loop
    self.feeds = feeds
    self.started = started  # when _run began (without the CLI's import)
    self.any_worker = strategy_lib.any_worker(strategy)
    self.saver = checkpoints.Saver(trainer.checkpoint, out.checkpoints,
                                   self.config.train.keep_checkpoints)
    # The best evaluation's checkpoint (config.train.keep_best), known from
    # the chief's directory (a resume's best so far), saved to this worker's.
    self.best = checkpoints.Best(
        trainer.checkpoint, run_plan.keep_best, read.checkpoints,
        out.checkpoints) if run_plan.keep_best else None
    self.scalars = summaries.Scalars(out.logs)
    self.is_chief = strategy_lib.is_chief(strategy)
    # A Vertex AI tuning trial's metric file (the chief's; None elsewhere).
    self.hypertune = hypertune.Reporter.from_env() if self.is_chief else None
    # The hparams' "strategy": the class the run's "strategy:" line names,
    # without a leading underscore (DefaultDistributionStrategy).
    self.strategy_name = type(strategy).__name__.lstrip("_")
    # The chief's trace (is_chief: every TPU host is one), into its logs.
    self.profile = summaries.Profile(
        run_plan.profile if strategy_lib.is_chief(strategy) else None,
        out.logs)
    self.target = run_plan.target
    # The target's clock (metrics.json's target.seconds): from the start of
    # this process, as MLPerf's time to train (evaluations on the clock).
    self.clock_start = time.perf_counter() - _process_age(started)
    self.last_eval: dict[str, Any] | None = None  # the latest eval metrics
    # (step, value) of the target's metric at each evaluation of this run.
    self.target_values: list[tuple[int, float]] = []
    self.reached: dict[str, Any] | None = None  # metrics.json's "target"
    self.stopped: stop_lib.StopReason | None = None  # what stopped the run
    # Where the time goes: each host loop is "train" (its input wait moved
    # out), the rows "checkpoint" and "eval"; between them "other".
    self.clock = clock or timing.Clock(started)
    self._logged_seconds = dict(self.clock.seconds)  # at the last write

  def train(self, signals: stop_lib.StopSignals) -> schedule_lib.End:
    """Host loops until training ends, running what the schedule says
    between them; how it ended: FINISH (num_steps), TARGET (an evaluation
    reached it) or STOP (a stop request on any worker: self.stopped says
    which). A stop requested during the last host loop lets the run
    finish."""
    End = schedule_lib.End  # pylint: disable=invalid-name
    num_steps = self.schedule.num_steps
    # Closed at the end; an error ends its line on a terminal (the error
    # line comes below it) and adds no line elsewhere.
    with progress.Progress(total=num_steps, unit="steps", desc="train",
                           initial=self.step) as bar:
      if self.is_chief:  # once per run: the graph, the hparams
        self.scalars.write_graph(self.trainer.model_graph())
        self.scalars.write_hparams(self.config, self.strategy_name,
                                   self.trainer.num_replicas)
      try:
        self.schedule.run(self.step, End.START)
        end = None
        while end is None:
          self._host_loop(self.schedule.next_boundary(self.step), bar)
          # The stop vote first: every worker takes part, once per host
          # loop, so all stop at the same step, and a stop saves before an
          # evaluation due here (a preempted worker has seconds).
          if self.step < num_steps and self.any_worker(signals.requested):
            self.stopped = signals.reason or stop_lib.StopReason.PEER
            end = End.STOP
          elif self.step >= num_steps:
            signals.finishing()  # the final evaluation comes now
          end = self.schedule.run(self.step, end)
      except BaseException:
        self.profile.stop(None)  # a trace that a failed host loop left
        raise
    return end

  def checkpoint(self, step: int) -> None:
    """The schedule's checkpoint (once a step: the Saver skips a step it
    has)."""
    with self.clock.during("checkpoint"):
      self.saver.save(step)

  def histograms(self, step: int) -> None:
    """The chief writes the weight histograms and the gradient norm of the
    last host loop at this step."""
    if self.is_chief:
      self.scalars.write_histograms(
          step, self.trainer.model.trainable_variables,
          float(self.trainer.gradient_norm.numpy()))

  def profile_start(self, step: int) -> None:
    self.profile.start(step)

  def profile_stop(self, step: int) -> None:
    self.profile.stop(step)

  def _host_loop(self, end: int, bar: progress.Progress) -> None:
    """Trains from self.step to `end` in one compiled call; writes its
    scalars and the progress line."""
    num_steps = end - self.step
    self.clock.switch("train")  # start-up ends at the first one
    start = time.perf_counter()
    try:
      loss, accuracy, diverged = (
          t.numpy() for t in self.trainer.train_loop(
              self.feeds.train_iterator, tf.constant(num_steps)))
    except _DATA_ERRORS as e:
      raise self.feeds.data_error(e, "training") from e
    if diverged >= 0:  # before anything of this host loop is kept
      raise self._diverged(int(diverged), num_steps, float(loss))
    loss, accuracy = float(loss), float(accuracy)
    seconds = time.perf_counter() - start
    self.clock.switch("other")
    # Inside the host loop: the compiled loop's own count. The compile
    # estimate compares the loops' times without it (the first loop's wait
    # holds the pipeline's start).
    waited = float(self.trainer.input_wait.numpy())
    self.clock.move("train", "input_wait", waited)
    self.clock.host_loops.append((max(seconds - waited, 0.0), num_steps))
    if not self.train_metrics:  # the first host loop
      self._say_start_up(start, seconds, num_steps)
    self.step = end
    examples_per_sec = (num_steps * self.config.train.global_batch_size *
                        self.config.train.accumulation_steps / seconds)
    self.train_metrics = {"loss": loss, "accuracy": accuracy,
                          "learning_rate": self.trainer.learning_rate(),
                          "steps_per_sec": num_steps / seconds,
                          "examples_per_sec": examples_per_sec}
    self.scalars.write("train", self.step,
                       {**self.train_metrics, **self._time_scalars()})
    bar.update(num_steps, extra=f"loss {loss:.4f}, accuracy "
               f"{accuracy:.3f}, {examples_per_sec:,.0f} examples/s")

  def _time_scalars(self) -> dict[str, float]:
    """TensorBoard's train/time/PART_s: each part's seconds since the last
    host loop's, compile aside (as measured: the first host loop's compile
    time is in its time/train_s, the first evaluation's in time/eval_s;
    metrics.json's "time" splits it out)."""
    now = dict(self.clock.seconds)
    scalars = {f"time/{part}_s": now[part] - self._logged_seconds[part]
               for part in timing.PARTS if part != "compile"}
    self._logged_seconds = now
    return scalars

  def _diverged(self, step: int, num_steps: int,
                loss: float) -> errors.UserError:
    """The one line for a host loop in which training diverged."""
    train = self.config.train
    latest = self.saver.latest
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

  def evaluate(self, step: int) -> schedule_lib.End | None:
    """The schedule's evaluation: an eval pass (self.last_eval); End.TARGET
    when it reaches the target before num_steps (the workers vote on the
    all-reduced metrics: all end here)."""
    with self.clock.during("eval"):
      metrics = self._eval_pass()
    if self.target and self.any_worker(self.target.reached_by(metrics)):
      self.reach(metrics)
      if step < self.schedule.num_steps:
        say(summaries.target_line(self.reached, step, stopping=True))
        return schedule_lib.End.TARGET
    return None

  def keep_best(self, step: int) -> None:
    """The schedule's row after an evaluation: with config.train.keep_best,
    keeps this step's checkpoint apart if its evaluation is the best yet
    (every worker: they all save; the metrics are all-reduced, so all
    decide alike)."""
    if self.best and self.best.offer(step, self.last_eval):
      record = self.best.record
      say(f"best eval {record['metric']} so far: {record['value']:.4f} at "
          f"step {step}: kept in {self.best.prefix}")

  def export_best(self, export_dir: str) -> dict[str, Any]:
    """Exports the best checkpoint's weights as a SavedModel in
    `export_dir`; returns metrics.json's "best": {step, metric, value,
    checkpoint, export}. Loads those weights (and their EMA, when on: the
    weights that evaluation judged) into the model: after everything that
    reads the last step's."""
    trainer = self.trainer
    self.best.restore(model=trainer.model,
                      **({"ema": trainer.ema} if trainer.ema else {}))
    with trainer.ema_in_model():
      export.export_saved_model(trainer.model, export_dir,
                                self.config.model.len_max_input)
    record = {**self.best.record, "checkpoint": self.best.prefix,
              "export": export_dir}
    say(f"best: eval {record['metric']} {record['value']:.4f} at step "
        f"{record['step']}, exported to {export_dir}")
    return record

  def _eval_pass(self) -> dict[str, Any]:
    """One eval pass: says it, writes eval/ scalars (and, in a Vertex AI
    tuning trial, the metric file: trainer/training/hypertune.py) and
    returns the metrics (train.Trainer.evaluate)."""
    start = time.perf_counter()
    try:
      metrics = self.trainer.evaluate(self.feeds.eval_dataset)
    except _DATA_ERRORS as e:
      raise self._saved_first(self.feeds.data_error(e, "evaluation")) from e
    except errors.UserError as e:  # a bad record met filling the eval cache
      raise self._saved_first(e) from e
    self.clock.evaluations.append(time.perf_counter() - start)
    self.scalars.write("eval", self.step, summaries.eval_scalars(metrics))
    say(summaries.eval_line(self.step, metrics,
                            self.feeds.eval_split_examples,
                            ema=self.trainer.ema is not None))
    self.last_eval = metrics
    if self.hypertune:
      self.hypertune.report(self.step, metrics)
    if self.target:
      self.target_values.append((self.step, metrics[self.target.metric]))
    return metrics

  def _saved_first(self, error: errors.UserError) -> errors.UserError:
    """`error` (bad eval data) after a checkpoint of this step (the
    schedule's, if one was due here: it runs before the evaluation), so the
    training done so far is kept. In one process only: the workers of a
    multi-worker run save together, and the others are inside the
    evaluation."""
    if strategy_lib.is_multi_worker(self.trainer.strategy):
      return error
    self.checkpoint(self.step)
    return errors.UserError(
        f"{error} (the training so far is saved: {self.saver.latest})",
        error.exit_status)

  def reach(self, metrics: dict[str, Any]) -> None:
    """Records that `metrics`, this step's evaluation, reached the target:
    the value, the step, and the seconds since the process started."""
    self.reached = {"metric": self.target.metric, "value": self.target.value,
                    "reached": metrics[self.target.metric], "step": self.step,
                    "seconds": time.perf_counter() - self.clock_start}

  def target_record(self) -> dict[str, Any]:
    """metrics.json's "target": as `reach` recorded it, or reached False
    with the best value of this run's evaluations and its step."""
    if self.reached:
      return self.reached
    best_step, best = plan_lib.best_of(self.target.metric, self.target_values)
    return {"metric": self.target.metric, "value": self.target.value,
            "reached": False, "step": None, "seconds": None, "best": best,
            "best_step": best_step}


def _process_age(started: float) -> float:
  """Seconds since this process started (trainer/procs.py), else since
  `started` (a time.perf_counter())."""
  age = procs.age_seconds()
  return time.perf_counter() - started if age is None else age


def say(message: str) -> None:
  """Logs one of the run's own lines (INFO, through absl logging)."""
  logging.info(message)

