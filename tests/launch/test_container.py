"""launch/Dockerfile, built and run for real with podman, as Vertex AI runs
it: the trainer's flags as the container's args, AIP_* directories set
(mounted, or on the GCS emulator) and a chief + worker TF_CONFIG.

The image is built once per session on a local Debian base (see
tests/helpers/containers.py); podman's layer cache keeps a rebuild to the
layers whose files changed (the code, not TensorFlow). Without podman the
tests skip, and fail under CI=true.
"""

import json
import os
import subprocess
import uuid

import pytest
from google.cloud import storage as gcs_client

from tests.helpers import ROOT, containers
from tests.helpers.workers import fingerprint

pytestmark = pytest.mark.slow

SMOKE = "configs/smoke.py"  # the image's copy, relative to its WORKDIR
# One evaluation and one checkpoint, at the end: the smallest whole run.
TINY = ["--config.train.num_steps=10", "--config.train.eval_every_steps=10",
        "--config.train.checkpoint_every_steps=10"]


@pytest.fixture(scope="session")
def image():
  """The id of launch/Dockerfile's cpu image on BASE_IMAGE, built once."""
  reason = containers.unavailable()
  if reason:
    if os.environ.get("CI") == "true":
      pytest.fail(reason)
    pytest.skip(reason)
  try:
    containers.ensure_base_image()
    return containers.build_image()
  except containers.ContainerError as e:
    pytest.fail(str(e))


@pytest.fixture(scope="session")
def image_user(image):
  return containers.image_uid(image)


# Every file below the working directory but compiled bytecode, sorted.
LIST_FILES = """
import json, os
print(json.dumps(sorted(os.path.relpath(os.path.join(d, n))
                        for d, _, names in os.walk(".")
                        if "__pycache__" not in d for n in names)))
"""


def vertex_env(base):
  """What Vertex AI sets for a job whose baseOutputDirectory is `base`."""
  return {"AIP_MODEL_DIR": f"{base}/model",
          "AIP_CHECKPOINT_DIR": f"{base}/checkpoints",
          "AIP_TENSORBOARD_LOG_DIR": f"{base}/logs"}


def writable_dir(path):
  """A host directory the image's unprivileged user may write in."""
  path.mkdir()
  path.chmod(0o777)
  return path


@pytest.fixture
def data_dir(smoke_data):
  """The smoke data set, readable by the image's user (pytest makes its
  temporary directories private to root), mounted read-only."""
  os.chmod(smoke_data, 0o755)
  return smoke_data


def container_name(what):
  return f"trainer-test-{what}-{uuid.uuid4().hex[:8]}"


def test_image_runs_as_a_user_and_ignores_the_checkout(image, image_user):
  config = json.loads(containers.podman(
      "image", "inspect", "--format", "{{json .Config}}", image).stdout)
  assert config["Entrypoint"] == ["python", "-m", "trainer.task"]
  assert config["User"] == "trainer" and image_user != 0
  assert "PYTHONUNBUFFERED=1" in config["Env"]
  assert config["WorkingDir"] == "/app"
  listed = containers.run_container(
      image, "-c", LIST_FILES, name=container_name("ls"),
      extra=["--entrypoint", "python"])
  assert listed.returncode == 0, listed.stderr[-2000:]
  # The package's files, all of them (.dockerignore drops none of what the
  # image needs) and nothing else of the checkout.
  expected = ["LICENSE", "setup.py"] + [
      os.path.relpath(os.path.join(d, n), ROOT)
      for top in ("configs", "trainer")
      for d, dirs, names in os.walk(os.path.join(ROOT, top))
      if "__pycache__" not in d for n in names]
  assert json.loads(listed.stdout) == sorted(expected)


