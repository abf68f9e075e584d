"""launch/vertex_ai.sh through the real gcloud: the Vertex AI, Cloud Build and
Artifact Registry APIs of tests/helpers/cloud_fake.py, and the GCS emulator
for Cloud Build's source upload."""

import io
import os
import re
import subprocess
import tarfile

import pytest

from tests.helpers import ROOT
from tests.helpers.cloud_fake import (PROJECT, HttpError, check_body,
                                      custom_job_errors, error_line, ok)

SCRIPT = os.path.join(ROOT, "launch", "vertex_ai.sh")
JOBS = "/v1/projects/test-project/locations/us-central1/customJobs"
BUILDS = "/cloudbuild/v1/projects/test-project/locations/us-central1/builds"
REPOSITORIES = ("/artifactregistry/v1/projects/test-project/locations/"
                "us-central1/repositories")
REGISTRY = "us-central1-docker.pkg.dev/test-project/masked-attention"
# The script's variables, none taken from the caller's environment.
SETTINGS = ("PROJECT", "REGION", "REPOSITORY", "IMAGE", "STAGING_DIR",
            "DATA_DIR", "MODEL_DIR", "POLL_SECONDS", "MACHINE_TYPE",
            "ACCELERATOR_TYPE", "ACCELERATOR_COUNT", "WORKERS", "TPU_TOPOLOGY",
            "CONFIG", "DRY_RUN", "JOB_NAME", "REPO_DIR", "SPOT", "FLEX_START",
            "MAX_WAIT", "TIMEOUT", "RESTART_ON_WORKER_RESTART")


def vertex_ai(cloud, *args, env=None, gcs=None, timeout=120, project=PROJECT):
  """Runs launch/vertex_ai.sh. PROJECT is set to gcloud's configured project
  (`project`): left unset (project=None), the script asks `gcloud config
  get-value project` first, one more gcloud start-up (~1 s) per call, which
  test_status_and_cancel keeps covering. A dry run asks gcloud nothing:
  PROJECT stays unset there unless env sets it."""
  defaults = {"POLL_SECONDS": "0"}
  if project and not (env or {}).get("DRY_RUN"):
    defaults["PROJECT"] = project
  return cloud.run_script(SCRIPT, *args, timeout=timeout, unset=SETTINGS, env={
      **defaults, **(cloud.storage_env(gcs) if gcs else {}), **(env or {})})


def image(variant):
  """The image the script builds of this checkout's HEAD."""
  commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()
  return f"{REGISTRY}/trainer-{variant}:{commit}"


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
  return {"DATA_DIR": f"gs://{bucket}/arith",
          "MODEL_DIR": f"gs://{bucket}/runs/v1", "JOB_NAME": "job-1"}


def download(bucket, name):
  from google.cloud import storage  # pylint: disable=g-import-not-at-top
  return storage.Client().bucket(bucket).blob(name).download_as_bytes()


