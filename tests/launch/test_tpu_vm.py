"""launch/tpu_vm.sh through the real gcloud, against tests/helpers/cloud_fake.py.

The fake serves the Cloud TPU and Compute APIs and records every request;
its ssh/scp stand-ins run each worker's commands in a sandbox home. There,
`python3` is a wrapper that records pip calls and runs everything else with
this interpreter, so `train` starts the real trainer from the package that
`setup` shipped.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

import pytest

from tests.helpers import ROOT
from tests.helpers.cloud_fake import HOSTS, PROJECT, error_line, ok

SCRIPT = os.path.join(ROOT, "launch", "tpu_vm.sh")
ZONE = "us-central2-b"
LOCATION = f"/v2/projects/test-project/locations/{ZONE}"
NAME = "masked-attention-tpu"
NODE = f"projects/test-project/locations/{ZONE}/nodes/{NAME}"  # state key

# A worker's python3: pip is recorded, not run; `-m trainer.task` exits at
# once with the status in ~/fake_trainer_exit when that file exists (a TPU
# name cannot be resolved here); the rest runs for real. Each call, with the
# TPU variables of its environment, goes to ~/python-calls.jsonl.
REMOTE_PYTHON = f"""#!{sys.executable}
import json, os, sys
home = os.environ["HOME"]
args = sys.argv[1:]
env = {{k: os.environ.get(k) for k in ("TPU_NAME", "TPU_LOAD_LIBRARY")}}
with open(os.path.join(home, "python-calls.jsonl"), "a") as log:
  log.write(json.dumps({{"args": args, "env": env, "cwd": os.getcwd()}}) + "\\n")
if args[:2] == ["-m", "pip"]:
  sys.exit(0)
if args[:1] == ["-c"] and os.path.exists(os.path.join(home, "no_tensorflow")):
  sys.exit(1)
fake_exit = os.path.join(home, "fake_trainer_exit")
if args[:2] == ["-m", "trainer.task"] and os.path.exists(fake_exit):
  sys.exit(int(open(fake_exit).read()))
os.execv({sys.executable!r}, [{sys.executable!r}, *args])
"""


@pytest.fixture
def tpu(cloud):
  """cloud, with the workers' python3 wrapper installed."""
  path = os.path.join(cloud.remote_bin, "python3")
  with open(path, "w") as f:
    f.write(REMOTE_PYTHON)
  os.chmod(path, 0o755)
  return cloud


def tpu_vm(cloud, *args, env=None, timeout=240, project=PROJECT):
  """Runs launch/tpu_vm.sh. PROJECT is set to gcloud's configured project
  (`project`): left unset (project=None), the script asks `gcloud config
  get-value project` first, one more gcloud start-up (~1 s) per call, which
  test_delete_asks_unless_yes keeps covering. A dry run asks gcloud nothing:
  PROJECT stays unset there unless env sets it."""
  defaults = {"POLL_SECONDS": "0"}
  if project and not (env or {}).get("DRY_RUN"):
    defaults["PROJECT"] = project
  return cloud.run_script(SCRIPT, *args, timeout=timeout, unset=(
      "TPU_NAME", "ZONE", "PROJECT", "DRY_RUN", "QUEUED", "SPOT",
      "RUNTIME_VERSION", "ACCELERATOR_TYPE", "DATA_DIR", "MODEL_DIR", "CONFIG",
      "LINES", "API", "TOPOLOGY", "RESERVATION", "IMAGE_FAMILY", "IMAGE_PROJECT"),
      env={**defaults, **(env or {})})


def created_node(cloud):
  (request,) = cloud.find("POST", LOCATION + "/nodes$")
  assert request.query["nodeId"] == NAME
  return request.body


def python_calls(home):
  path = os.path.join(home, "python-calls.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f]


def put(cloud, worker, name, text=""):
  """Writes ~/name on a worker of the TPU."""
  home = cloud.worker_home(NAME, worker)
  os.makedirs(home, exist_ok=True)
  with open(os.path.join(home, name), "w") as f:
    f.write(text)


def wait_for(predicate, timeout=120, what=""):
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.2)


