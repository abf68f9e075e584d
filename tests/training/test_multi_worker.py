"""MultiWorkerMirroredStrategy over real worker processes on 127.0.0.1."""

import json
import os
import re
import signal
import socket
import time

import pytest

from tests.helpers import ROOT
from tests.helpers.eval_checks import assert_by_op_adds_up
from tests.helpers.workers import Workers, fingerprint


SMOKE = os.path.join(ROOT, "configs", "smoke.py")


def files_read(log, split):
  (line,) = re.findall(rf"data: {split} input pipeline \d of \d reads .*", log)
  return set(line.split(": ", 2)[2].split())


def test_two_workers_train_identically_and_only_the_chief_writes(
    smoke_data, tmp_path):
  # TF_CONFIG as the legacy AI Platform Training service set it: pool 0's
  # task is `master` (Vertex AI's `chief` is the Vertex test's below;
  # worker 0 as the chief, the fault tests'). It leads and writes.
  model_dir = tmp_path / "run"
  workers = Workers(2, [f"--data_dir={smoke_data}",
                        f"--model_dir={model_dir}"], tmp_path,
                    with_chief=True, chief_type="master")
  try:
    assert workers.wait(timeout=240) == [0, 0], workers.logs_tail()
  finally:
    workers.kill()
  chief, other = workers.log(0), workers.log(1)
  assert "CollectiveAllReduceStrategy with 2 replica(s)" in chief
  assert "; chief" in chief and "; worker" in other
  assert fingerprint(chief) == fingerprint(other)
  # Disjoint files, all of them between the two workers.
  for split, count in (("train", 4), ("eval", 2)):
    first, second = files_read(chief, split), files_read(other, split)
    assert not first & second and len(first | second) == count
  metrics = json.loads((model_dir / "metrics.json").read_text())
  assert metrics["num_replicas"] == 2 and metrics["step"] == 40
  assert metrics["weights_sha256"] == fingerprint(chief)
  assert_by_op_adds_up(metrics["eval"])  # summed over both workers
  assert metrics["eval"]["examples"] == 4 * 16
  assert (model_dir / "export" / "saved_model.pb").exists()
  assert (model_dir / "checkpoints" / "checkpoint").exists()
  # The non-chief wrote to a temporary directory and deleted it.
  assert list(workers.tmp_dir.iterdir()) == []


def test_vertex_ai_chief_and_worker_write_to_the_aip_directories(
    smoke_data, tmp_path):
  # A Vertex AI tuning trial of 2 machines: TF_CONFIG with a `chief` and one
  # `worker`, AIP_* directories, no --model_dir, CLOUD_ML_TRIAL_ID; with the
  # best checkpoint kept and an EMA of the weights (one run for all of it).
  base = tmp_path / "base"
  metric_file = tmp_path / "hypertune" / "output.metrics"
  env = {"AIP_MODEL_DIR": f"{base}/model/",
         "AIP_CHECKPOINT_DIR": f"{base}/checkpoints/",
         "AIP_TENSORBOARD_LOG_DIR": f"{base}/logs/",
         "CLOUD_ML_TRIAL_ID": "7", "CLOUD_ML_HP_METRIC_FILE": str(metric_file)}
  workers = Workers(2, [f"--data_dir={smoke_data}",
                        "--config.train.eval_every_steps=20",
                        "--config.train.keep_best=loss",
                        "--config.train.ema_decay=0.9"], tmp_path,
                    with_chief=True, env=env)
  try:
    assert workers.wait(timeout=240) == [0, 0], workers.logs_tail()
  finally:
    workers.kill()
  chief, other = workers.log(0), workers.log(1)
  assert "; chief" in chief and "; worker" in other
  assert fingerprint(chief) == fingerprint(other)
  metrics = json.loads((base / "model" / "metrics.json").read_text())
  assert metrics["num_replicas"] == 2
  assert metrics["weights_sha256"] == fingerprint(chief)
  assert (base / "model" / "saved_model.pb").exists()
  assert (base / "checkpoints" / "checkpoint").exists()
  assert list((base / "logs" / "train").glob("events.out.tfevents.*"))
  assert list(workers.tmp_dir.iterdir()) == []
  # The EMA evaluates on both workers alike (all-reduced), and so one best.
  evals = [re.findall(r"eval \(EMA weights\) at step (\d+): loss ([\d.]+)",
                      log) for log in (chief, other)]
  assert evals[0] == evals[1] and [s for s, _ in evals[0]] == ["20", "40"]
  best = metrics["best"]
  losses = {int(step): float(loss) for step, loss in evals[0]}
  assert best["metric"] == "loss" and best["step"] in losses
  assert best["value"] == pytest.approx(min(losses.values()), abs=1e-4)
  assert (base / "best" / "saved_model.pb").exists()  # beside AIP_MODEL_DIR
  # The chief's time split adds up to its total.
  time_split = metrics["time"]
  assert sum(v for k, v in time_split.items() if k not in (
      "total", "fraction_training")) == pytest.approx(time_split["total"],
                                                     rel=0.01)
  # The trial's measurements, reported by the chief, one per metric.
  entries = [json.loads(line) for line in metric_file.read_text().splitlines()]
  assert [(e["global_step"], "loss" in e) for e in entries] == [
      ("20", False), ("20", True), ("40", False), ("40", True)]
  assert {e["trial"] for e in entries} == {"7"}
  assert float(entries[-1]["loss"]) == pytest.approx(metrics["eval"]["loss"])


