"""The GPUs launch/single_gpu.sh and launch/multi_gpu.sh hand the trainer:
the environment and arguments the trainer process receives, recorded by a
stand-in Python (PYTHON=...) beside a fake nvidia-smi listing $FAKE_GPUS.

CUDA numbers devices fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, the
order nvidia-smi lists them in (NVIDIA's CUDA environment variables); both
scripts count with nvidia-smi, so the trainer must get that order. A
CUDA_VISIBLE_DEVICES the caller set (a scheduler's allocation) is the set
to choose from."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import FAKE_NVIDIA_SMI, ROOT

LAUNCH = os.path.join(ROOT, "launch")
# Records what it was started with, as the trainer would receive it.
RECORDING_PYTHON = """#!{python}
import json, os, sys
with open({record!r}, "w") as f:
  json.dump({{"argv": sys.argv[1:], "env": dict(os.environ)}}, f)
"""
# The caller's settings the scripts read.
SETTINGS = ("GPU", "NUM_GPUS", "DRY_RUN", "PYTHON", "CUDA_VISIBLE_DEVICES",
            "CUDA_DEVICE_ORDER")


@pytest.fixture
def gpu_launch(tmp_path):
  """Runs a GPU script with FAKE_GPUS GPUs; returns (result, received), the
  trainer's {"argv", "env"} or None when no trainer was started."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
  record = tmp_path / "trainer.json"
  python = bin_dir / "python"
  python.write_text(RECORDING_PYTHON.format(python=sys.executable,
                                            record=str(record)))
  for path in bin_dir.iterdir():
    path.chmod(0o755)

  def launch(script, *args, fake_gpus, **settings):
    if record.exists():
      record.unlink()
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=str(python),
               FAKE_GPUS=str(fake_gpus), **settings)
    result = subprocess.run(["bash", os.path.join(LAUNCH, script), *args],
                            capture_output=True, text=True, env=env,
                            stdin=subprocess.DEVNULL, timeout=60, cwd=ROOT)
    received = json.loads(record.read_text()) if record.exists() else None
    return result, received

  return launch


def devices(received):
  """CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER as the trainer got them."""
  env = received["env"]
  return env.get("CUDA_VISIBLE_DEVICES"), env.get("CUDA_DEVICE_ORDER")


@pytest.mark.parametrize("gpu, visible", [(None, "0"), ("2", "2"),
                                          ("09", "9")])
def test_single_gpu_hands_the_trainer_the_chosen_gpu(gpu_launch, gpu,
                                                     visible):
  settings = {} if gpu is None else {"GPU": gpu}
  result, received = gpu_launch("single_gpu.sh", "--x=1", fake_gpus=10,
                                **settings)
  assert result.returncode == 0, result.stderr
  assert devices(received) == (visible, "PCI_BUS_ID")
  assert received["argv"] == ["-m", "trainer.task", "--strategy=one_device",
                              "--x=1"]
  assert "warning" not in result.stderr


@pytest.mark.parametrize("num_gpus, visible", [(None, "0,1,2"), ("1", "0"),
                                               ("2", "0,1"), ("3", "0,1,2")])
def test_multi_gpu_hands_the_trainer_the_first_num_gpus(gpu_launch, num_gpus,
                                                        visible):
  settings = {} if num_gpus is None else {"NUM_GPUS": num_gpus}
  result, received = gpu_launch("multi_gpu.sh", "--x=1", fake_gpus=3,
                                **settings)
  assert result.returncode == 0, result.stderr
  assert devices(received) == (visible, "PCI_BUS_ID")
  assert received["argv"] == [
      "-m", "trainer.task", "--strategy=mirrored",
      f"--num_gpus={len(visible.split(','))}", "--x=1"]


@pytest.mark.parametrize("script, flag", [("single_gpu.sh", []),
                                          ("multi_gpu.sh", ["--num_gpus=0"])])
def test_without_a_gpu_the_trainer_sees_none(gpu_launch, script, flag):
  # A CUDA_VISIBLE_DEVICES of the caller does not bring a GPU back.
  result, received = gpu_launch(script, fake_gpus=0,
                                CUDA_VISIBLE_DEVICES="0")
  assert result.returncode == 0, result.stderr
  assert devices(received)[0] == ""
  assert received["argv"][3:] == flag
  assert "warning: no GPU visible" in result.stderr


@pytest.mark.parametrize("script, settings, visible", [
    ("single_gpu.sh", {}, "5"),
    ("single_gpu.sh", {"GPU": "1"}, "2"),
    ("multi_gpu.sh", {}, "5,2"),
    ("multi_gpu.sh", {"NUM_GPUS": "1"}, "5")])
def test_the_caller_s_cuda_visible_devices_is_the_set_to_choose_from(
    gpu_launch, script, settings, visible):
  result, received = gpu_launch(script, fake_gpus=8,
                                CUDA_VISIBLE_DEVICES="5,2", **settings)
  assert result.returncode == 0, result.stderr
  assert devices(received) == (visible, "PCI_BUS_ID")


@pytest.mark.parametrize("script, settings, message", [
    ("single_gpu.sh", {"GPU": "4"},
     "error: GPU=4 but only 4 GPU(s) are visible (0..3)"),
    ("single_gpu.sh", {"GPU": "2", "CUDA_VISIBLE_DEVICES": "6,7"},
     "error: GPU=2 but only 2 GPU(s) are visible (0..1) "
     "(CUDA_VISIBLE_DEVICES=6,7)"),
    ("multi_gpu.sh", {"NUM_GPUS": "5"},
     "error: NUM_GPUS=5 but 4 GPU(s) are visible"),
    ("multi_gpu.sh", {"NUM_GPUS": "08"},
     "error: NUM_GPUS=8 but 4 GPU(s) are visible"),
    ("multi_gpu.sh", {"NUM_GPUS": "3", "CUDA_VISIBLE_DEVICES": "1,3"},
     "error: NUM_GPUS=3 but 2 GPU(s) are visible (CUDA_VISIBLE_DEVICES=1,3)"),
])
def test_more_gpus_than_visible_start_no_trainer(gpu_launch, script,
                                                 settings, message):
  result, received = gpu_launch(script, fake_gpus=4, **settings)
  assert result.returncode == 2
  assert result.stderr.splitlines()[-1] == message
  assert received is None