def test_submit_builds_the_image_of_head_and_the_job_runs_it(cloud, gcs, bucket):
  """A first submit: the repository is created, Cloud Build builds the
  image of HEAD from its uploaded source, every pool of the job runs that
  image with the trainer's flags as its args. (The image itself, run the
  way Vertex AI runs it -- AIP_* directories, data and outputs on gs:// --
  is tests/launch/test_container.py's.)"""
  result = ok(vertex_ai(cloud, "submit", "--config.train.num_steps=20",
                        env={**paths(bucket), "CONFIG": "configs/smoke.py"}, gcs=gcs))
  uri = image("cpu")
  (created,) = cloud.find("POST", REPOSITORIES + "$")
  assert created.query["repositoryId"] == "masked-attention"
  assert created.body["format"] == "DOCKER"
  (build_request,) = cloud.find("POST", BUILDS + "$")
  build = build_request.body
  assert build["steps"] == [{
      "name": "gcr.io/cloud-builders/docker",
      "args": ["build", "-f", "launch/Dockerfile", "--build-arg", "TF_EXTRA=cpu",
               "-t", uri, "."]}]
  assert build["images"] == [uri]
  assert re.search(f"^vertex_ai: built {re.escape(uri)} in [0-9]+m[0-9]{{2}}s \\(Cloud Build ",
                   result.stderr, re.M)
  # The source: gcloud's default staging bucket, holding HEAD's tree.
  source = build["source"]["storageSource"]
  assert source["bucket"] == "test-project_cloudbuild"
  assert source["object"].startswith("source/")
  with tarfile.open(fileobj=io.BytesIO(download(source["bucket"], source["object"]))) as t:
    assert {"launch/Dockerfile", ".dockerignore", "setup.py", "trainer/task.py",
            "configs/smoke.py"} <= set(t.getnames())

  body = submitted(cloud)
  assert body["displayName"] == "job-1"
  spec = body["jobSpec"]
  base = f"gs://{bucket}/runs/v1"
  assert spec["baseOutputDirectory"] == {"outputUriPrefix": base}
  (pool,) = spec["workerPoolSpecs"]
  assert pool["machineSpec"] == {"machineType": "n1-standard-8"}
  assert str(pool["replicaCount"]) == "1"
  assert "pythonPackageSpec" not in pool
  assert pool["containerSpec"] == {"imageUri": uri, "args": [
      "--config=configs/smoke.py", "--strategy=default",
      f"--data_dir=gs://{bucket}/arith", "--config.train.num_steps=20"]}
  (job_id,) = cloud.jobs
  assert result.stdout.splitlines()[:2] == [
      f"job: {job_id}",
      "console: https://console.cloud.google.com/ai/platform/locations/"
      f"us-central1/training/{job_id}?project=test-project"]


def test_submit_gpus_from_an_existing_image_and_from_ones_own(cloud):
  """The tag of HEAD exists: no build. With IMAGE: no registry at all."""
  uri = image("gpu")
  cloud.add_docker_image(uri)
  env = {**paths("b"), "ACCELERATOR_TYPE": "NVIDIA_L4",
         "ACCELERATOR_COUNT": "2", "MACHINE_TYPE": "g2-standard-24"}
  result = ok(vertex_ai(cloud, "submit", env=env))
  assert f"vertex_ai: image {uri} exists" in result.stderr
  assert cloud.find(None, "^/cloudbuild/") == []
  (pool,) = submitted(cloud)["jobSpec"]["workerPoolSpecs"]
  assert pool["machineSpec"] == {"machineType": "g2-standard-24",
                                 "acceleratorType": "NVIDIA_L4",
                                 "acceleratorCount": 2}
  assert pool["containerSpec"]["imageUri"] == uri
  assert pool["containerSpec"]["args"] == [
      "--config=configs/gpu.py", "--strategy=mirrored", "--data_dir=gs://b/arith"]
  assert "scheduling" not in submitted(cloud)["jobSpec"]  # none asked for
  cloud.reset()
  own = "europe-docker.pkg.dev/someone/images/trainer:v2"
  ok(vertex_ai(cloud, "submit", env={**env, "WORKERS": "3", "IMAGE": own}))
  assert cloud.find(None, "^/(artifactregistry|cloudbuild)/") == []
  chief, workers = submitted(cloud)["jobSpec"]["workerPoolSpecs"]
  assert str(chief["replicaCount"]) == "1" and str(workers["replicaCount"]) == "2"
  for pool in (chief, workers):
    assert pool["machineSpec"]["acceleratorCount"] == 2
    assert pool["containerSpec"]["imageUri"] == own
    assert pool["containerSpec"]["args"][:2] == [
        "--config=configs/gpu.py", "--strategy=multi_worker_mirrored"]


def test_submit_tpu_runs_the_tpu_image(cloud):
  cloud.add_docker_image(image("tpu"))
  env = {**paths("b"), "MACHINE_TYPE": "ct5lp-hightpu-4t", "TPU_TOPOLOGY": "2x2"}
  ok(vertex_ai(cloud, "submit", env=env))
  (pool,) = submitted(cloud)["jobSpec"]["workerPoolSpecs"]
  assert pool["machineSpec"] == {"machineType": "ct5lp-hightpu-4t",
                                 "tpuTopology": "2x2"}
  assert pool["containerSpec"] == {"imageUri": image("tpu"), "args": [
      "--config=configs/tpu.py", "--strategy=tpu", "--tpu=local",
      "--data_dir=gs://b/arith"]}