@pytest.mark.parametrize("accelerator, runtime", [
    ("v4-8", "tpu-vm-tf-2.18.0-pjrt-v5p-and-below"),
    ("v4-32", "tpu-vm-tf-2.18.0-pod-pjrt-v5p-and-below"),
    ("v5litepod-8", "tpu-vm-tf-2.18.0-pjrt-v5e-and-v6"),
    ("v5litepod-16", "tpu-vm-tf-2.18.0-pod-pjrt-v5e-and-v6"),
])
def test_create_picks_the_newest_fitting_runtime(tpu, accelerator, runtime):
  result = ok(tpu_vm(tpu, "create", env={"ACCELERATOR_TYPE": accelerator}))
  body = created_node(tpu)
  assert body["acceleratorType"] == accelerator
  assert body["runtimeVersion"] == runtime
  assert not body.get("schedulingConfig", {}).get("spot")
  assert f"RUNTIME_VERSION={runtime}" in result.stderr
  # It asked the zone, through the TPU VM API (not the TPU Node one).
  assert tpu.find("GET", LOCATION + "/runtimeVersions$")


def test_create_orders_versions_numerically_and_spot(tpu):
  tpu.runtime_versions[ZONE] = [
      "tpu-vm-tf-2.9.3-pjrt", "tpu-vm-tf-2.19.1-pjrt", "tpu-vm-tf-2.19.1-pod-pjrt",
      "tpu-vm-tf-2.20.0-pjrt", "tpu-vm-tf-2.20.0-pjrt-v5e-and-v6",
      "tpu-ubuntu2204-base"]
  ok(tpu_vm(tpu, "create", env={"ACCELERATOR_TYPE": "v4-32", "SPOT": "1"}))
  body = created_node(tpu)
  assert body["runtimeVersion"] == "tpu-vm-tf-2.19.1-pod-pjrt"
  assert body["schedulingConfig"]["spot"] is True
  tpu.reset()
  tpu.runtime_versions[ZONE] = ["tpu-vm-tf-2.9.3-pjrt", "tpu-vm-tf-2.19.1-pjrt",
                                "tpu-vm-tf-2.20.0-pjrt"]
  ok(tpu_vm(tpu, "create"))
  assert created_node(tpu)["runtimeVersion"] == "tpu-vm-tf-2.20.0-pjrt"


@pytest.mark.parametrize("env, message", [
    # The table of what runs where (trainer/cloud/preflight.py) first.
    ({"RUNTIME_VERSION": "tpu-vm-tf-2.19.1-pjrt"},
     "error: RUNTIME_VERSION=tpu-vm-tf-2.19.1-pjrt: there is no TensorFlow TPU "
     "runtime newer than 2.18.0: use tpu-vm-tf-2.18.0-pjrt, or "
     "tpu-ubuntu2204-base and the [tpu] extra"),
    ({"RUNTIME_VERSION": "tpu-vm-tf-2.17.0-pjrt", "ACCELERATOR_TYPE": "v4-32"},
     "error: RUNTIME_VERSION=tpu-vm-tf-2.17.0-pjrt is a single-host runtime, "
     "but v4-32 has 4 hosts: use tpu-vm-tf-2.18.0-pod-pjrt"),
    ({"RUNTIME_VERSION": "tpu-vm-tf-2.17.0-pod-pjrt"},
     "error: RUNTIME_VERSION=tpu-vm-tf-2.17.0-pod-pjrt is a multi-host (-pod) "
     "runtime, but v4-8 is one host: use tpu-vm-tf-2.18.0-pjrt"),
    # Then the zone's list.
    ({"RUNTIME_VERSION": "tpu-vm-tf-2.15.0-pjrt"},
     "error: RUNTIME_VERSION=tpu-vm-tf-2.15.0-pjrt is not offered in "
     "us-central2-b; closest listed for v4-8: tpu-vm-tf-2.16.1-pjrt, "
     "tpu-vm-tf-2.17.0-pjrt, tpu-vm-tf-2.18.0-pjrt-v5p-and-below"),
    ({"ACCELERATOR_TYPE": "v6e-16", "ZONE": "europe-west4-a"},
     "error: zone europe-west4-a lists no TensorFlow PJRT runtime for v6e-16 "
     "(4 host(s)); listed: tpu-ubuntu2204-base v2-alpha-tpuv6e - set "
     "RUNTIME_VERSION or pick another ZONE"),
    ({"ACCELERATOR_TYPE": "v4"}, "error: ACCELERATOR_TYPE=v4: expected a TPU "
     "type such as v6e-8, v5p-16, v5litepod-16 or v4-8"),
])
def test_create_refuses_a_runtime_before_creating_anything(tpu, env, message):
  tpu.runtime_versions["europe-west4-a"] = ["tpu-ubuntu2204-base",
                                            "v2-alpha-tpuv6e"]
  result = tpu_vm(tpu, "create", env=env)
  assert result.returncode == 2
  assert error_line(result) == message
  assert not tpu.find("POST", "/nodes$") and not tpu.nodes


