"""What a run reports: TensorBoard scalars of train and eval, the model's
graph, weight histograms and the gradient norm, the config as hparams, the
eval line, and profiler traces of chosen host loops.

TensorBoard's layout of a run's logs (`logdir`):
  train/  scalars of each host loop; the graph; histograms and gradient_norm
  eval/   scalars of each evaluation
  .       the hparams (the config) of the session: its metrics are the last
          eval/loss and eval/accuracy, so runs of a recipe search under one
          --logdir compare in the HParams dashboard.
"""

from __future__ import annotations

import contextlib
from typing import Any

from absl import logging
import ml_collections
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from trainer.cloud import storage
from trainer.data import problems
from trainer.training import plan as plan_lib


class Scalars:
  """The run's train/ and eval/ summary writers under `logdir`: scalars,
  and into train/ the graph and the histograms."""

  def __init__(self, logdir: str):
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


# The eval/ scalars the HParams dashboard shows as a session's metrics (the
# last value of each: the final evaluation's).
HPARAMS_METRICS = ("accuracy", "loss")


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


def write_hparams(logdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the config as the hparams of the session at `logdir` (its root:
  train/ and eval/ are below it), with the eval/ metrics named."""
  # TensorBoard's hparams API; imported here: only the chief writes them.
  from tensorboard.plugins.hparams import api as hp  # pylint: disable=g-import-not-at-top
  hparams = config_hparams(config)
  writer = tf.summary.create_file_writer(logdir)
  with writer.as_default():
    hp.hparams_config(
        hparams=[hp.HParam(name) for name in hparams],
        metrics=[hp.Metric(tag, group="eval", display_name=f"eval {tag}")
                 for tag in HPARAMS_METRICS])
    hp.hparams(hparams)
  writer.close()


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
              split_examples: int | None) -> str:
  """"eval at step N: loss L, accuracy A over C examples; + 0.9, ...";
  `split_examples`: what a full pass of the split holds (manifests), to
  say how many static shapes left out, or None."""
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
  return (f"eval at step {step}: loss {metrics['loss']:.4f}, accuracy "
          f"{metrics['accuracy']:.4f} over {over}; {by_op}")


def target_line(target: dict[str, Any], last_step: int,
                stopping: bool) -> str:
  """The line of config.train.target_*, of metrics.json's "target":
  "target: eval accuracy 0.9912 >= 0.99 at step 12000 after 301.4 s:
  stopping", or that no evaluation up to `last_step` reached it, and the
  best value."""
  metric, value = target["metric"], target["value"]
  comparison = ">=" if metric == "accuracy" else "<="
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

  @contextlib.contextmanager
  def host_loop(self, step: int, num_steps: int):
    """Traces the host loop of num_steps steps after `step` if it is one of
    the profiled ones (the schedule makes its bounds host-loop bounds)."""
    if self.window and self.first_step is None and self.window.covers(step):
      tf.profiler.experimental.start(self.logdir)
      self.first_step = step
    try:
      yield
    except BaseException:
      self.stop(None)
      raise
    if self.window and step + num_steps >= self.window.end:
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
    logging.info(f"profile: {steps} traced to "
                 f"{runs[-1] if runs else self.logdir}; view it with "
                 f"tensorboard --logdir {self.logdir} (Profile tab: "
                 "pip install tensorboard-plugin-profile)")
    self.first_step = None