def test_build_a_slow_one_that_fails_then_one_that_is_kept(cloud, gcs, bucket):
  """Progress while the build runs, one line when it fails; a rebuild of a
  tag that exists is skipped. STAGING_DIR holds the source."""
  cloud.build_working_polls = 1
  cloud.build_result = "FAILURE"
  uri = image("gpu")
  failed = vertex_ai(cloud, "build", "gpu", gcs=gcs)
  assert failed.returncode == 2
  (build_id,) = cloud.builds
  progress = [l for l in failed.stderr.splitlines() if l.startswith("vertex_ai: build ")]
  assert [l.rsplit(",", 1)[0] for l in progress] == [
      f"vertex_ai: build {build_id}; log: https://console.cloud.google.com/"
      f"cloud-build/builds;region=us-central1/{build_id}?project=123456789012",
      f"vertex_ai: build {build_id} WORKING"]
  line = error_line(failed)
  assert re.match(f"error: the build of {re.escape(uri)} ended FAILURE after [0-9]+m[0-9]{{2}}s: ",
                  line)
  assert line.endswith(': Build step failure: build step 0 "gcr.io/cloud-builders/docker" '
                       "failed: step exited with non-zero status: 1 (log: https://"
                       "console.cloud.google.com/cloud-build/builds;region=us-central1/"
                       f"{build_id}?project=123456789012)")
  assert uri not in cloud.docker_tags

  cloud.build_working_polls = 0
  cloud.build_result = "SUCCESS"
  built = ok(vertex_ai(cloud, "build", "gpu", gcs=gcs,
                       env={"STAGING_DIR": f"gs://{bucket}/staging/"}))
  assert built.stdout.splitlines() == [f"image: {uri}"]
  source = cloud.builds[max(cloud.builds)]["source"]["storageSource"]
  assert source["bucket"] == bucket and source["object"].startswith("staging/source/")
  assert len(cloud.find("POST", REPOSITORIES + "$")) == 1  # made by the first build
  again = ok(vertex_ai(cloud, "build", "gpu"))
  assert again.stdout.splitlines() == [f"image: {uri}"]
  assert f"vertex_ai: image {uri} exists (built from {uri[-12:]}): not rebuilt" in again.stderr
  assert len(cloud.builds) == 2


def test_a_refused_job_is_one_line(cloud):
  env = {**paths("b"), "IMAGE": "example.com/trainer:1"}
  quota = ("The following quota metrics exceed quota limits: "
           "aiplatform.googleapis.com/custom_model_training_cpus")
  cloud.fail_next("aiplatform.customJobs.create", quota, http_status=429)
  result = vertex_ai(cloud, "submit", env=env)
  assert result.returncode == 2
  assert error_line(result) == f"error: Vertex AI refused the job: RESOURCE_EXHAUSTED: {quota}"
  assert "job:" not in result.stdout
  cloud.fail_next("aiplatform.customJobs.create",
                  'Invalid JSON payload received. Unknown name "tpuTopolgy": Cannot '
                  'find field.\nInvalid JSON payload received. Unknown name "x".',
                  status="INVALID_ARGUMENT", http_status=400)
  result = vertex_ai(cloud, "submit", env=env)
  assert error_line(result) == (
      'error: Vertex AI refused the job: INVALID_ARGUMENT: Invalid JSON payload received. '
      'Unknown name "tpuTopolgy": Cannot find field.; Invalid JSON payload received. '
      'Unknown name "x".')


