"""Shared test helpers."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Every process of this checkout a test starts goes through trainer_process.
from tests.helpers.trainer_process import run_module  # noqa: E402


@pytest.fixture
def run():
  """run_module: `python -m module args...` run to its end."""
  return run_module


# --- The `slow` marker ----------------------------------------------------------
# Applied here, not in the test files: a test is slow if it starts processes
# (the trainer, gcloud, worker processes, launch/ scripts), the GCS emulator or
# the gcloud fake. `pytest -m "not slow"` is the edit-test loop (in-process
# unit tests only, under a minute); the full suite runs them all.
SLOW_FILES = frozenset({
    "test_task.py", "test_multi_worker.py", "test_multi_worker_start.py",
    "test_tpu_vm.py", "test_vertex_ai.py",
    "test_launch.py", "test_local_launcher.py", "test_gcs.py",
    "test_gcs_emulator.py",
    "test_faults.py", "test_fault_checkpoint.py", "test_fault_gcs.py",
    "test_fault_data.py",
    "test_profile.py", "test_data_benchmark.py", "test_predict.py",
    "test_soak.py", "test_eval_pass.py", "test_equivalence.py",
    "test_fault_run_dir.py", "test_fault_paths.py",
    "test_run_lock.py", "test_target.py", "test_tensorboard.py",
    "test_package.py"})  # pip builds the wheel: ~20 s
SLOW_FIXTURES = frozenset({"gcs", "cloud", "run", "smoke_run",
                           "mirrored_smoke_run", "half_trained",
                           "tiny_disk"})


def pytest_collection_modifyitems(items):
  for item in items:
    if item.path.name in SLOW_FILES or SLOW_FIXTURES.intersection(item.fixturenames):
      item.add_marker(pytest.mark.slow)
  # Slow tests first (a stable sort: each file keeps its order): pytest-xdist
  # hands tests out in this order, so the run ends on short in-process tests
  # that even out the workers, not on one long test.
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory):
  """The smoke config's data set (train and eval splits), generated once
