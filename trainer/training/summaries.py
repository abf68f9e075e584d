"""What a run reports: TensorBoard scalars of train and eval, the model's
graph, weight histograms and the gradient norm, the config as hparams, the
eval line, and profiler traces of chosen host loops.

TensorBoard's layout of a run's logs (`logdir`: the --model_dir the run
prints as model_dir, or AIP_TENSORBOARD_LOG_DIR on Vertex AI):
  train/  scalars of each host loop; the graph; histograms and gradient_norm
  eval/   scalars of each evaluation; the run's hparams session (the config,
          the strategy and the replica count) whose metrics are eval/'s last
          accuracy and loss

The session sits in eval/ beside its metrics because TensorBoard's HParams
plugin looks a metric up in the run "<session's run>/<metric group>": a
session in the log root is the run "." with --logdir=<model_dir>, and
"./eval" names no run (the metrics were missing there). In eval/ with the
group "" it is the run "eval" (--logdir=<model_dir>) or "<name>/eval"
(--logdir=<a directory of runs>), its metrics in that same run. The trial
(session group) is named by the run (`trial_name`), not by a hash of its
hparams.
"""

from __future__ import annotations

from typing import Any

from absl import logging
import ml_collections
import numpy as np
from tensorboard.plugins.hparams import api as hp
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams import plugin_data_pb2
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from trainer.cloud import storage
from trainer.data import problems
from trainer.training import plan as plan_lib


class Scalars:
  """The run's train/ and eval/ summary writers under `logdir`: scalars,
  into train/ the graph and the histograms, into eval/ the hparams."""

  def __init__(self, logdir: str):
    self.logdir = logdir
    self._writers = {
        name: tf.summary.create_file_writer(storage.join(logdir, name))
        for name in ("train", "eval")}

  def write(self, name: str, step: int, scalars: dict[str, float]) -> None:
    """Writes `scalars` at `step` to the `name` ("train", "eval") writer,
    flushed (a run stopped next has them)."""
    writer = self._writers[name]
    with writer.as_default(step=step):
      for tag, value in scalars.items():
        tf.summary.write(tag, tf.constant(value, tf.float32),
                         metadata=_SCALAR_METADATA)
    writer.flush()

  def write_graph(self, graph: tf.Graph) -> None:
    """Writes `graph` for TensorBoard's Graphs dashboard (train/)."""
    writer = self._writers["train"]
    with writer.as_default():
      tf.summary.graph(graph)
    writer.flush()

  def write_histograms(self, step: int, variables,
                       gradient_norm: float) -> None:
    """Writes a histogram of each of `variables` (tagged by its path, as
    "dense/kernel") and the scalar gradient_norm unless it is NaN (not known
    on this path: train.Trainer._step_results) at `step` to train/."""
    writer = self._writers["train"]
    with writer.as_default(step=step):
      for variable in variables:
        # On the host: a TPU variable's values are copied here first.
        tf.summary.histogram(variable.path, np.asarray(variable.value))
      if not np.isnan(gradient_norm):
        tf.summary.write("gradient_norm",
                         tf.constant(gradient_norm, tf.float32),
                         metadata=_SCALAR_METADATA)
    writer.flush()

  def write_hparams(self, config: ml_collections.ConfigDict, strategy: str,
                    num_replicas: int) -> None:
    """Writes the run's hparams session to eval/: the config's fields
    (config_hparams), `strategy` (the tf.distribute strategy's class name)
    and `num_replicas`, as the trial trial_name(logdir), with eval/'s
    accuracy and loss as its metrics (see the module docstring for why
    there), titled by COMPARED_HPARAMS, SHOWN_HPARAMS first."""
    hparams = {**config_hparams(config), "strategy": strategy,
               "num_replicas": num_replicas}
    experiment_summary = hp.hparams_config_pb(
        hparams=[hp.HParam(name, display_name=COMPARED_HPARAMS.get(name))
                 for name in hparams],
        # Group "": the metrics are in the session's own run, eval/.
        metrics=[hp.Metric(tag, display_name=f"eval {tag}")
                 for tag in HPARAMS_METRICS])
    # The plugin orders the experiment's hparams by (not differs, name)
    # whatever their order here, and the dashboard shows the first five:
    # `differs` is the only say in which come first (SHOWN_HPARAMS). HParam
    # has no argument for it, so it is set in the proto.
    value = experiment_summary.value[0]
    experiment = hp_metadata.parse_experiment_plugin_data(
        value.metadata.plugin_data.content)
    for info in experiment.hparam_infos:
      info.differs = info.name in SHOWN_HPARAMS
    value.metadata.CopyFrom(hp_metadata.create_summary_metadata(
        plugin_data_pb2.HParamsPluginData(experiment=experiment)))
    writer = self._writers["eval"]  # one writer (event file) per directory
    with writer.as_default():
      tf.summary.experimental.write_raw_pb(
          experiment_summary.SerializeToString(), step=0)
      hp.hparams(hparams, trial_id=trial_name(self.logdir))
    writer.flush()


# The eval/ scalars the HParams dashboard shows as a session's metrics (the
# last value of each: the final evaluation's).
HPARAMS_METRICS = ("accuracy", "loss")