@pytest.mark.parametrize("args, env, message", [
    (["submit"], {"DATA_DIR": None}, "error: DATA_DIR is required for submit"),
    (["submit"], {"DATA_DIR": "/data/arith"},
     "error: DATA_DIR must be a gs:// URL (a Vertex AI job cannot read this "
     "machine's disk), got '/data/arith'"),
    (["submit"], {"MODEL_DIR": "gs://"}, "error: MODEL_DIR must be a gs:// URL"),
    (["submit"], {"WORKERS": "0"}, "error: WORKERS must be a positive number of machines"),
    (["submit"], {"MACHINE_TYPE": "ct5lp-hightpu-4t"},
     "error: MACHINE_TYPE=ct5lp-hightpu-4t needs TPU_TOPOLOGY"),
    (["submit"], {"MACHINE_TYPE": "ct5lp-hightpu-4t", "TPU_TOPOLOGY": "2x2",
                  "WORKERS": "2"}, "error: WORKERS=2: a TPU job runs on one machine"),
    (["submit"], {"TPU_TOPOLOGY": "2x2"}, "error: TPU_TOPOLOGY=2x2 is for TPU machine types"),
    (["submit"], {"ACCELERATOR_COUNT": "2"},
     "error: ACCELERATOR_COUNT=2 without ACCELERATOR_TYPE"),
    (["submit"], {"SPOT": "yes"}, "error: SPOT must be 0 or 1, got 'yes'"),
    (["submit"], {"RESTART_ON_WORKER_RESTART": "true"},
     "error: RESTART_ON_WORKER_RESTART must be 0 or 1, got 'true'"),
    (["submit"], {"SPOT": "1", "FLEX_START": "1", "ACCELERATOR_TYPE": "NVIDIA_L4"},
     "error: SPOT=1 and FLEX_START=1 are two scheduling strategies: choose one"),
    (["submit"], {"FLEX_START": "1"}, "error: FLEX_START=1 queues GPU machines "
     "(Dynamic Workload Scheduler): set ACCELERATOR_TYPE, or drop FLEX_START"),
    (["submit"], {"SPOT": "1", "MAX_WAIT": "2h"}, "error: MAX_WAIT=2h is the wait for "
     "FLEX_START=1 machines: set FLEX_START=1, or drop MAX_WAIT"),
    (["submit"], {"TIMEOUT": "1.5h"}, "error: TIMEOUT must be a duration: seconds or a "
     "number with s, m, h or d (e.g. 86400, 90m, 24h, 7d), got '1.5h'"),
    (["submit"], {"TIMEOUT": "0s"}, "error: TIMEOUT must be above 0"),
    (["submit"], {"FLEX_START": "1", "ACCELERATOR_TYPE": "NVIDIA_L4",
                  "MAX_WAIT": "soon"}, "error: MAX_WAIT must be a duration"),
    (["submit"], {"FLEX_START": "1", "ACCELERATOR_TYPE": "NVIDIA_L4", "TIMEOUT": "8d"},
     "error: TIMEOUT=8d: a FLEX_START=1 job runs at most 7d; lower TIMEOUT"),
    # The table of what runs where (trainer/cloud/preflight.py), per row kind.
    (["submit"], {"MACHINE_TYPE": "tpu7x-standard-4t", "TPU_TOPOLOGY": "2x2x1"},
     "error: TensorFlow does not support TPU7x: use v6e or earlier"),
    (["submit"], {"MACHINE_TYPE": "ct6e-standard-4t", "TPU_TOPOLOGY": "2x2",
                  "IMAGE": "us-docker.pkg.dev/p/r/trainer-gpu:1"},
     "error: the gpu image cannot train on ct6e-standard-4t (no TPU runtime in it)"),
    (["submit"], {"MACHINE_TYPE": "g2-standard-8"},
     "error: MACHINE_TYPE=g2-standard-8 needs ACCELERATOR_TYPE=NVIDIA_L4"),
    (["submit"], {"ACCELERATOR_TYPE": "NVIDIA_L4"},
     "error: ACCELERATOR_TYPE=NVIDIA_L4 does not fit MACHINE_TYPE=n1-standard-8"),
    (["tune", "study.txt"], {"SPOT": "2"}, "error: SPOT must be 0 or 1, got '2'"),
    (["build", "arm"], {}, "error: unknown image variant 'arm': cpu, gpu or tpu"),
    (["build", "cpu", "gpu"], {}, "error: usage: launch/vertex_ai.sh build [cpu|gpu|tpu]"),
    (["build"], {"TPU_TOPOLOGY": "2x2"}, "error: TPU_TOPOLOGY=2x2 is for TPU machine types"),
    (["build", "cpu"], {"STAGING_DIR": "/tmp/s"},
     "error: STAGING_DIR must be a gs:// URL (Cloud Build reads the source from "
     "Cloud Storage), got '/tmp/s'"),
    (["build", "cpu"], {"POLL_SECONDS": "soon"},
     "error: POLL_SECONDS must be a number of seconds, got 'soon'"),
])
def test_bad_settings_are_refused_before_any_request(cloud, tmp_path, args, env,
                                                    message):
  full = {**paths("b"), **env}
  if args[0] == "tune":
    args = ["tune", study(tmp_path)]
    full["IMAGE"] = "example.com/trainer:1"
  result = vertex_ai(cloud, *args, env={k: v for k, v in full.items() if v is not None})
  assert result.returncode == 2
  assert error_line(result).startswith(message)
  assert cloud.requests == []