@pytest.mark.parametrize("accelerator", sorted(HOSTS))
def test_hosts_per_accelerator_type_are_the_documented_ones(accelerator):
  # cloud_fake.HOSTS holds Cloud TPU's documented host counts; the script
  # computes its own (v5litepod-16: 4 VMs of 4 chips).
  result = subprocess.run(
      ["bash", SCRIPT, "create"], capture_output=True, text=True, timeout=60,
      stdin=subprocess.DEVNULL,
      env={**os.environ, "DRY_RUN": "1", "ACCELERATOR_TYPE": accelerator})
  assert result.returncode == 0, result.stderr
  hosts = HOSTS[accelerator]
  assert f"ACCELERATOR_TYPE={accelerator} ({hosts} host(s))" in result.stderr
  assert f"POD={int(hosts > 1)}" in result.stderr


def test_the_api_refuses_an_accelerator_type_or_runtime_it_does_not_offer(tpu):
  # The fake answers as Cloud TPU does (a type not in its documented HOSTS,
  # a runtime the zone does not list), whatever the launcher thinks.
  for flags, field in ((["--accelerator-type=v9-13", "--version=tpu-vm-tf-2.17.0-pjrt"],
                        "node.accelerator_type"),
                       (["--accelerator-type=v4-8", "--version=nonexistent"],
                        "node.runtime_version")):
    result = tpu.gcloud("compute", "tpus", "tpu-vm", "create", NAME,
                        f"--zone={ZONE}", *flags)
    assert result.returncode == 1
    assert ("ERROR: (gcloud.compute.tpus.tpu-vm.create) INVALID_ARGUMENT: Cloud TPU "
            "received a bad request.") in result.stderr
    assert f"field: {field}" in result.stderr
  # v4-12 passes the launcher's own rule (a v4 type counts TensorCores) but
  # is no Cloud TPU type: the API's answer is the launcher's one line.
  result = tpu_vm(tpu, "create", env={"ACCELERATOR_TYPE": "v4-12"})
  assert result.returncode == 1
  assert error_line(result) == (
      f"error: creating TPU {NAME} failed: INVALID_ARGUMENT: Cloud TPU received a "
      f"bad request. the accelerator v4-12 was not found in zone {ZONE}")
  assert not tpu.nodes


# The TPU API's words (as reported from the real service).
CAPACITY = (f'There is no more capacity in the zone "{ZONE}"; you can try in another '
            "zone where Cloud TPU Nodes are offered "
            "(see https://cloud.google.com/tpu/docs/regions)")
QUOTA = (f"Quota limit 'TPUV4PodPerProjectPerZoneForTPUAPI' has been exceeded. "
         f"Limit: 32 in zone {ZONE}.")


def test_a_create_out_of_capacity_or_quota_is_one_line_and_a_slow_one_shows_progress(tpu):
  # Out of capacity: the create operation ends with code 8 (RESOURCE_EXHAUSTED).
  tpu.fail_next("tpu.nodes.create", CAPACITY)
  result = tpu_vm(tpu, "create")
  assert result.returncode == 1
  assert '"code": 8' in result.stderr   # gcloud's own report stays visible
  assert error_line(result) == (
      f"error: creating TPU {NAME}: no v4-8 capacity in {ZONE} right now: try another "
      "ZONE that offers v4-8, QUEUED=1 (waits in line for capacity) or SPOT=1")
  assert not tpu.nodes
  # A quota used up: the create request itself is refused (HTTP 429).
  tpu.fail_next("tpu.queuedResources.create", QUOTA, http_status=429)
  result = tpu_vm(tpu, "create", env={"QUEUED": "1"})
  assert result.returncode == 1
  assert error_line(result) == (
      f"error: queuing TPU {NAME}: quota TPUV4PodPerProjectPerZoneForTPUAPI is used up "
      f"in {ZONE} (test-project): request more at https://console.cloud.google.com/"
      "iam-admin/quotas?project=test-project, or ask for a smaller ACCELERATOR_TYPE "
      "or another ZONE")
  assert not tpu.queued
  # Slow: gcloud polls the operation and says so while it waits.
  tpu.slow_next("tpu.nodes.create", polls=1)
  result = ok(tpu_vm(tpu, "create"))
  assert f"Waiting for operation [projects/test-project/locations/{ZONE}/operations/" in (
      result.stderr)
  assert f"Created tpu [{NAME}]." in result.stderr
  assert len(tpu.find("GET", LOCATION + "/operations/")) == 2
  assert tpu.nodes[NODE]["state"] == "READY"


