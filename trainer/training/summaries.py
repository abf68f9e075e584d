"""What a run reports: TensorBoard scalars of train and eval, the eval
line, and profiler traces of chosen host loops."""

from __future__ import annotations

import contextlib
from typing import Any

from absl import logging
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from trainer.cloud import storage
from trainer.data import problems
from trainer.training import plan as plan_lib


class Scalars:
  """The run's train/ and eval/ scalar writers under `logdir`."""

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
