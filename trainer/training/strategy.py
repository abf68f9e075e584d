"""Turns the --strategy flag into a tf.distribute strategy.

  default                 TensorFlow's default strategy (one device, no wrapper)
  one_device              GPU:0 if there is one, else CPU:0
  mirrored                all (or --num_gpus) local GPUs; without GPUs the
                          CPU devices present (one, unless configured more)
  multi_worker_mirrored   the workers of TF_CONFIG, collective all-reduce
  tpu                     the TPU of --tpu (local, a name, or grpc://host:port)
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sys
import time
from typing import Callable

import numpy as np
import tensorflow as tf

from trainer import errors
from trainer.cloud import preflight
from trainer.cloud import storage
from trainer.data import manifest

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


def _master_as_chief(tf_config: dict | None) -> None:
  """Renames a `master` task of TF_CONFIG to `chief`, in the environment.

  The legacy Cloud ML Engine / AI Platform Training service named the
  first worker pool's task `master`; Vertex AI and TensorFlow name it
  `chief`. TensorFlow does not know `master`: TFConfigClusterResolver
  passes the cluster to multi_worker_util, whose _validate_cluster_spec
  accepts the task types chief, worker, evaluator and ps only (a ValueError
  traceback otherwise; read in TF 2.21). So the job is renamed here, before
  any strategy reads TF_CONFIG, and written back to os.environ, which
  TensorFlow reads again at every cluster_spec(): from then on the master
  is the chief everywhere (is_chief, the coordination service's leader,
  the config comparison), and messages call it `chief`.

  Raises:
    UserError: a cluster with both a `master` and a `chief` job.
  """
  if not tf_config or not isinstance(tf_config.get("cluster"), dict):
    return
  cluster = tf_config["cluster"]
  if "master" not in cluster:
    return
  if "chief" in cluster:
    raise errors.UserError(
        "TF_CONFIG's cluster has both a 'master' and a 'chief' job: they are "
        "the same task (the legacy AI Platform name and TensorFlow's); keep "
        "one of them")
  tf_config["cluster"] = {"chief": cluster["master"], **{
      job: addresses for job, addresses in cluster.items() if job != "master"}}
  task = tf_config.get("task")
  if isinstance(task, dict) and task.get("type") == "master":
    tf_config["task"] = {**task, "type": "chief"}
  os.environ["TF_CONFIG"] = json.dumps(tf_config)


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
  _check_cluster(tf_config["cluster"], tf_config["task"])
  return tf_config


# The jobs of a MultiWorkerMirroredStrategy cluster (an "evaluator" task
# runs outside it, and parameter servers belong to another strategy).
_JOBS = ("chief", "worker")


def _check_cluster(cluster, task) -> None:
  """TF_CONFIG's cluster and task are a MultiWorkerMirrored one: jobs chief
  (one task at most; the legacy `master` is renamed to it first) and worker,
  each a list of "host:port" addresses, and this task one of them
  (TensorFlow's own errors here are tracebacks).

  Raises:
    UserError: naming the entry, what it holds and what it should.
  """
  if not isinstance(cluster, dict) or not cluster:
    raise errors.UserError(
        f"TF_CONFIG's cluster must map jobs to address lists, got {cluster!r}"
        ': e.g. {"worker": ["host1:2222", "host2:2222"]}')
  others = sorted(set(cluster) - set(_JOBS))
  if others:
    raise errors.UserError(
        f"TF_CONFIG's cluster has the job(s) {', '.join(others)}: "
        "--strategy=multi_worker_mirrored runs 'chief' and 'worker' tasks "
        "only (parameter servers are another strategy)")
  for job, addresses in cluster.items():
    if isinstance(addresses, dict):  # a sparse job: {index: address}
      addresses = list(addresses.values())
    if (not isinstance(addresses, list) or not addresses or not all(
        isinstance(a, str) and a.rpartition(":")[2].isdigit()
        for a in addresses)):
      raise errors.UserError(
          f"TF_CONFIG's cluster job {job!r} must be a list of \"host:port\" "
          f"addresses, got {addresses!r}")
  if len(cluster.get("chief", [])) > 1:
    raise errors.UserError(
        f"TF_CONFIG's cluster has {len(cluster['chief'])} 'chief' (or "
        "'master') tasks: a cluster has at most one, the others are 'worker's")
  if not isinstance(task, dict):
    raise errors.UserError(f"TF_CONFIG's task must be an object with 'type' "
                           f"and 'index', got {task!r}")
  kind, index = task.get("type"), task.get("index")
  if kind not in cluster:
    raise errors.UserError(
        f"TF_CONFIG's task type {kind!r} is not a job of its cluster "
        f"({', '.join(sorted(cluster))})")
  indexes = ([int(i) for i in cluster[kind]] if isinstance(cluster[kind], dict)
             else list(range(len(cluster[kind]))))
  if not isinstance(index, int) or index not in indexes:
    raise errors.UserError(
        f"TF_CONFIG's task index {index!r} is not one of its cluster's "
        f"{kind!r} job (indexes {', '.join(map(str, indexes))})")


def _multi_worker(collective: str,
                  startup_timeout_s: float) -> tf.distribute.Strategy:
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

  The leader (chief, else worker 0) first waits for the other tasks'
  servers (_wait_for_peers): the strategy's construction waits for them
  inside TensorFlow, holding Python's GIL, silent and deaf to signals.
  """
  tf_config = _tf_config()
  if collective not in COLLECTIVES:
    raise errors.UserError(f"collective={collective!r} is not one of "
                        f"{', '.join(COLLECTIVES)}")
  if startup_timeout_s < 0:
    raise errors.UserError(
        f"config.train.startup_timeout_s={startup_timeout_s} must be >= 0 "
        "(seconds; 0 = wait for the other workers without a limit)")
  _wait_for_peers(tf_config, startup_timeout_s)
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


# Config fields the workers need not agree on: read before the comparison,
# by the chief (worker 0) alone.
PER_WORKER_FIELDS = ("config.train.startup_timeout_s",)
REPORT_EVERY_S = 15  # the leader's "waiting for" line, while peers are missing
_FIRST_REPORT_S = 2  # peers started together are up by then: no line


def _cluster_tasks(cluster: dict) -> list[tuple[str, int, str]]:
  """(job, index, address) of the chief and worker tasks, chief first:
  the trainer processes of a run, in the order workers are reported."""
  tasks = []
  for job in ("chief", "worker"):
    addresses = cluster.get(job) or []
    if isinstance(addresses, dict):  # a sparse cluster: {index: address}
      addresses = [addresses[k] for k in sorted(addresses, key=int)]
    tasks += [(job, i, str(a)) for i, a in enumerate(addresses)]
  return tasks


def _task_name(job: str, index: int) -> str:
  return f"{job} {index}" if job == "worker" else job


def _reachable(address: str) -> bool:
  """Whether something accepts TCP connections at host:port (a started
  worker's gRPC server)."""
  host, _, port = address.rpartition(":")
  try:
    socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
  except (OSError, ValueError):
    return False
  return True


class _Stopped(Exception):
  pass


def _wait_for_peers(tf_config: dict, timeout_s: float) -> None:
  """On the coordination service's leader (the chief, else worker 0):
  returns once every other task of TF_CONFIG's cluster accepts connections.

  Measured (TF 2.21): MultiWorkerMirroredStrategy's construction on the
  leader waits inside TensorFlow for every task to register, holding the
  GIL: nothing printed, no Python thread runs, Ctrl-C and SIGTERM do nothing
  (only SIGKILL ends it). The other tasks start their servers at once and
  listen while they wait for the leader, so the leader, in Python, probes
  them first: it says which tasks it waits for (after 2 s, then every 15 s),
  gives up after `timeout_s` (config.train.startup_timeout_s; 0 = never)
  with exit status 1, and a stop signal ends it at once (128 + the signal).
  A peer that dies between the probe and the strategy's start is not seen.

  Raises:
    UserError: a task still missing after timeout_s (status 1); SIGINT,
      SIGTERM or SIGHUP while waiting (status 130, 143, 129).
  """
  cluster = tf_config.get("cluster")
  task = tf_config.get("task")
  if not isinstance(cluster, dict) or not isinstance(task, dict):
    return  # TensorFlow says what is wrong
  tasks = _cluster_tasks(cluster)
  leader = tasks[0][:2] if tasks else None
  if (task.get("type"), task.get("index")) != leader:
    return
  missing = [(_task_name(job, i), a) for job, i, a in tasks[1:]]

  def who() -> str:
    return ", ".join(f"{name} at {address}" for name, address in missing)

  def on_signal(signum, frame):
    del frame
    raise _Stopped(signum)

  handled = [s for s in (signal.SIGTERM, signal.SIGHUP)
             if signal.getsignal(s) is not signal.SIG_IGN]
  previous = {s: signal.signal(s, on_signal) for s in handled}
  start = time.monotonic()
  next_report = start + _FIRST_REPORT_S
  limit = (f"giving up after {timeout_s:g} s" if timeout_s else
           "no time limit") + " (config.train.startup_timeout_s)"
  try:
    while True:
      missing = [(n, a) for n, a in missing if not _reachable(a)]
      if not missing:
        return
      waited = time.monotonic() - start
      if timeout_s and waited >= timeout_s:
        raise errors.UserError(
            f"{who()} never started: waited {waited:.0f} s "
            "(config.train.startup_timeout_s) for the tasks of TF_CONFIG's "
            "cluster; start every worker, or fix the addresses in TF_CONFIG",
            exit_status=1)
      if time.monotonic() >= next_report:
        print(f"waiting for {who()} (TF_CONFIG's cluster) to start: "
              f"{waited:.0f} s so far, {limit}", file=sys.stderr, flush=True)
        next_report += REPORT_EVERY_S
      time.sleep(0.5)
  except (_Stopped, KeyboardInterrupt) as e:
    signum = e.args[0] if isinstance(e, _Stopped) else signal.SIGINT
    name = signal.Signals(signum).name
    raise errors.UserError(
        f"stopped by {name} while waiting for {who()} to start: nothing "
        "trained, nothing to save", exit_status=128 + signum) from None
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def check_workers_agree(strategy: tf.distribute.Strategy, config,
                        data_dir: str | None) -> None:
  """Ends every worker of a multi-worker run whose plan differs.

  Every worker sends the others its resolved config (every field) and the
  identity of its data set (--data_dir's manifest.json sha256, or its file
  names and sizes without one; the config's generated data set without
  --data_dir); each compares them with the first worker's (the chief's).
  Call it on every worker at the same point, after the strategy is made and
  before any graph that depends on the config: different shapes or step
  counts otherwise end in a shape mismatch or a hang, different learning
  rates or data in a silent mix.

  Raises:
    UserError: the first field that differs (in the config's order, the data
      set last), naming both workers' values; status 2.
  """
  if not is_multi_worker(strategy):
    return
  fields = [field for field in _flatten("config", config.to_dict())
            if field[0] not in PER_WORKER_FIELDS] + [_data_identity(data_dir)]
  resolver = strategy.cluster_resolver
  tasks = _cluster_tasks(resolver.cluster_spec().as_dict())
  names = [_task_name(job, i) for job, i, _ in tasks]
  me = [(job, i) for job, i, _ in tasks].index(
      (resolver.task_type, resolver.task_id))
  encoded = np.frombuffer(json.dumps(fields).encode(), np.uint8)
  try:
    lengths = _gather(strategy, np.array([encoded.size]), me, len(tasks))
    row = np.zeros(int(lengths.max()), np.int32)
    row[:encoded.size] = encoded
    rows = _gather(strategy, row, me, len(tasks))
  except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
          tf.errors.AbortedError, tf.errors.CancelledError) as e:
    raise errors.UserError(
        "lost contact with another worker while the workers compared their "
        f"configs ({type(e).__name__}: {errors.first_line(e)[:200]}): start "
        "every worker again", exit_status=1) from e
  plans = [json.loads(bytes(r[:n].astype(np.uint8)).decode())
           for r, n in zip(rows, lengths[:, 0])]
  first = {key: (value, shown) for key, value, shown in plans[0]}
  for worker, plan in enumerate(plans[1:], start=1):
    other = {key: (value, shown) for key, value, shown in plan}
    for key in list(first) + [k for k in other if k not in first]:
      mine, theirs = first.get(key, (None, "(none)")), other.get(
          key, (None, "(none)"))
      if mine[0] != theirs[0]:
        raise errors.UserError(
            f"the workers disagree on {key} ({names[0]}: {_short(mine[1])}, "
            f"{names[worker]}: {_short(theirs[1])}): start every worker "
            "with the same config and data")