def test_explicit_runtime_that_the_zone_lists(tpu):
  ok(tpu_vm(tpu, "create", env={"RUNTIME_VERSION": "tpu-vm-tf-2.17.0-pjrt"}))
  assert created_node(tpu)["runtimeVersion"] == "tpu-vm-tf-2.17.0-pjrt"


def test_queued_create_waits_until_active(tpu):
  tpu.queued_active_after = 3
  result = ok(tpu_vm(tpu, "create", env={
      "QUEUED": "1", "ACCELERATOR_TYPE": "v5litepod-16", "SPOT": "1"}))
  (request,) = tpu.find("POST", LOCATION + "/queuedResources$")
  assert request.query["queuedResourceId"] == NAME
  assert request.body["spot"] == {}
  (spec,) = request.body["tpu"]["nodeSpec"]
  assert spec["nodeId"] == NAME
  assert spec["node"]["acceleratorType"] == "v5litepod-16"
  assert spec["node"]["runtimeVersion"] == "tpu-vm-tf-2.18.0-pod-pjrt-v5e-and-v6"
  assert "is WAITING_FOR_RESOURCES; waiting" in result.stderr
  assert f"queued resource {NAME} is ACTIVE after" in result.stderr
  assert NODE in tpu.nodes
  # status reads the queued resource first, then the node and the run.
  status = ok(tpu_vm(tpu, "status", env={"QUEUED": "1"}))
  assert "queued resource: ACTIVE" in status.stdout
  assert "tpu: READY" in status.stdout and "run: none started" in status.stdout


def test_queued_create_without_waiting_and_failures(tpu):
  result = ok(tpu_vm(tpu, "create", env={"QUEUED": "1", "WAIT": "0"}))
  assert "waiting" not in result.stderr
  assert len(tpu.find("GET", "/queuedResources/")) == 1  # gcloud's own
  status = ok(tpu_vm(tpu, "status", env={"QUEUED": "1"}))
  assert status.stdout.splitlines()[-1] == "queued resource: WAITING_FOR_RESOURCES"
  ok(tpu_vm(tpu, "delete", "--yes", env={"QUEUED": "1"}))
  (delete,) = tpu.find("DELETE", f"/queuedResources/{NAME}$")
  assert delete.query["force"].lower() == "true"

  # FAILED, with the API's reason (state.failedData.error).
  tpu.set_queued_state(NAME, "FAILED", error=CAPACITY)
  failed = tpu_vm(tpu, "create", env={"QUEUED": "1"})
  assert failed.returncode == 1
  assert error_line(failed) == (
      f"error: queued resource {NAME} is FAILED ({CAPACITY}): see `launch/tpu_vm.sh "
      "status`; delete it (`QUEUED=1 launch/tpu_vm.sh delete`) before creating it again")
  tpu.reset()
  tpu.set_queued_state(NAME, "WAITING_FOR_RESOURCES")
  late = tpu_vm(tpu, "create", env={"QUEUED": "1", "WAIT_TIMEOUT": "0"})
  assert late.returncode == 1
  assert re.fullmatch(
      f"error: queued resource {NAME} is still WAITING_FOR_RESOURCES after "
      r"\d+s \(WAIT_TIMEOUT=0\): it stays queued; check it with "
      r"`launch/tpu_vm.sh status`", error_line(late))


