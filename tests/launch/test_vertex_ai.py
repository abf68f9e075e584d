"""launch/vertex_ai.sh through the real gcloud: the Vertex AI API of
tests/helpers/cloud_fake.py, and the GCS emulator for the package upload."""

import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from tests.helpers import ROOT
from tests.helpers.cloud_fake import error_line, ok

SCRIPT = os.path.join(ROOT, "launch", "vertex_ai.sh")
JOBS = "/v1/projects/test-project/locations/us-central1/customJobs"
IMAGES = "us-docker.pkg.dev/vertex-ai/training"


def vertex_ai(cloud, *args, env=None, gcs=None, timeout=120):
  return cloud.run_script(SCRIPT, *args, timeout=timeout, unset=(
      "PROJECT", "REGION", "STAGING_DIR", "DATA_DIR", "MODEL_DIR",
      "MACHINE_TYPE", "ACCELERATOR_TYPE", "ACCELERATOR_COUNT", "WORKERS",
      "TPU_TOPOLOGY", "IMAGE", "CONFIG", "DRY_RUN", "JOB_NAME"),
      env={**(cloud.storage_env(gcs) if gcs else {}), **(env or {})})


@pytest.fixture
def bucket(gcs, request):
  """A new bucket on the emulator (it lives as long as the session)."""
  name = "vertex-" + request.node.name.lower().replace("_", "-")[5:30].strip("-")
  gcs.create_bucket(name)
  return name


def submitted(cloud):
  (request,) = cloud.find("POST", JOBS + "$")
  return request.body


def paths(bucket):
  return {"STAGING_DIR": f"gs://{bucket}/staging",
          "DATA_DIR": f"gs://{bucket}/arith",
          "MODEL_DIR": f"gs://{bucket}/runs/v1", "JOB_NAME": "job-1"}


def test_submit_cpu_uploads_the_package_and_creates_the_job(cloud, gcs, bucket):
  result = ok(vertex_ai(cloud, "submit", "--config.train.num_steps=100",
                        env=paths(bucket), gcs=gcs))
  body = submitted(cloud)
  assert body["displayName"] == "job-1"
  spec = body["jobSpec"]
  assert spec["baseOutputDirectory"] == {
      "outputUriPrefix": f"gs://{bucket}/runs/v1"}
  (pool,) = spec["workerPoolSpecs"]
  assert pool["machineSpec"] == {"machineType": "n1-standard-8"}
  assert str(pool["replicaCount"]) == "1"
  package = pool["pythonPackageSpec"]
  assert package["executorImageUri"] == f"{IMAGES}/tf-cpu.2-17.py310:latest"
  assert package["pythonModule"] == "trainer.task"
  assert package["args"] == [
      "--config=configs/default.py", "--strategy=default",
      f"--data_dir=gs://{bucket}/arith", "--config.train.num_steps=100"]
  (uri,) = package["packageUris"]
  assert uri.startswith(f"gs://{bucket}/staging/packages/"
                        "masked-attention-trainer-") and uri.endswith(".tar.gz")
  # The uploaded package is this repository's HEAD, as pip installs it.
  from google.cloud import storage  # pylint: disable=g-import-not-at-top
  blob = storage.Client().bucket(bucket).blob(uri.split("/", 3)[3])
  with tarfile.open(fileobj=io.BytesIO(blob.download_as_bytes())) as t:
    names = t.getnames()
  assert "masked-attention-trainer/setup.py" in names
  assert "masked-attention-trainer/trainer/task.py" in names
  assert "masked-attention-trainer/configs/tpu.py" in names
  (job_id,) = cloud.jobs
  assert result.stdout.splitlines()[:2] == [
      f"job: {job_id}",
      "console: https://console.cloud.google.com/ai/platform/locations/"
      f"us-central1/training/{job_id}?project=test-project"]


