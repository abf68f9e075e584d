"""Turns the --strategy flag into a tf.distribute strategy.

  default                 TensorFlow's default strategy (one device, no wrapper)
  one_device              GPU:0 if there is one, else CPU:0
  mirrored                all (or --num_gpus) local GPUs; without GPUs the
                          CPU devices present (one, unless configured more)
  multi_worker_mirrored   the workers of TF_CONFIG, collective all-reduce
  tpu                     the TPU of --tpu (local, a name, or grpc://host:port)
"""

from __future__ import annotations

import json
import os
import socket
from typing import Callable

import tensorflow as tf

from trainer import errors

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored",
              "tpu")
COLLECTIVES = ("AUTO", "RING", "NCCL")


def _gpus(num_gpus: int) -> list[str]:
  gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
  if num_gpus < 0:
    raise errors.UserError(f"--num_gpus={num_gpus} must be 0 (all) or positive")
  if num_gpus > len(gpus):
    raise errors.UserError(f"--num_gpus={num_gpus} but {len(gpus)} GPU(s) are "
                        "visible")
  return gpus[:num_gpus] if num_gpus else gpus


def _parse_tf_config() -> dict | None:
  """TF_CONFIG as a dict, None when unset; TensorFlow reads it for every
  strategy and fails with a traceback on bad JSON, so check it first."""
  raw = os.environ.get("TF_CONFIG")
  if raw is None:
    return None
  try:
    tf_config = json.loads(raw)
  except json.JSONDecodeError as e:
    raise errors.UserError(f"TF_CONFIG is not valid JSON ({e}): fix it, or "
                        "unset it for a single-machine run") from e
  if not isinstance(tf_config, dict):
    raise errors.UserError(f"TF_CONFIG must be a JSON object, got {raw!r}")
  return tf_config


def _tf_config() -> dict:
  tf_config = _parse_tf_config()
  if not tf_config:
    raise errors.UserError(
        "--strategy=multi_worker_mirrored needs TF_CONFIG (cluster and task "
        "of this worker, as Vertex AI and Kubernetes set it); for one "
        "machine use --strategy=mirrored")
  if "cluster" not in tf_config or "task" not in tf_config:
    raise errors.UserError("TF_CONFIG needs 'cluster' and 'task' entries, got "
                        f"{sorted(tf_config)}")
  return tf_config


def _multi_worker(collective: str) -> tf.distribute.Strategy:
  """MultiWorkerMirroredStrategy over TF_CONFIG's workers.

  No collective op gets a timeout (CommunicationOptions.timeout_seconds):
  TensorFlow waits out each op's timeout on a thread of its own, started
  with the op and alive for the whole timeout, finished op or not. At ~13
  collectives a step and 300 s, a 2-worker run grew to 15,696 threads by
  step 1,150 and a worker aborted (std::system_error, exit 134); without
  timeouts it stays at ~150 threads (measured, TF 2.21).

  A peer that dies or freezes is caught by the coordination service that
  this strategy starts (chief or worker 0 leads it): every task sends it
  heartbeats, a task silent for its heartbeat timeout (TensorFlow's default,
  10 s) is reported to the others, and their pending collectives abort with
  UnavailableError (or DeadlineExceededError when the leader itself went
  silent), which `loop` turns into one "lost contact" line. Measured with 2
  workers: kill -9 or SIGSTOP of either ends the other 6-26 s later, so no
  watchdog of our own.
  """
  tf_config = _tf_config()
  if collective not in COLLECTIVES:
    raise errors.UserError(f"collective={collective!r} is not one of "
                        f"{', '.join(COLLECTIVES)}")
  options = tf.distribute.experimental.CommunicationOptions(
      implementation=getattr(tf.distribute.experimental.CommunicationImplementation,
                             collective))
  try:
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=options)
  except tf.errors.OpError as e:  # e.g. its port is taken
    task = tf_config["task"]
    raise errors.UserError(
        f"cannot start this worker's server ({task.get('type')} "
        f"{task.get('index')} of TF_CONFIG, at {_task_address(tf_config)}): "
        f"{type(e).__name__}: {errors.first_line(e)}; is the port in use?"
    ) from e


def _task_address(tf_config: dict) -> str:
  """This task's host:port in TF_CONFIG's cluster, or "?" if not listed."""
  task = tf_config["task"]
  try:
    return tf_config["cluster"][task["type"]][task["index"]]
  except (KeyError, IndexError, TypeError):
    return "?"


