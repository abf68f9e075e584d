import json
import os
import socket
import threading
import time
import types

import pytest
import tensorflow as tf

from trainer import errors
from trainer.training import strategy as strategy_lib

from tests.helpers import closed_port


def test_unknown_strategy():
  with pytest.raises(errors.UserError,
                     match="--strategy='bogus' is not one of default, "
                     "one_device, mirrored, multi_worker_mirrored, tpu"):
    strategy_lib.make_strategy("bogus")


def test_single_machine_strategies_on_cpu():
  assert strategy_lib.make_strategy("default") is tf.distribute.get_strategy()
  one = strategy_lib.make_strategy("one_device")
  assert isinstance(one, tf.distribute.OneDeviceStrategy)
  assert "CPU:0" in one.extended.worker_devices[0].upper()
  mirrored = strategy_lib.make_strategy("mirrored")
  assert isinstance(mirrored, tf.distribute.MirroredStrategy)
  assert mirrored.num_replicas_in_sync == len(
      tf.config.list_logical_devices("CPU"))


def test_more_gpus_than_visible():
  with pytest.raises(errors.UserError,
                     match=r"--num_gpus=2 but 0 GPU\(s\) are visible"):
    strategy_lib.make_strategy("mirrored", num_gpus=2)


@pytest.mark.parametrize("tf_config, message", [
    (None, "needs TF_CONFIG"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ("[1, 2]", "TF_CONFIG must be a JSON object"),
    ('{"cluster": {}}', "needs 'cluster' and 'task' entries"),
    # Each of these was a TensorFlow traceback (the string address: a wait
    # for "workers" named by its characters).
    ('{"cluster": {"worker": "h:1"}, "task": {"type": "worker", "index": 0}}',
     r"cluster job 'worker' must be a list of \"host:port\" addresses, got "
     "'h:1'"),
    ('{"cluster": {"worker": ["h:1", "h:2"]}, '
     '"task": {"type": "worker", "index": 5}}',
     r"task index 5 is not one of its cluster's 'worker' job \(indexes 0, "
     r"1\)"),
    ('{"cluster": {"worker": ["h:1"], "ps": ["h:3"]}, '
     '"task": {"type": "ps", "index": 0}}',
     "has the job\\(s\\) ps: --strategy=multi_worker_mirrored runs 'chief' "
     "and 'worker' tasks only"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief", "index": 0}}',
     r"task type 'chief' is not a job of its cluster \(worker\)"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker"}}',
     "task index None is not one of"),
    ('{"cluster": [], "task": {}}', "cluster must map jobs to address lists"),
    ('{"cluster": {"master": ["h:1"], "chief": ["h:2"]}, '
     '"task": {"type": "master", "index": 0}}',
     "TF_CONFIG's cluster has both a 'master' and a 'chief' job: they are the "
     "same task"),
    ('{"cluster": {"master": ["h:1", "h:2"]}, "task": {"type": "master", '
     '"index": 0}}', "TF_CONFIG's cluster has 2 'chief' \\(or 'master'\\) "
     "tasks: a cluster has at most one"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "master", "index": 0}}',
     r"task type 'master' is not a job of its cluster \(worker\)"),
])
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, tf_config,
                                              message):
  if tf_config is None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
  else:
    monkeypatch.setenv("TF_CONFIG", tf_config)
  with pytest.raises(errors.UserError, match=message):
    strategy_lib.make_strategy("multi_worker_mirrored")


def test_a_master_task_is_the_chief_for_tensorflow_too(monkeypatch):
  """The legacy service's `master` becomes `chief` in TF_CONFIG itself, so
  TensorFlow's resolver (which refuses `master`) reads a chief, and
  is_chief answers for it."""
  monkeypatch.setenv("TF_CONFIG", json.dumps({
      "cluster": {"worker": ["127.0.0.1:2"], "master": ["127.0.0.1:1"]},
      "task": {"type": "master", "index": 0}, "environment": "cloud"}))
  strategy_lib.make_strategy("default")
  assert json.loads(os.environ["TF_CONFIG"]) == {
      "cluster": {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]},
      "task": {"type": "chief", "index": 0}, "environment": "cloud"}
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  assert resolver.cluster_spec().as_dict() == {"chief": ["127.0.0.1:1"],
                                               "worker": ["127.0.0.1:2"]}
  assert (resolver.task_type, resolver.task_id) == ("chief", 0)
  assert strategy_lib.is_chief(types.SimpleNamespace(cluster_resolver=resolver))
  # A worker of that cluster keeps its type, and is not the chief.
  monkeypatch.setenv("TF_CONFIG", json.dumps({
      "cluster": {"master": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]},
      "task": {"type": "worker", "index": 0}}))
  strategy_lib.make_strategy("default")
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  assert (resolver.task_type, resolver.task_id) == ("worker", 0)
  assert not strategy_lib.is_chief(
      types.SimpleNamespace(cluster_resolver=resolver))