# The hparams worth comparing between runs, with their column titles.
# TensorBoard 2.21's HParams dashboard lists the hparams flagged `differs`
# first, each part ordered by name, and shows the first five columns until a
# user ticks more: SHOWN_HPARAMS are the five flagged, so they are the
# columns a user sees (model.hidden_size, num_replicas,
# train.global_batch_size, train.learning_rate, train.num_steps); the other
# hparams are listed after them by name, unticked. "strategy" and
# "num_replicas" are the run's, not config fields.
COMPARED_HPARAMS = {
    "train.learning_rate": "learning rate",
    "train.global_batch_size": "global batch size",
    "model.hidden_size": "hidden size",
    "model.dense_size": "dense size",
    "model.num_heads": "heads",
    "model.num_layers": "layers",
    "model.ffn_size": "ffn size",
    "train.num_steps": "steps",
    "train.warmup_steps": "warm-up steps",
    "train.min_learning_rate_ratio": "min learning rate ratio",
    "strategy": "strategy",
    "num_replicas": "replicas",
}
SHOWN_HPARAMS = ("train.learning_rate", "train.global_batch_size",
                 "model.hidden_size", "train.num_steps", "num_replicas")


def config_hparams(config: ml_collections.ConfigDict
                   ) -> dict[str, bool | int | float | str]:
  """The config flattened for the HParams dashboard: {"model.hidden_size":
  15, "train.learning_rate": 0.003, "seed": 0, ...}; a value of another type
  (None, a list) as its str()."""
  flat = {}

  def add(prefix: str, section: ml_collections.ConfigDict) -> None:
    for name, value in section.items():
      if isinstance(value, ml_collections.ConfigDict):
        add(f"{prefix}{name}.", value)
      elif isinstance(value, (bool, int, float, str)):
        flat[prefix + name] = value
      else:
        flat[prefix + name] = str(value)

  add("", config)
  return flat


def trial_name(logdir: str) -> str:
  """The name of the run's trial in the HParams dashboard: the last
  component of `logdir` ("run1" for --model_dir=/runs/run1 or
  gs://bucket/runs/run1), which is also the run's name in TensorBoard's run
  list when --logdir is the directory above it."""
  return logdir.rstrip("/").rsplit("/", 1)[-1]


def eval_scalars(metrics: dict[str, Any]) -> dict[str, float]:
  """The eval/ scalars of Trainer.evaluate's metrics: loss, accuracy, and
  per operation with examples loss_<op>, accuracy_<op>."""
  scalars = {"loss": metrics["loss"], "accuracy": metrics["accuracy"]}
  for name, op_metrics in metrics["by_op"].items():
    if op_metrics["examples"]:
      scalars[f"loss_{name}"] = op_metrics["loss"]
      scalars[f"accuracy_{name}"] = op_metrics["accuracy"]
  return scalars


def eval_line(step: int, metrics: dict[str, Any],
              split_examples: int | None, ema: bool = False) -> str:
  """"eval at step N: loss L, accuracy A over C examples; + 0.9, ...";
  `split_examples`: what a full pass of the split holds (manifests), to
  say how many static shapes left out, or None; `ema`: the metrics are of
  the EMA of the weights ("eval (EMA weights) at step N")."""
  by_op = ", ".join(
      f"{operator} " + (f"{op_metrics['accuracy']:.4f}"
                        if op_metrics["examples"] else "n/a")
      for operator, op_metrics in zip(problems.OPERATORS,
                                      metrics["by_op"].values()))
  count = metrics["examples"]
  if split_examples is None or split_examples == count:
    over = f"{count:,} examples"
  else:
    over = (f"{count:,} of {split_examples:,} examples "
            f"({split_examples - count:,} left out: static shapes drop each "
            "input pipeline's last partial batch)")
  return (f"eval{' (EMA weights)' if ema else ''} at step {step}: loss {metrics['loss']:.4f}, accuracy "
          f"{metrics['accuracy']:.4f} over {over}; {by_op}")


def target_line(target: dict[str, Any], last_step: int,
                stopping: bool) -> str:
  """The line of config.train.target_*, of metrics.json's "target":
  "target: eval accuracy 0.9912 >= 0.99 at step 12000 after 301.4 s:
  stopping", or that no evaluation up to `last_step` reached it, and the
  best value."""
  metric, value = target["metric"], target["value"]
  comparison = plan_lib.comparison(metric)
  if target["reached"] is False:
    return (f"target: not reached: no evaluation up to step {last_step} had "
            f"{metric} {comparison} {value:g} (the best: {target['best']:.4f}"
            f" at step {target['best_step']})")
  return (f"target: eval {metric} {target['reached']:.4f} {comparison} "
          f"{value:g} at step {target['step']} after {target['seconds']:.1f} "
          f"s{': stopping' if stopping else ''}")


# TensorBoard's scalar format, written with TensorFlow's own summary op.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR)


class Profile:
  """A tf.profiler trace of the host loops inside config.train.profile_steps,
  written to `logdir`/plugins/profile/<time>/<host>.xplane.pb (TensorBoard's
  profile plugin reads it; writing it needs TensorFlow alone)."""

  def __init__(self, window: plan_lib.ProfileWindow | None, logdir: str):
    self.window = window  # None: no trace
    self.logdir = logdir
    self.first_step = None  # where the running trace started, or None

  def start(self, step: int) -> None:
    """Starts the trace if the host loop after `step` is one of the traced
    ones and none is running (the schedule runs it at the window's start and
    at a run's first step)."""
    if self.window and self.first_step is None and self.window.covers(step):
      tf.profiler.experimental.start(self.logdir)
      self.first_step = step

  def stop(self, last_step: int | None) -> None:
    """Stops a running trace (writes it) and says where it went; last_step
    None: a host loop failed."""
    if self.first_step is None:
      return
    tf.profiler.experimental.stop()
    runs = storage.glob_in(storage.join(self.logdir, "plugins", "profile"),
                           "*")
    steps = (f"steps {self.first_step} to {last_step}" if last_step is not None
             else f"from step {self.first_step} until a host loop failed")
    logging.info(f"profile: {steps} traced to "
                 f"{runs[-1] if runs else self.logdir}; view it with "
                 f"tensorboard --logdir {self.logdir} (Profile tab: "
                 "pip install tensorboard-plugin-profile)")
    self.first_step = None