def test_setup_ships_head_to_every_worker_and_is_idempotent(tpu, tmp_path):
  # A clone with an uncommitted change: HEAD ships, with a warning.
  repo = tmp_path / "repo"
  subprocess.run(["git", "clone", "-q", ROOT, str(repo)], check=True)
  head_vocab = (repo / "trainer" / "data" / "vocab.py").read_text()
  (repo / "trainer" / "data" / "vocab.py").write_text(head_vocab + "# local edit\n")
  env = {"ACCELERATOR_TYPE": "v4-16", "REPO_DIR": str(repo)}
  ok(tpu_vm(tpu, "create", env=env))
  for _ in range(2):  # a second setup replaces the first
    result = ok(tpu_vm(tpu, "setup", env=env))
    assert "warning: uncommitted changes in" in result.stderr
    assert result.stdout.count("trainer installed; TensorFlow 2.") == 2
  scp_targets = sorted(call[-1] for call in tpu.scp_calls())
  assert [t.split("@")[1] for t in scp_targets] == [
      "127.0.2.1:masked-attention-trainer.tar.gz"] * 2 + [
          "127.0.2.2:masked-attention-trainer.tar.gz"] * 2
  for worker in (0, 1):
    home = tpu.worker_home(NAME, worker)
    code = os.path.join(home, "masked-attention-trainer")
    assert sorted(os.listdir(code)) == ["LICENSE", "README.md", "configs",
                                        "setup.py", "trainer"]
    assert open(os.path.join(code, "trainer", "data", "vocab.py")).read() == head_vocab
    with tarfile.open(os.path.join(home, "masked-attention-trainer.tar.gz")) as t:
      assert "masked-attention-trainer/setup.py" in t.getnames()
    pips = [c["args"] for c in python_calls(home) if c["args"][:2] == ["-m", "pip"]]
    assert pips == [
        ["-m", "pip", "install", "--quiet", "--user", "--force-reinstall",
         "--no-deps", code],
        ["-m", "pip", "install", "--quiet", "--user", code]] * 2


def test_setup_without_tensorflow_on_the_vm(tpu):
  ok(tpu_vm(tpu, "create"))
  put(tpu, 0, "no_tensorflow")
  result = tpu_vm(tpu, "setup")
  assert result.returncode == 2
  assert "error: no TensorFlow on" in error_line(result)
  assert "pip install the package's [tpu] extra" in error_line(result)


def test_train_runs_detached_and_status_reports_its_failure(tpu):
  ok(tpu_vm(tpu, "create"))
  ok(tpu_vm(tpu, "setup"))
  env = {"DATA_DIR": "gs://b/arith", "MODEL_DIR": "gs://b/runs/1"}
  started = ok(tpu_vm(tpu, "train", "--config.train.num_steps=5", env=env))
  assert "train: started on" in started.stdout
  home = tpu.worker_home(NAME)
  run_dir = os.path.join(home, "masked-attention-run")
  # The trainer from the shipped code, off a TPU: it fails on its own.
  wait_for(lambda: os.path.exists(os.path.join(run_dir, "train.exit")),
           what="the trainer to end")
  (call,) = [c for c in python_calls(home) if c["args"][:2] == ["-m", "trainer.task"]]
  assert call["cwd"] == os.path.join(home, "masked-attention-trainer")
  assert call["args"][2:] == [
      "--config=configs/tpu.py", "--strategy=tpu", "--tpu=local",
      "--data_dir=gs://b/arith", "--model_dir=gs://b/runs/1",
      "--config.train.num_steps=5"]
  status = ok(tpu_vm(tpu, "status"))
  assert "tpu: READY" in status.stdout
  assert "run: failed (exit status 2)" in status.stdout
  assert "error: no TPU reachable at --tpu=local" in status.stdout
  logs = ok(tpu_vm(tpu, "logs", env={"LINES": "5"}))
  assert "error: no TPU reachable at --tpu=local" in logs.stdout


def test_train_on_a_pod_drives_the_tpu_by_name_from_worker_0(tpu):
  env = {"ACCELERATOR_TYPE": "v4-16", "DATA_DIR": "gs://b/d",
         "MODEL_DIR": "gs://b/r"}
  ok(tpu_vm(tpu, "create", env=env))
  ok(tpu_vm(tpu, "setup", env=env))
  put(tpu, 0, "fake_trainer_exit", "0")
  ok(tpu_vm(tpu, "train", env=env))
  home = tpu.worker_home(NAME, 0)
  wait_for(lambda: os.path.exists(
      os.path.join(home, "masked-attention-run", "train.exit")))
  (call,) = [c for c in python_calls(home) if c["args"][:2] == ["-m", "trainer.task"]]
  assert "--tpu=masked-attention-tpu" in call["args"]
  assert call["env"] == {"TPU_NAME": NAME, "TPU_LOAD_LIBRARY": "0"}
  assert not [c for c in python_calls(tpu.worker_home(NAME, 1))
              if c["args"][:2] == ["-m", "trainer.task"]]
  assert "run: finished (exit status 0)" in ok(tpu_vm(tpu, "status", env=env)).stdout