def _short(text: str, limit: int = 120) -> str:
  return text if len(text) <= limit else text[:limit - 1] + "…"


def _flatten(prefix: str, value) -> list[list[str]]:
  """[[field, canonical JSON, shown], ...] of a config dict, in its order."""
  if isinstance(value, dict):
    return [item for key, child in value.items()
            for item in _flatten(f"{prefix}.{key}", child)]
  canonical = json.dumps(value, sort_keys=True, default=repr)
  return [[prefix, canonical, canonical]]


def _data_identity(data_dir: str | None) -> list[str]:
  """["the data set", what identifies it, what to show]: the manifest's
  sha256 (not the path: workers may mount it at different paths)."""
  key = "the data set (--data_dir)"
  if data_dir is None:
    generated = "generated from config.data and config.seed"
    return [key, generated, generated]
  digest = manifest.sha256(data_dir)
  if digest:
    return [key, digest, f"{data_dir} with manifest.json sha256 {digest[:12]}"]
  listing = sorted(
      (name, tf.io.gfile.stat(storage.join(data_dir, name)).length)
      for name in tf.io.gfile.listdir(data_dir)) if tf.io.gfile.isdir(
          data_dir) else []
  digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
  return [key, digest, f"{data_dir} without manifest.json, {len(listing)} "
          f"file(s), names and sizes sha256 {digest[:12]}"]