def test_submit_gpus_one_machine_and_several(cloud, gcs, bucket):
  env = {**paths(bucket), "ACCELERATOR_TYPE": "NVIDIA_L4",
         "ACCELERATOR_COUNT": "2", "MACHINE_TYPE": "g2-standard-24"}
  ok(vertex_ai(cloud, "submit", env=env, gcs=gcs))
  (pool,) = submitted(cloud)["jobSpec"]["workerPoolSpecs"]
  assert pool["machineSpec"] == {"machineType": "g2-standard-24",
                                 "acceleratorType": "NVIDIA_L4",
                                 "acceleratorCount": 2}
  assert pool["pythonPackageSpec"]["executorImageUri"] == (
      f"{IMAGES}/tf-gpu.2-17.py310:latest")
  assert pool["pythonPackageSpec"]["args"][:2] == [
      "--config=configs/gpu.py", "--strategy=mirrored"]
  cloud.reset()
  ok(vertex_ai(cloud, "submit", env={**env, "WORKERS": "3"}, gcs=gcs))
  chief, workers = submitted(cloud)["jobSpec"]["workerPoolSpecs"]
  assert str(chief["replicaCount"]) == "1" and str(workers["replicaCount"]) == "2"
  for pool in (chief, workers):
    assert pool["machineSpec"]["acceleratorCount"] == 2
    assert pool["pythonPackageSpec"]["args"][:2] == [
        "--config=configs/gpu.py", "--strategy=multi_worker_mirrored"]


def test_submit_tpu(cloud, gcs, bucket):
  env = {**paths(bucket), "MACHINE_TYPE": "ct5lp-hightpu-4t",
         "TPU_TOPOLOGY": "2x2", "IMAGE": "example.com/tf-tpu:2.19"}
  ok(vertex_ai(cloud, "submit", env=env, gcs=gcs))
  (pool,) = submitted(cloud)["jobSpec"]["workerPoolSpecs"]
  assert pool["machineSpec"] == {"machineType": "ct5lp-hightpu-4t",
                                 "tpuTopology": "2x2"}
  assert pool["pythonPackageSpec"]["executorImageUri"] == "example.com/tf-tpu:2.19"
  assert pool["pythonPackageSpec"]["args"] == [
      "--config=configs/tpu.py", "--strategy=tpu", "--tpu=local",
      f"--data_dir=gs://{bucket}/arith"]


@pytest.mark.parametrize("env, message", [
    ({"STAGING_DIR": None}, "error: STAGING_DIR is required for submit"),
    ({"DATA_DIR": "/data/arith"},
     "error: DATA_DIR must be a gs:// URL (a Vertex AI job cannot read this "
     "machine's disk), got '/data/arith'"),
    ({"MODEL_DIR": "gs://"}, "error: MODEL_DIR must be a gs:// URL"),
    ({"WORKERS": "0"}, "error: WORKERS must be a positive number of machines"),
    ({"MACHINE_TYPE": "ct5lp-hightpu-4t", "TPU_TOPOLOGY": "2x2"},
     "error: MACHINE_TYPE=ct5lp-hightpu-4t: Vertex AI's prebuilt TensorFlow "
     "TPU image (tf-tpu.2-15) has Keras 2"),
    ({"MACHINE_TYPE": "ct5lp-hightpu-4t", "IMAGE": "x"},
     "error: MACHINE_TYPE=ct5lp-hightpu-4t needs TPU_TOPOLOGY"),
    ({"MACHINE_TYPE": "ct5lp-hightpu-4t", "TPU_TOPOLOGY": "2x2", "IMAGE": "x",
      "WORKERS": "2"}, "error: WORKERS=2: a TPU job runs on one machine"),
    ({"TPU_TOPOLOGY": "2x2"}, "error: TPU_TOPOLOGY=2x2 is for TPU machine types"),
    ({"ACCELERATOR_COUNT": "2"}, "error: ACCELERATOR_COUNT=2 without "
     "ACCELERATOR_TYPE"),
])
def test_submit_refuses_bad_settings_before_any_request(cloud, env, message):
  full = {**paths("b"), **env}
  result = vertex_ai(cloud, "submit",
                     env={k: v for k, v in full.items() if v is not None})
  assert result.returncode == 2
  assert error_line(result).startswith(message)
  assert cloud.requests == []