def test_unknown_collective(monkeypatch):
  monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}, '
                     '"task": {"type": "worker", "index": 0}}')
  with pytest.raises(errors.UserError,
                     match="collective='MPI' is not one of AUTO, RING, NCCL"):
    strategy_lib.make_strategy("multi_worker_mirrored", collective="MPI")


def test_tpu_at_a_closed_port_fails_fast():
  port = closed_port()
  with pytest.raises(errors.UserError,
                     match=f"no TPU reachable at --tpu=grpc://127.0.0.1:{port}"
                     " \\(cannot connect.*must run on a Cloud TPU VM"):
    strategy_lib.make_strategy("tpu", tpu=f"grpc://127.0.0.1:{port}")


def fake_strategy(cluster, task_type, task_id):
  resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
      tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)
  return types.SimpleNamespace(cluster_resolver=resolver)


@pytest.mark.parametrize("cluster, task_type, task_id, chief", [
    ({"worker": ["a:1", "b:1"]}, "worker", 0, True),
    ({"worker": ["a:1", "b:1"]}, "worker", 1, False),
    ({"chief": ["c:1"], "worker": ["a:1"]}, "chief", 0, True),
    ({"chief": ["c:1"], "worker": ["a:1"]}, "worker", 0, False),
])
def test_is_chief(cluster, task_type, task_id, chief):
  assert strategy_lib.is_chief(
      fake_strategy(cluster, task_type, task_id)) is chief


def test_single_machine_is_chief():
  assert strategy_lib.is_chief(tf.distribute.get_strategy())
  assert strategy_lib.is_chief(types.SimpleNamespace(cluster_resolver=None))


def test_negative_startup_timeout(monkeypatch):
  monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}, '
                     '"task": {"type": "worker", "index": 0}}')
  with pytest.raises(errors.UserError,
                     match=r"config.train.startup_timeout_s=-1 must be >= 0"):
    strategy_lib.make_strategy("multi_worker_mirrored", startup_timeout_s=-1)


def test_the_chief_waits_for_a_late_worker_and_names_it(monkeypatch, capsys):
  # The chief of a chief + worker cluster; worker 0 starts listening 1.5 s
  # in: the wait names it (the first line after 0.5 s here), then returns.
  monkeypatch.setattr(strategy_lib, "_FIRST_REPORT_S", 0.5)
  late = socket.socket()
  late.bind(("127.0.0.1", 0))
  address = f"127.0.0.1:{late.getsockname()[1]}"
  timer = threading.Timer(1.5, late.listen)
  timer.start()
  try:
    start = time.monotonic()
    strategy_lib._wait_for_peers(  # pylint: disable=protected-access
        {"cluster": {"chief": ["127.0.0.1:1"], "worker": [address]},
         "task": {"type": "chief", "index": 0}}, timeout_s=30)
    waited = time.monotonic() - start
  finally:
    timer.join()
    late.close()
  assert 1.4 < waited < 5
  assert (f"waiting for worker 0 at {address} (TF_CONFIG's cluster) to "
          "start: ") in capsys.readouterr().err


def test_only_the_leader_waits(capsys):
  # worker 1: its server must start for the leader (worker 0) to find it,
  # so it does not wait for worker 0, whose address is closed here.
  start = time.monotonic()
  strategy_lib._wait_for_peers(  # pylint: disable=protected-access
      {"cluster": {"worker": [f"127.0.0.1:{closed_port()}",
                              "127.0.0.1:1"]},
       "task": {"type": "worker", "index": 1}}, timeout_s=30)
  assert time.monotonic() - start < 0.5
  assert capsys.readouterr().err == ""