def checkpoint_saved(model_dir, step):
  """True once the `checkpoint` state file names ckpt-<step> (it is written
  after the checkpoint's own files)."""
  state = model_dir / "checkpoints" / "checkpoint"
  try:
    return f'"ckpt-{step}"' in state.read_text()
  except FileNotFoundError:
    return False


# TensorFlow's coordination service reports a task silent for 10 s (its
# default heartbeat timeout); measured here 6-26 s from the kill or stop to
# the other worker's exit. The README promises "within a minute".
LOST_CONTACT_BOUND_S = 60


@pytest.mark.parametrize("victim, signum", [
    (1, signal.SIGKILL), (1, signal.SIGSTOP), (0, signal.SIGKILL),
    (0, signal.SIGSTOP)], ids=["kill-worker", "freeze-worker", "kill-chief",
                               "freeze-chief"])
def test_a_dead_or_frozen_worker_ends_the_other_in_bounded_time(
    smoke_data, tmp_path, victim, signum):
  # No collective op has a timeout (each would hold a thread for its whole
  # length): the coordination service's heartbeats must catch both a dead
  # process and a frozen one, the service's leader (worker 0) included.
  # Then, once (a killed worker), the same commands resume.
  model_dir = tmp_path / "run"
  flags = [f"--data_dir={smoke_data}", f"--model_dir={model_dir}",
           "--config.train.num_steps=100000",
           "--config.train.steps_per_loop=20",
           "--config.train.checkpoint_every_steps=100",
           "--config.train.eval_every_steps=0"]
  workers = Workers(2, flags, tmp_path)
  survivor = 1 - victim
  try:
    workers.wait_until(lambda: checkpoint_saved(model_dir, 100))
    os.kill(workers.processes[victim].pid, signum)
    stopped_at = time.monotonic()
    code = workers.processes[survivor].wait(timeout=120)
    waited = time.monotonic() - stopped_at
  finally:
    workers.kill()
  log = workers.log(survivor)
  assert code == 1, log[-3000:]
  errors = [l for l in log.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, log[-3000:]
  assert errors[0].startswith("error: lost contact with another worker (")
  assert ("start every worker again to resume from "
          f"{model_dir}/checkpoints/ckpt-") in errors[0]
  assert "; this one with: python -m trainer.task " in errors[0]
  if victim == 1:  # the leader names the silent worker
    assert "(worker 1; " in errors[0]
  assert "Traceback" not in log
  assert waited < LOST_CONTACT_BOUND_S, waited
  print(f"{'killed' if signum == signal.SIGKILL else 'froze'} worker "
        f"{victim}: worker {survivor} ended {waited:.1f} s later")
  if (victim, signum) != (1, signal.SIGKILL):
    return  # resuming is the same after any loss: once is enough

  # The same commands (here to a nearer end) resume from the checkpoint.
  again = tmp_path / "again"
  again.mkdir()
  workers = Workers(2, [*flags, "--config.train.num_steps=200"], again)
  try:
    assert workers.wait(timeout=300) == [0, 0], workers.logs_tail()
  finally:
    workers.kill()
  for i in range(2):
    assert re.search(r"resuming from .*ckpt-\d+", workers.log(i))
  assert fingerprint(workers.log(0)) == fingerprint(workers.log(1))
  assert json.loads((model_dir / "metrics.json").read_text())["step"] == 200


def test_a_worker_without_files_is_a_clear_error(smoke_data, tmp_path):
  workers = Workers(2, [f"--data_dir={smoke_data}",
                        f"--model_dir={tmp_path}/run",
                        "--config.data.eval_files=eval-00000-of-00002.tfrecord"],
                    tmp_path)
  try:
    assert workers.wait(timeout=180) == [2, 2], workers.logs_tail()
  finally:
    workers.kill()
  for i in range(2):
    errors = [l for l in workers.log(i).splitlines()
              if l.startswith("error:")]
    assert errors == ["error: evaluation data: 1 file(s) for 2 input "
                      "pipelines (one per worker or host): each needs at "
                      "least one file; generate at least 2 shards"]


def test_a_taken_port_is_one_line_naming_the_address(run, smoke_data,
                                                      tmp_path):
  with socket.socket() as taken:  # a plain listener: no SO_REUSEPORT
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    address = f"127.0.0.1:{taken.getsockname()[1]}"
    result = run("trainer.task", f"--config={SMOKE}",
                 "--strategy=multi_worker_mirrored",
                 f"--data_dir={smoke_data}", f"--model_dir={tmp_path}/run",
                 env={"TF_GRPC_REUSE_PORT": None, "TF_CONFIG": json.dumps(
                     {"cluster": {"worker": [address]},
                      "task": {"type": "worker", "index": 0}})},
                 timeout=120)
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert errors == [
      f"error: cannot start this worker's server (worker 0 of TF_CONFIG, at "
      f"{address}): UnknownError: Could not start gRPC server; is the port "
      "in use?"], result.stderr[-3000:]