def test_the_image_is_the_head_and_a_dirty_tree_is_said(cloud, tmp_path):
  """A checkout's HEAD is what ships (tag: its commit); uncommitted changes
  get a warning; without launch/Dockerfile at HEAD, one error line."""
  repo = tmp_path / "repo"
  (repo / "trainer").mkdir(parents=True)
  (repo / "setup.py").write_text("# setup\n")
  (repo / "trainer" / "task.py").write_text("# task\n")
  git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
  for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "no Dockerfile"]):
    subprocess.run(git + args, check=True, capture_output=True)
  env = {"REPO_DIR": str(repo), "DRY_RUN": "1"}
  missing = vertex_ai(cloud, "build", "cpu", env=env)
  assert error_line(missing) == (f"error: launch/Dockerfile is not in the HEAD of {repo}: "
                                 "commit it (the image is built from HEAD)")
  (repo / "launch").mkdir()
  (repo / "launch" / "Dockerfile").write_text("FROM scratch\n")
  for args in (["add", "."], ["commit", "-qm", "Dockerfile"]):
    subprocess.run(git + args, check=True, capture_output=True)
  (repo / "trainer" / "task.py").write_text("# changed\n")
  commit = subprocess.run(git + ["rev-parse", "--short=12", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
  dirty = ok(vertex_ai(cloud, "build", "cpu", env=env))
  assert dirty.stderr.splitlines()[0] == (
      f"warning: uncommitted changes in {repo} are not in the image: it is built "
      f"from HEAD ({commit})")
  assert f'-t, "us-central1-docker.pkg.dev/PROJECT/masked-attention/trainer-cpu:{commit}"' \
      in dirty.stdout
  assert cloud.requests == []


def test_status_and_cancel(cloud):
  ok(vertex_ai(cloud, "submit", env={**paths("b"), "IMAGE": "example.com/trainer:1"}))
  (job_id,) = cloud.jobs
  assert ok(vertex_ai(cloud, "status", job_id)).stdout == "JOB_STATE_PENDING\n"
  cloud.set_job_state(job_id, "JOB_STATE_RUNNING")
  ok(vertex_ai(cloud, "cancel", job_id))
  assert cloud.find("POST", f"{JOBS}/{job_id}:cancel$")
  assert ok(vertex_ai(cloud, "status", job_id)).stdout == "JOB_STATE_CANCELLING\n"
  cloud.fail_job(job_id, "The replica workerpool0-0 exited with a non-zero status of 2.")
  assert ok(vertex_ai(cloud, "status", job_id)).stdout == (
      "JOB_STATE_FAILED: The replica workerpool0-0 exited with a non-zero status of 2.\n")
  # PROJECT unset: the project is gcloud's configured one (the fake's
  # CLOUDSDK_CORE_PROJECT), asked with `gcloud config get-value project`.
  missing = vertex_ai(cloud, "status", "42", project=None)
  assert missing.returncode == 2
  assert error_line(missing) == (
      "error: cannot read job 42: NOT_FOUND: CustomJob "
      "'projects/test-project/locations/us-central1/customJobs/42' was not found")


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


TUNING_JOBS = "/v1/projects/test-project/locations/us-central1/hyperparameterTuningJobs"
STUDY = """\
# tune the peak learning rate and the width
metric accuracy maximize
max_trials 6
parallel_trials 2      # at a time
param config.train.learning_rate double 1e-8 0.01 log
param config.train.warmup_steps integer 0 500
param config.model.hidden_size categorical 12,15,24
param config.train.min_learning_rate_ratio discrete 0,0.05,0.1
algorithm random
"""


def study(tmp_path, text=STUDY):
  path = tmp_path / "study.txt"
  path.write_text(text)
  return str(path)


def test_tune_creates_a_tuning_job_whose_trials_run_the_submit_job(cloud, tmp_path):
  """The study's parameters become the StudySpec (Vertex AI adds
  --PARAMETER=VALUE to each trial's args: the trainer's --config.* flags);
  each trial is the job submit would create, under MODEL_DIR."""
  env = {**paths("b"), "IMAGE": "example.com/trainer:1", "CONFIG": "configs/smoke.py"}
  result = ok(vertex_ai(cloud, "tune", study(tmp_path), "--config.train.num_steps=200",
                        env=env))
  (request,) = cloud.find("POST", TUNING_JOBS + "$")
  body = request.body
  assert body["displayName"] == "job-1"
  assert body["studySpec"] == {
      "metrics": [{"metricId": "accuracy", "goal": "MAXIMIZE"}],
      "algorithm": "RANDOM_SEARCH",
      "parameters": [
          {"parameterId": "config.train.learning_rate", "scaleType": "UNIT_LOG_SCALE",
           "doubleValueSpec": {"minValue": 1e-8, "maxValue": 0.01}},
          {"parameterId": "config.train.warmup_steps", "scaleType": "UNIT_LINEAR_SCALE",
           "integerValueSpec": {"minValue": "0", "maxValue": "500"}},
          {"parameterId": "config.model.hidden_size",
           "categoricalValueSpec": {"values": ["12", "15", "24"]}},
          {"parameterId": "config.train.min_learning_rate_ratio",
           "scaleType": "UNIT_LINEAR_SCALE",
           "discreteValueSpec": {"values": [0, 0.05, 0.1]}}]}
  assert (body["maxTrialCount"], body["parallelTrialCount"]) == (6, 2)
  trial = body["trialJobSpec"]
  assert trial["baseOutputDirectory"] == {"outputUriPrefix": "gs://b/runs/v1"}
  (pool,) = trial["workerPoolSpecs"]
  assert pool["containerSpec"] == {"imageUri": "example.com/trainer:1", "args": [
      "--config=configs/smoke.py", "--strategy=default", "--data_dir=gs://b/arith",
      "--config.train.num_steps=200"]}
  # 1e-8 went as 1.0e-08: gcloud reads YAML 1.1, where 1e-08 is no number.
  assert "YAML1_1Warning" not in result.stderr
  (job_id,) = cloud.tuning_jobs
  assert result.stdout.splitlines() == [
      f"tuning job: {job_id} (6 trials, 2 at a time)",
      f"next: gcloud ai hp-tuning-jobs describe {job_id} --region=us-central1 "
      "--project=test-project; each trial's outputs in "
      "gs://b/runs/v1/TRIAL_ID/{model,checkpoints,logs}"]
  assert cloud.find("POST", JOBS) == []

  # Dry: the spec and the command, no request.
  cloud.reset()
  dry = ok(vertex_ai(cloud, "tune", study(tmp_path), env={**env, "DRY_RUN": "1"}))
  assert '#   "maxTrialCount": 6,' in dry.stdout
  assert re.search(r"^gcloud ai hp-tuning-jobs create --region=us-central1 "
                   r"--project=PROJECT --display-name=job-1 --config=\S+/tuning_job.yaml "
                   r"--format=value\\\(name\\\)$", dry.stdout, re.M)
  assert cloud.requests == []

  # Vertex AI's refusal is one line.
  cloud.fail_next("aiplatform.hyperparameterTuningJobs.create", "The following quota "
                  "metrics exceed quota limits: custom_model_training_cpus", http_status=429)
  refused = vertex_ai(cloud, "tune", study(tmp_path), env=env)
  assert error_line(refused).startswith(
      "error: Vertex AI refused the tuning job: RESOURCE_EXHAUSTED: The following quota")


@pytest.mark.parametrize("text, args, message", [
    ("metric accuracy maximize\nmax_trials 2\n", (), "{f}: no param line: nothing to tune"),
    ("max_trials 2\nparam config.train.learning_rate double 0.001 0.01\n", (),
     "{f}: no metric line"),
    ("metric f1 maximize\n", (), "{f}:1: the metric is accuracy or loss"),
    ("metric loss up\n", (), "{f}:1: the goal is maximize or minimize, got 'up'"),
    ("metric loss minimize\nmax_trials 0\n", (), "{f}:2: usage: max_trials N"),
    ("\n# x\nparam config.train.learning_rate double 0.01 0.001\n", (),
     "{f}:3: MIN 0.01 must be below MAX 0.001"),
    ("param config.train.learning_rate double 0 0.01 log\n", (),
     "{f}:1: a log scale needs MIN above 0, got 0"),
    ("param config.train.learning_rate double 1e-4 big\n", (),
     "{f}:1: MAX must be a number, got 'big'"),
    ("param config.train.warmup_steps integer 0 1.5\n", (),
     "{f}:1: an integer parameter's MIN and MAX are integers"),
    ("param learning_rate double 0.001 0.01\n", (),
     "{f}:1: a parameter is a config field, e.g. config.train.learning_rate"),
    ("param config.train.lr double 0.001 0.01\nmetric loss minimize\nmax_trials 3\n", (),
     "{f}: config.train.lr is not a config field"),
    ("param config.model.hidden_size categorical 12,15 log\n", (),
     "{f}:1: a categorical parameter has no scale"),
    ("param config.train.warmup_steps integer 0 5\nparam config.train.warmup_steps "
     "integer 0 9\n", (), "{f}:2: config.train.warmup_steps is a parameter twice"),
    ("metric loss minimize\nmax_trials 3\nparallel_trials 4\n"
     "param config.train.warmup_steps integer 0 5\n", (),
     "{f}: parallel_trials 4 is more than max_trials 3"),
    ("metric loss minimize\nmax_trials 3\nalgorithm grid\n"
     "param config.train.learning_rate double 0.001 0.01\n", (),
     "{f}: grid search takes integer, discrete and categorical parameters only"),
    ("metric loss minimize\nmax_trials 3\nparam config.train.warmup_steps integer 0 5\n",
     ("--config.train.warmup_steps=3",), "--config.train.warmup_steps=3: "
     "config.train.warmup_steps is a parameter of the study in {f}"),
    ("trials 3\n", (), "{f}:1: unknown line 'trials'"),
])
def test_a_bad_study_is_one_line_before_any_request(cloud, tmp_path, text, args, message):
  path = study(tmp_path, text)
  result = vertex_ai(cloud, "tune", path, *args,
                     env={**paths("b"), "IMAGE": "example.com/trainer:1"})
  assert result.returncode == 2
  assert error_line(result).startswith("error: " + message.format(f=path))
  assert cloud.requests == []


def test_tune_needs_a_study_file_and_the_submit_settings(cloud, tmp_path):
  env = {**paths("b"), "IMAGE": "example.com/trainer:1"}
  for args, message in (
      ((), "error: usage: launch/vertex_ai.sh tune STUDY [trainer flags]"),
      (("--config.train.num_steps=3",),
       "error: usage: launch/vertex_ai.sh tune STUDY [trainer flags]"),
      ((str(tmp_path / "missing.txt"),), f"error: study file '{tmp_path}/missing.txt' not found")):
    assert error_line(vertex_ai(cloud, "tune", *args, env=env)) == message
  no_data = vertex_ai(cloud, "tune", study(tmp_path), env={**env, "DATA_DIR": "/data"})
  assert error_line(no_data).startswith("error: DATA_DIR must be a gs:// URL")
  assert cloud.requests == []


def test_scheduling_reaches_the_job_and_the_tuning_trials(cloud, tmp_path):
  """SPOT, FLEX_START, MAX_WAIT, TIMEOUT and RESTART_ON_WORKER_RESTART become
  the job spec's scheduling (durations as the API's "Ns" strings), through
  gcloud's --config, for a custom job and for a tuning job's trials."""
  env = {**paths("b"), "IMAGE": "example.com/trainer:1"}
  ok(vertex_ai(cloud, "submit", env={**env, "SPOT": "1", "TIMEOUT": "24h",
                                     "RESTART_ON_WORKER_RESTART": "1"}))
  assert submitted(cloud)["jobSpec"]["scheduling"] == {
      "strategy": "SPOT", "timeout": "86400s", "restartJobOnWorkerRestart": True}
  cloud.reset()
  ok(vertex_ai(cloud, "submit", env={
      **env, "FLEX_START": "1", "MAX_WAIT": "90m", "TIMEOUT": "7d", "WORKERS": "2",
      "ACCELERATOR_TYPE": "NVIDIA_H100_80GB", "MACHINE_TYPE": "a3-highgpu-1g"}))
  spec = submitted(cloud)["jobSpec"]
  assert spec["scheduling"] == {"strategy": "FLEX_START", "maxWaitDuration": "5400s",
                                "timeout": "604800s"}
  assert len(spec["workerPoolSpecs"]) == 2
  cloud.reset()
  ok(vertex_ai(cloud, "tune", study(tmp_path), env={
      **env, "SPOT": "1", "TIMEOUT": "3600", "RESTART_ON_WORKER_RESTART": "1"}))
  (request,) = cloud.find("POST", TUNING_JOBS + "$")
  assert request.body["trialJobSpec"]["scheduling"] == {
      "strategy": "SPOT", "timeout": "3600s", "restartJobOnWorkerRestart": True}
  assert "scheduling" not in request.body  # the trials', not the tuning job's


def test_the_fake_reads_scheduling_as_the_api_does():
  """Scheduling's fields are the SDK message's: a misspelt name or an
  unknown strategy is a 400, and a Duration is "Ns", never "24h"."""
  pool = {"machineSpec": {"machineType": "n1-standard-8"}, "replicaCount": 1,
          "containerSpec": {"imageUri": "example.com/trainer:1"}}
  good = {"strategy": "FLEX_START", "maxWaitDuration": "0s", "timeout": "1.5s",
          "restartJobOnWorkerRestart": True}
  body = {"displayName": "j", "jobSpec": {"workerPoolSpecs": [pool], "scheduling": good}}
  check_body("POST", JOBS, body)
  assert custom_job_errors(body) == []
  for scheduling, words in (({"restartJobOnWorkerRestrat": True}, "Unknown name "
                             '"restartJobOnWorkerRestrat"'),
                            ({"strategy": "PREEMPTIBLE"}, "Invalid value at "
                             "'custom_job.job_spec.scheduling.strategy'")):
    with pytest.raises(HttpError) as refused:
      check_body("POST", JOBS, {"jobSpec": {"workerPoolSpecs": [pool],
                                            "scheduling": scheduling}})
    assert refused.value.code == 400 and words in refused.value.message
  assert custom_job_errors({"jobSpec": {"workerPoolSpecs": [pool], "scheduling": {
      "timeout": "24h"}}}) == [("job_spec.scheduling.timeout", "Invalid value "
                                "(type.googleapis.com/google.protobuf.Duration), \"24h\"")]