def _gather(strategy: tf.distribute.Strategy, row: np.ndarray, index: int,
            count: int) -> np.ndarray:
  """Every worker's `row` (same length on each), by worker: a SUM
  all-reduce of a [count, len] tensor holding this worker's row at `index`
  (divided by each worker's replica count, its last column)."""
  full = np.zeros((count, row.size + 1), np.int32)
  full[index, :-1] = row
  full[index, -1] = 1

  @tf.function
  def total(value: tf.Tensor) -> tf.Tensor:
    per_replica = strategy.run(lambda: tf.identity(value))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

  summed = total(tf.constant(full)).numpy()
  return summed[:, :-1] // summed[:, -1:]


def _no_tpu(address: str, cause: str) -> errors.UserError:
  return errors.UserError(
      f"no TPU reachable at --tpu={address} ({cause}); --strategy=tpu must "
      "run on a Cloud TPU VM (--tpu=local), or on worker 0 of a pod with the "
      "TPU's name")


def _tpu(tpu: str | None) -> tf.distribute.Strategy:
  # A generation this TensorFlow cannot run (TPU7x) is one line, before
  # anything touches the TPU.
  preflight.check_tpu_host(preflight.host_accelerator_type(os.environ),
                           tf.__version__)
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
                  num_cpu_devices: int = 0,
                  startup_timeout_s: float = 600) -> tf.distribute.Strategy:
  """Returns the strategy `name` (one of STRATEGIES).

  Args:
    name: the --strategy flag.
    tpu: for `tpu`: "local", a TPU name, or a grpc:// address.
    num_gpus: for `mirrored`: how many GPUs; 0 = all visible.
    collective: for `multi_worker_mirrored`: AUTO, RING or NCCL.
    num_cpu_devices: split the CPU into this many logical devices first.
    startup_timeout_s: for `multi_worker_mirrored` on the chief (worker 0):
      how long to wait for the other workers to start (0: no limit).

  Raises:
    UserError: an unknown name, or a strategy this machine cannot run.
  """
  if name not in STRATEGIES:
    raise errors.UserError(f"--strategy={name!r} is not one of "
                        f"{', '.join(STRATEGIES)}")
  split_cpu(num_cpu_devices)
  _master_as_chief(_parse_tf_config())
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
    return _multi_worker(collective, startup_timeout_s)
  return _tpu(tpu)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the worker that writes checkpoints, summaries and exports.

  That is the `chief` task (or the legacy `master`, which make_strategy
  renamed to `chief`), or worker 0 of a cluster without one; every
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