def test_status_and_cancel(cloud, gcs, bucket):
  ok(vertex_ai(cloud, "submit", env=paths(bucket), gcs=gcs))
  (job_id,) = cloud.jobs
  assert ok(vertex_ai(cloud, "status", job_id)).stdout.split() == [
      "JOB_STATE_PENDING"]
  cloud.set_job_state(job_id, "JOB_STATE_RUNNING")
  assert "JOB_STATE_RUNNING" in ok(vertex_ai(cloud, "status", job_id)).stdout
  ok(vertex_ai(cloud, "cancel", job_id))
  assert cloud.find("POST", f"{JOBS}/{job_id}:cancel$")
  assert "JOB_STATE_CANCELLING" in ok(vertex_ai(cloud, "status", job_id)).stdout
  cloud.jobs[job_id]["state"] = "JOB_STATE_FAILED"
  cloud.jobs[job_id]["error"] = {"code": 3, "message": "trainer exited 2"}
  failed = ok(vertex_ai(cloud, "status", job_id)).stdout.split("\t")
  assert [f.strip() for f in failed] == ["JOB_STATE_FAILED", "trainer exited 2"]
  missing = vertex_ai(cloud, "status", "42")
  assert missing.returncode != 0 and "NOT_FOUND" in missing.stderr


def test_job_id_arguments_and_logs_command(cloud):
  for args in (("status",), ("cancel", "abc"), ("logs", "1", "2")):
    result = vertex_ai(cloud, *args)
    assert result.returncode == 2
    assert "usage: launch/vertex_ai.sh" in error_line(result)
  # Cloud Logging is not faked: the command it runs is checked dry.
  logs = ok(vertex_ai(cloud, "logs", "123", env={"DRY_RUN": "1"}))
  assert logs.stdout.split() == [
      "gcloud", "ai", "custom-jobs", "stream-logs", "123",
      "--region=us-central1", "--project=PROJECT"]
  assert cloud.requests == []


def test_the_job_runs_the_trainer_as_vertex_ai_would(cloud, gcs, bucket,
                                                     smoke_data, tmp_path):
  """The submitted package and args, run the way Vertex AI runs a Python
  package job: installed elsewhere than the working directory, AIP_*
  variables from baseOutputDirectory, data and outputs on gs://."""
  ok(subprocess.run([sys.executable, "-m", "trainer.data", "upload",
                     f"--src={smoke_data}", f"--dst=gs://{bucket}/arith"],
                    capture_output=True, text=True, cwd=ROOT))
  ok(vertex_ai(cloud, "submit", "--config.train.num_steps=20",
               env={**paths(bucket), "CONFIG": "configs/smoke.py"}, gcs=gcs))
  (pool,) = submitted(cloud)["jobSpec"]["workerPoolSpecs"]
  (uri,) = pool["pythonPackageSpec"]["packageUris"]
  from google.cloud import storage  # pylint: disable=g-import-not-at-top
  blob = storage.Client().bucket(bucket).blob(uri.split("/", 3)[3])
  package = tmp_path / "package"
  with tarfile.open(fileobj=io.BytesIO(blob.download_as_bytes())) as t:
    t.extractall(package)
  base = submitted(cloud)["jobSpec"]["baseOutputDirectory"]["outputUriPrefix"]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
         "PYTHONPATH": str(package / "masked-attention-trainer"),
         "AIP_MODEL_DIR": f"{base}/model/",
         "AIP_CHECKPOINT_DIR": f"{base}/checkpoints/",
         "AIP_TENSORBOARD_LOG_DIR": f"{base}/logs/"}
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  result = subprocess.run(
      [sys.executable, "-m", pool["pythonPackageSpec"]["pythonModule"],
       *pool["pythonPackageSpec"]["args"]], capture_output=True, text=True,
      env=env, cwd=workdir, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  assert tf.io.gfile.exists(f"{base}/model/saved_model.pb")
  metrics = json.loads(tf.io.gfile.GFile(f"{base}/model/metrics.json").read())
  assert metrics["step"] == 20
  assert tf.train.latest_checkpoint(f"{base}/checkpoints").endswith("ckpt-20")
  assert tf.io.gfile.glob(f"{base}/logs/train/events.out.tfevents.*")