def test_a_run_survives_sighup_refuses_a_second_train_and_stops_with_a_checkpoint(
    tpu, smoke_data, tmp_path):
  ok(tpu_vm(tpu, "create"))
  ok(tpu_vm(tpu, "setup"))
  model_dir = tmp_path / "run"
  # A real training run (the smoke config on the CPU: the flags after the
  # script's own win), long enough to be stopped.
  env = {"DATA_DIR": "gs://b/d", "MODEL_DIR": "gs://b/r",
         "CONFIG": "configs/smoke.py"}
  flags = ["--strategy=default", f"--data_dir={smoke_data}",
           f"--model_dir={model_dir}", "--config.train.num_steps=1000000",
           "--config.train.steps_per_loop=10",
           "--config.train.eval_every_steps=0",
           "--config.train.checkpoint_every_steps=0"]
  ok(tpu_vm(tpu, "train", *flags, env=env))
  run_dir = os.path.join(tpu.worker_home(NAME), "masked-attention-run")
  log = os.path.join(run_dir, "train.log")
  wait_for(lambda: "train: " in open(log).read(), what="training to start")
  pid = int(open(os.path.join(run_dir, "train.pid")).read())
  assert os.getpgid(pid) == pid  # its own session and process group
  os.killpg(pid, 1)  # SIGHUP, as a dropped SSH session sends
  time.sleep(1)
  os.kill(pid, 0)  # still alive
  again = tpu_vm(tpu, "train", env=env)
  assert again.returncode == 2
  assert error_line(again) == (
      f"error: a run is already going (pid {pid}): see launch/tpu_vm.sh "
      "status; launch/tpu_vm.sh stop ends it")
  assert "run: running" in ok(tpu_vm(tpu, "status")).stdout
  stopped = ok(tpu_vm(tpu, "stop"))
  assert "stop: SIGTERM sent" in stopped.stdout
  wait_for(lambda: os.path.exists(os.path.join(run_dir, "train.exit")),
           what="the run to checkpoint and exit")
  assert "run: finished (exit status 0)" in ok(tpu_vm(tpu, "status")).stdout
  assert "SIGTERM: saved a checkpoint at step" in open(log).read()
  assert list((model_dir / "checkpoints").glob("ckpt-*.index"))
  assert "stop: no run is going" in ok(tpu_vm(tpu, "stop")).stdout


def test_train_refuses_local_paths_and_a_worker_without_setup(tpu):
  for env, message in (
      ({"DATA_DIR": "/data", "MODEL_DIR": "gs://b/r"},
       "error: DATA_DIR must be a gs:// URL (the TPU workers cannot read "
       "this machine's disk), got '/data'"),
      ({"DATA_DIR": "gs://b/d"}, "error: MODEL_DIR must be a gs:// URL")):
    result = tpu_vm(tpu, "train", env=env)
    assert result.returncode == 2 and error_line(result).startswith(message)
  assert not tpu.ssh_calls()
  ok(tpu_vm(tpu, "create"))
  result = tpu_vm(tpu, "train", env={"DATA_DIR": "gs://b/d", "MODEL_DIR": "gs://b/r"})
  assert result.returncode == 2
  assert error_line(result) == ("error: the trainer is not installed on this "
                                "worker: run launch/tpu_vm.sh setup")
  no_log = tpu_vm(tpu, "logs")
  assert no_log.returncode == 2
  assert error_line(no_log) == ("error: no run log on worker 0 yet: "
                                "launch/tpu_vm.sh train starts a run")


def test_preempted_spot_tpu_is_recreated(tpu):
  env = {"SPOT": "1"}
  ok(tpu_vm(tpu, "create", env=env))
  tpu.nodes[NODE]["state"] = "PREEMPTED"
  status = ok(tpu_vm(tpu, "status", env=env))
  assert "tpu: PREEMPTED" in status.stdout
  assert "launch/tpu_vm.sh recreate" in status.stdout
  refused = tpu_vm(tpu, "recreate", env=env)
  assert refused.returncode == 2 and "pass --yes" in error_line(refused)
  ok(tpu_vm(tpu, "recreate", "--yes", env=env))
  assert [r.method for r in tpu.find(None, f"{LOCATION}/nodes(/{NAME})?$")
          if r.method in ("POST", "DELETE")] == ["POST", "DELETE", "POST"]
  assert tpu.nodes[NODE]["state"] == "READY"
  assert os.path.isdir(os.path.join(tpu.worker_home(NAME), "masked-attention-trainer"))