def test_container_trains_from_gcs_into_gcs(image, gcs, smoke_data):
  gcs.create_bucket("container")
  bucket = gcs_client.Client().bucket("container")
  for name in os.listdir(smoke_data):
    bucket.blob(f"data/{name}").upload_from_filename(
        os.path.join(smoke_data, name))
  ca_bundle = gcs.env["CURL_CA_BUNDLE"]
  # The emulator's proxy listens on the host's 127.0.0.1 (--network host);
  # TensorFlow in the container trusts the proxy's test CA, mounted.
  env = {k: v for k, v in gcs.env.items() if k != "CLOUDSDK_CONFIG"}
  result = containers.run_container(
      image, f"--config={SMOKE}", "--data_dir=gs://container/data", *TINY,
      name=container_name("gcs"),
      env={**env, **vertex_env("gs://container/job")},
      volumes=[(ca_bundle, ca_bundle, "ro")])
  assert result.returncode == 0, result.stderr[-3000:]
  names = {b.name for b in bucket.client.list_blobs("container",
                                                     prefix="job/")}
  assert "job/model/saved_model.pb" in names
  assert "job/checkpoints/ckpt-10.index" in names
  for split in ("train", "eval"):
    assert any(n.startswith(f"job/logs/{split}/events.out.tfevents")
               for n in names), (split, sorted(names))
  metrics = bucket.blob("job/model/metrics.json").download_as_bytes()
  assert json.loads(metrics)["step"] == 10


def test_chief_and_worker_containers_train_together(image, image_user,
                                                    data_dir, tmp_path):
  """Vertex AI's multi-worker job (--strategy=multi_worker_mirrored) on a
  mounted base output directory, data mounted read-only."""
  out = writable_dir(tmp_path / "out")
  runs = []
  with containers.held_ports(2, image_user) as ports:
    chief, worker = (f"127.0.0.1:{port}" for port in ports)
    cluster = {"chief": [chief], "worker": [worker]}
    try:
      for task in ("chief", "worker"):
        tf_config = json.dumps({"cluster": cluster,
                                "task": {"type": task, "index": 0}})
        name = container_name(task)
        command = containers.run_command(
            image, f"--config={SMOKE}", "--data_dir=/data",
            "--strategy=multi_worker_mirrored", *TINY, name=name,
            env={**vertex_env("/out"), "TF_CONFIG": tf_config,
                 "TF_GRPC_REUSE_PORT": "1"},
            volumes=[(data_dir, "/data", "ro"), (out, "/out", "rw")])
        with open(tmp_path / f"{task}.log", "w") as log:
          runs.append((task, name, subprocess.Popen(
              command, env=containers.podman_env(), stdout=log,
              stderr=subprocess.STDOUT)))
      codes = {task: process.wait(timeout=300) for task, _, process in runs}
    finally:
      for _, name, process in runs:
        if process.poll() is None:
          containers.podman("rm", "--force", name, check=False)
          process.wait()
  logs = {task: (tmp_path / f"{task}.log").read_text() for task in codes}
  assert codes == {"chief": 0, "worker": 0}, {t: l[-2000:]
                                             for t, l in logs.items()}
  assert "model_dir: /out/model" in logs["chief"]
  # One model: both replicas end on the same weights.
  assert fingerprint(logs["chief"]) == fingerprint(logs["worker"])
  model = out / "model"
  assert (model / "saved_model.pb").is_file()
  assert (model / "variables" / "variables.index").is_file()
  assert json.loads((model / "metrics.json").read_text())["step"] == 10
  assert (out / "checkpoints" / "ckpt-10.index").is_file()
  for split in ("train", "eval"):
    assert any(n.startswith("events.out.tfevents")
               for n in os.listdir(out / "logs" / split)), split
  # Only the chief wrote there (the worker writes to its own temp dir), as
  # the image's user, not as root.
  assert {p.stat().st_uid for p in out.rglob("*")} == {image_user}


def test_unknown_tf_extra_is_one_line(image):
  del image  # built: every layer before the check is cached
  result = containers.podman(
      "build", "--build-arg", f"BASE_IMAGE={containers.BASE_IMAGE}",
      "--build-arg", "TF_EXTRA=rocm", "--file", containers.DOCKERFILE,
      containers.ROOT, check=False)
  assert result.returncode != 0
  assert [line for line in result.stderr.splitlines()
          if line.startswith("error:")] == [
              "error: --build-arg TF_EXTRA=rocm: choose cpu, gpu or tpu"]
