"""Where a run writes: --model_dir, or Vertex AI's AIP_* directories."""

import pytest

from trainer import task
from trainer.training import run_dir


def test_one_model_dir_holds_everything():
  dirs = run_dir.RunDirs.under("gs://b/runs/1")
  assert (dirs.checkpoints, dirs.logs, dirs.export, dirs.files) == (
      "gs://b/runs/1/checkpoints", "gs://b/runs/1", "gs://b/runs/1/export",
      "gs://b/runs/1")
  assert dirs.origin == (("--model_dir", "gs://b/runs/1"),)
  assert dirs.all() == ["gs://b/runs/1/checkpoints", "gs://b/runs/1",
                        "gs://b/runs/1/export"]


def test_vertex_ai_directories():
  # As Vertex AI sets them for baseOutputDirectory=gs://b/out.
  env = {"AIP_MODEL_DIR": "gs://b/out/model/",
         "AIP_CHECKPOINT_DIR": "gs://b/out/checkpoints/",
         "AIP_TENSORBOARD_LOG_DIR": "gs://b/out/logs/"}
  dirs = run_dir.RunDirs.from_vertex_env(env)
  assert (dirs.checkpoints, dirs.logs, dirs.export, dirs.files) == (
      "gs://b/out/checkpoints", "gs://b/out/logs", "gs://b/out/model",
      "gs://b/out/model")
  assert [name for name, _ in dirs.origin] == list(run_dir.VERTEX_ENV)


@pytest.mark.parametrize("model_dir, parent", [
    ("gs://b/out/model", "gs://b/out"), ("gs://b", "gs://b"),
    ("/tmp/out/model/", "/tmp/out")])
def test_vertex_model_dir_alone(model_dir, parent):
  dirs = run_dir.RunDirs.from_vertex_env({"AIP_MODEL_DIR": model_dir})
  assert dirs.export == model_dir.rstrip("/")
  assert dirs.checkpoints == f"{parent}/checkpoints"
  assert dirs.logs == f"{parent}/logs"


def test_no_vertex_environment():
  assert run_dir.RunDirs.from_vertex_env({}) is None
  assert run_dir.RunDirs.from_vertex_env({"AIP_CHECKPOINT_DIR": "/x"}) is None


def test_model_dir_flag_wins_over_vertex(monkeypatch, tmp_path):
  monkeypatch.setenv("AIP_MODEL_DIR", "gs://b/out/model/")
  assert task.run_dirs("/runs/1", str(tmp_path)).files == "/runs/1"
  assert task.run_dirs(None, str(tmp_path)).export == "gs://b/out/model"
  monkeypatch.delenv("AIP_MODEL_DIR")
  default = task.run_dirs(None, str(tmp_path))
  assert default.files.startswith(f"{tmp_path}/runs/")


def test_non_chief_writes_below_its_temporary_directory():
  dirs = run_dir.RunDirs.under("gs://b/run")
  chief = run_dir.Paths.for_worker(dirs, True, None)
  assert chief.read == chief.write == dirs
  worker = run_dir.Paths.for_worker(dirs, False, "/tmp/w")
  assert worker.read == dirs
  assert worker.write.all() == ["/tmp/w/checkpoints", "/tmp/w",
                                "/tmp/w/export"]