def test_delete_asks_unless_yes(tpu):
  ok(tpu_vm(tpu, "create"))
  refused = tpu_vm(tpu, "delete")
  assert refused.returncode == 2
  assert error_line(refused) == (f"error: refusing to delete {NAME} without "
                                 "a terminal: pass --yes")
  ok(tpu_vm(tpu, "delete", "--yes"))
  assert tpu.find("DELETE", f"/nodes/{NAME}$") and not tpu.nodes
  # PROJECT unset: the project is gcloud's configured one (the fake's
  # CLOUDSDK_CORE_PROJECT), asked with `gcloud config get-value project`.
  missing = tpu_vm(tpu, "status", project=None)
  assert f"PROJECT={PROJECT} " in missing.stderr
  assert missing.returncode == 2
  assert error_line(missing) == (f"error: no TPU {NAME} in {ZONE} (test-project)"
                                 ": create it with `launch/tpu_vm.sh create`")


def bash_words(line):
  """The words of a shell-quoted command line, as bash reads them."""
  out = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"],
                       capture_output=True, check=True, text=True).stdout
  return out.split("\0")[:-1]


def test_dry_run_prints_every_command_and_asks_nothing(tpu):
  name = "a b'c\"$(touch x)"
  result = ok(tpu_vm(tpu, "create", env={"DRY_RUN": "1", "TPU_NAME": name,
                                         "PROJECT": "p"}))
  assert bash_words(result.stdout.strip()) == [
      "gcloud", "compute", "tpus", "tpu-vm", "create", name,
      "--zone=us-central2-b", "--project=p", "--accelerator-type=v4-8",
      "--version=NEWEST_FITTING_TF_RUNTIME"]
  follow = ok(tpu_vm(tpu, "logs", "-f", env={"DRY_RUN": "1"}))
  assert "tail -n 200 -f ~/masked-attention-run/train.log" in (
      bash_words(follow.stdout.strip())[-1])
  assert tpu.requests == [] and not os.path.exists(os.path.join(ROOT, "x"))


def test_missing_or_unauthenticated_gcloud(tpu, tmp_path):
  bare = tmp_path / "bare"
  bare.mkdir()
  for tool in ("dirname", "bash"):
    os.symlink(shutil.which(tool), bare / tool)
  missing = tpu_vm(tpu, "status", env={"PATH": str(bare)})
  assert missing.returncode == 2
  assert error_line(missing).startswith(
      "error: gcloud not found: install the Google Cloud CLI")
  # A fresh gcloud configuration: no account is active.
  unauthenticated = tpu_vm(tpu, "status", env={
      "CLOUDSDK_CONFIG": str(tmp_path / "empty"), "CLOUDSDK_CORE_ACCOUNT": ""})
  assert unauthenticated.returncode == 2
  assert error_line(unauthenticated) == (
      "error: gcloud is not authenticated: run `gcloud auth login`")
  assert tpu.requests == []


def test_help_names_every_subcommand_and_variable():
  result = subprocess.run(["bash", SCRIPT, "--help"], capture_output=True,
                          text=True, check=True)
  for word in ("create", "setup", "train", "status", "logs", "stop", "ssh",
               "delete", "recreate", "TPU_NAME", "ZONE", "ACCELERATOR_TYPE",
               "RUNTIME_VERSION", "PROJECT", "SPOT", "QUEUED", "WAIT",
               "WAIT_TIMEOUT", "POLL_SECONDS", "POD", "CONFIG", "DATA_DIR",
               "MODEL_DIR", "REPO_DIR", "WORKER", "LINES", "DRY_RUN", "API",
               "TOPOLOGY", "RESERVATION", "IMAGE_FAMILY", "IMAGE_PROJECT"):
    assert word in result.stdout
  bogus = subprocess.run(["bash", SCRIPT, "bogus"], capture_output=True,
                         text=True)
  assert bogus.returncode == 2
  assert "unknown subcommand 'bogus'" in bogus.stderr
