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


def _multi_worker(collective: str,
                  timeout_s: float) -> tf.distribute.Strategy:
  _tf_config()
  if collective not in COLLECTIVES:
    raise errors.UserError(f"collective={collective!r} is not one of "
                        f"{', '.join(COLLECTIVES)}")
  options = tf.distribute.experimental.CommunicationOptions(
      implementation=getattr(tf.distribute.experimental.CommunicationImplementation,
                             collective),
      timeout_seconds=timeout_s or None)
  return tf.distribute.MultiWorkerMirroredStrategy(
      communication_options=options)


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
    first_line = (str(e).strip().splitlines() or [""])[0]
    raise _no_tpu(address, f"{type(e).__name__}: {first_line[:200]}") from e
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
                  collective: str = "AUTO", collective_timeout_s: float = 0,
                  num_cpu_devices: int = 0) -> tf.distribute.Strategy:
  """Returns the strategy `name` (one of STRATEGIES).

  Args:
    name: the --strategy flag.
    tpu: for `tpu`: "local", a TPU name, or a grpc:// address.
    num_gpus: for `mirrored`: how many GPUs; 0 = all visible.
    collective: for `multi_worker_mirrored`: AUTO, RING or NCCL.
    collective_timeout_s: for `multi_worker_mirrored`: a collective that
      waits longer fails (a dead worker); 0 = no limit.
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
    return _multi_worker(collective, collective_timeout_s)
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
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or isinstance(strategy, tf.distribute.TPUStrategy):
    return False
  cluster = resolver.cluster_spec().as_dict()
  return sum(len(tasks) for job, tasks in cluster.items()
             if job in ("chief", "worker")) > 1