def _no_tpu(address: str, cause: str) -> errors.UserError:
  return errors.UserError(
      f"no TPU reachable at --tpu={address} ({cause}); --strategy=tpu must "
      "run on a Cloud TPU VM (--tpu=local), or on worker 0 of a pod with the "
      "TPU's name")


def _tpu(tpu: str | None) -> tf.distribute.Strategy:
  address = tpu or "local"
  if address.startswith("grpc://"):
    # Connecting to an address where nothing listens waits forever: probe it.
    host, _, port = address[len("grpc://"):].rpartition(":")
    try:
      socket.create_connection((host, int(port)), timeout=10).close()
    except (OSError, ValueError) as e:
      raise _no_tpu(address, f"cannot connect to {host}:{port}: {e}") from e
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
  except (ValueError, OSError, RuntimeError, tf.errors.OpError) as e:
    raise _no_tpu(address,
                  f"{type(e).__name__}: {errors.first_line(e)[:200]}") from e
  return tf.distribute.TPUStrategy(resolver)


def split_cpu(num_devices: int) -> None:
  """Splits the CPU into `num_devices` logical devices (0: leave it whole).

  Lets `mirrored` run several replicas on a CPU-only machine. Must run
  before TensorFlow initializes its devices (before the first op).
  """
  if num_devices < 0:
    raise errors.UserError(f"--num_cpu_devices={num_devices} must be >= 0")
  if num_devices:
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
    except RuntimeError as e:
      raise errors.UserError(f"--num_cpu_devices={num_devices}: TensorFlow has "
                          f"already initialized its devices ({e})") from e


def make_strategy(name: str, tpu: str | None = None, num_gpus: int = 0,
                  collective: str = "AUTO",
                  num_cpu_devices: int = 0) -> tf.distribute.Strategy:
  """Returns the strategy `name` (one of STRATEGIES).

  Args:
    name: the --strategy flag.
    tpu: for `tpu`: "local", a TPU name, or a grpc:// address.
    num_gpus: for `mirrored`: how many GPUs; 0 = all visible.
    collective: for `multi_worker_mirrored`: AUTO, RING or NCCL.
    num_cpu_devices: split the CPU into this many logical devices first.

  Raises:
    UserError: an unknown name, or a strategy this machine cannot run.
  """
  if name not in STRATEGIES:
    raise errors.UserError(f"--strategy={name!r} is not one of "
                        f"{', '.join(STRATEGIES)}")
  split_cpu(num_cpu_devices)
  _parse_tf_config()
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "one_device":
    gpus = _gpus(0)
    return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")
  if name == "mirrored":
    devices = _gpus(num_gpus) or [
        d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)
  if name == "multi_worker_mirrored":
    return _multi_worker(collective)
  return _tpu(tpu)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the worker that writes checkpoints, summaries and exports.

  That is the `chief` task, or worker 0 of a cluster without one; every
  single-machine strategy (and TPU, driven from one host) is the chief.
  """
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or isinstance(
      strategy, tf.distribute.TPUStrategy) or not resolver.task_type:
    return True
  if resolver.task_type == "chief":
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return resolver.task_type == "worker" and resolver.task_id == 0 and (
      not has_chief)


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
  """True when the strategy spans several worker processes (TF_CONFIG)."""
  return _num_workers(strategy) > 1


def num_input_pipelines(strategy: tf.distribute.Strategy) -> int:
  """The input pipelines `distribute_datasets_from_function` builds: one per
  TPU host, one per worker process of a multi-worker run, else one."""
  if isinstance(strategy, tf.distribute.TPUStrategy):
    return strategy.extended.num_hosts
  return max(_num_workers(strategy), 1)


def _num_workers(strategy: tf.distribute.Strategy) -> int:
  """The chief and worker tasks of TF_CONFIG's cluster (0 without one, and
  for TPUs, whose cluster names TPU workers, not trainer processes)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or isinstance(strategy, tf.distribute.TPUStrategy):
    return 0
  cluster = resolver.cluster_spec().as_dict()
  return sum(len(tasks) for job, tasks in cluster.items()
             if job in ("chief", "worker"))


def any_worker(strategy: tf.distribute.Strategy) -> Callable[[bool], bool]:
  """A function of this worker's flag: True when any worker's is set (the
  stop vote).

  Multi-worker: an all-reduce over every replica (every worker must call it
  at the same point: once per host loop). Otherwise the flag itself.
  """
  if not is_multi_worker(strategy):
    return bool

  @tf.function
  def count(flag: tf.Tensor) -> tf.Tensor:
    per_replica = strategy.run(lambda: tf.identity(flag))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

  return lambda flag: int(count(tf.constant(int(flag)))) > 0