per session: under xdist too, one directory both workers read, so that a
run one worker made for both (tests/helpers/shared.py) names the same
--data_dir as the other worker's tests (else a resume of it would say
`resumed with changes: data.dir`)."""
  from configs import smoke  # pylint: disable=g-import-not-at-top
  from trainer.data import generate  # pylint: disable=g-import-not-at-top
  from tests.helpers import shared  # pylint: disable=g-import-not-at-top
  config = smoke.get_config()

  def produce(root):
    generate.ensure_dataset(str(root / "data"), config.data, config.seed,
                            num_processes=1)

  return str(shared.once_per_session(tmp_path_factory, "smoke_data", produce)
             / "data")


# --- Trainer runs that several tests read ------------------------------------
# One run each per session (under xdist too: tests/helpers/shared.py), so a
# test that only reads a plain run's outputs costs no trainer start-up of
# its own. None of these tests may write into the run's model_dir.


@pytest.fixture(scope="session")
def smoke_run(smoke_data, tmp_path_factory):
  """The smoke config, default strategy, run as a user runs it
  (TF_CPP_MIN_LOG_LEVEL unset): a tests.helpers.shared.FinishedRun."""
  from tests.helpers import shared  # pylint: disable=g-import-not-at-top
  return shared.trainer_run_once(tmp_path_factory, "smoke_run", smoke_data,
                                 env={"TF_CPP_MIN_LOG_LEVEL": None})


@pytest.fixture(scope="session")
def mirrored_smoke_run(smoke_data, tmp_path_factory):
  """The smoke config under MirroredStrategy on 2 logical CPU devices: a
  tests.helpers.shared.FinishedRun."""
  from tests.helpers import shared  # pylint: disable=g-import-not-at-top
  return shared.trainer_run_once(tmp_path_factory, "mirrored_smoke_run",
                                 smoke_data, "--strategy=mirrored",
                                 "--num_cpu_devices=2")


@pytest.fixture(scope="session")
def half_trained(smoke_data, tmp_path_factory):
  """A smoke run stopped at its checkpoint of step 20 (of 40): its
  model_dir, which no test may write in (`resumable` is a copy)."""
  from tests.helpers import shared  # pylint: disable=g-import-not-at-top
  run = shared.trainer_run_once(tmp_path_factory, "half_trained",
                                smoke_data, "--config.train.num_steps=20")
  assert run.returncode == 0, run.stderr[-3000:]
  return run.model_dir


@pytest.fixture
def resumable(half_trained, tmp_path):
  """A copy of `half_trained`: resuming it trains steps 20..40."""
  from tests.helpers import shared  # pylint: disable=g-import-not-at-top
  return shared.copy_of(half_trained, tmp_path)


@pytest.fixture
def tiny_disk(tmp_path):
  """A 2 MiB tmpfs: a real file system that fills up."""
  mount_point = tmp_path / "disk"
  mount_point.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs",
                            str(mount_point)], capture_output=True, text=True)
  if mounted.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
  try:
    yield mount_point
  finally:
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


# --- GCS emulator -----------------------------------------------------------
# tests/ is a package, so pytest (default "prepend" import mode) puts the
# checkout on sys.path: the helpers import as tests.helpers.*.
# gcs_emulator imports nothing heavy at module level (cryptography and the
# emulator package are imported when an emulator starts).
from tests.helpers.gcs_emulator import GcsEmulator, TF_IMPORT_TIME_ENV  # noqa: E402

# TensorFlow reads its GCS retry settings once, when `import tensorflow`
# registers the gs:// filesystem, and test modules import TensorFlow at
# collection, before any fixture runs. So the low retry settings go into the
# environment here, at conftest import; setdefault keeps a value the caller
# chose. They only affect gs:// calls.
for _key, _value in TF_IMPORT_TIME_ENV.items():
  os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
  """A running GCS emulator reachable as gs:// (TF) and via google-cloud-storage.

  Its `env` is applied to os.environ for the rest of the session (so
  in-process TF and google-cloud-storage use it, and subprocesses started with
  os.environ inherit it) and the previous values are restored at the end.
  Tests create their own buckets (`gcs.create_bucket`) so they stay
  independent. Its packages are in the `test` extra: missing, the tests fail.
  """
  emulator = GcsEmulator(str(tmp_path_factory.mktemp("gcs-emulator")))
  saved = {}
  try:
    emulator.start()
    saved = {k: os.environ.get(k) for k in emulator.env}
    os.environ.update(emulator.env)
    yield emulator
  finally:
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
    emulator.stop()


# --- Fake Google Cloud APIs for the real gcloud ------------------------------
from tests.helpers.cloud_fake import CloudFake  # noqa: E402


@pytest.fixture(scope="session")
def _cloud_server(tmp_path_factory):
  """One CloudFake per session: start-up activates a service account with
  gcloud (about 1 s); the `cloud` fixture resets it for every test."""
  if shutil.which("gcloud") is None:
    message = ("gcloud (Google Cloud CLI) is not installed: the cloud-fake "
               "tests run the real gcloud (https://cloud.google.com/sdk/docs/install)")
    if os.environ.get("CI") == "true":
      pytest.fail(message)
    pytest.skip(message)
  fake = CloudFake(str(tmp_path_factory.mktemp("cloud-fake")))
  try:
    fake.start()
    yield fake
  finally:
    fake.stop()


@pytest.fixture
def cloud(_cloud_server):
  """tests/helpers/cloud_fake.CloudFake, reset: fake Cloud TPU, Compute,
  Vertex AI, Cloud Build and Artifact Registry APIs (request bodies read
  with the Cloud SDK's messages) plus ssh/scp stand-ins, for the real gcloud.

  Run gcloud (or a launch/ script) with env {**os.environ, **cloud.env}:
  cloud.env must come after os.environ, because the `gcs` fixture puts its
  own CLOUDSDK_CONFIG there. With `gcs` too, add cloud.storage_env(gcs) for
  `gcloud storage`. Requests: cloud.requests / cloud.find(method, regex);
  ssh/scp: cloud.ssh_calls(), cloud.scp_calls(), cloud.worker_home(tpu, i).
  """
  _cloud_server.reset()
  return _cloud_server
