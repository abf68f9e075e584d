"""The real entry point, `python -m trainer.task`, in subprocesses."""

import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from configs import smoke

from trainer.model import layers as model_lib

from tests.helpers import closed_port, error_lines
from tests.helpers.eval_checks import eval_line, OPERATION_NAMES, assert_by_op_adds_up
from tests.helpers.trainer_process import (run_command, start,
                                           trainer_command)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "smoke.py")


def task(run, *flags, **kwargs):
  return run("trainer.task", f"--config={SMOKE}", *flags, **kwargs)



def model_weights(model_dir):
  """{variable path: array} of the smoke model in the latest checkpoint."""
  model = model_lib.build_model(smoke.get_config().model)
  latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  tf.train.Checkpoint(model=model).restore(
      latest).assert_existing_objects_matched().expect_partial()
  return {v.path: np.asarray(v) for v in model.weights}


def test_smoke_run_writes_every_output(smoke_run):
  # The session's plain smoke run (conftest), run as a user runs it:
  # TF_CPP_MIN_LOG_LEVEL unset.
  result, model_dir = smoke_run, smoke_run.model_dir
  assert result.returncode == 0, result.stderr[-3000:]
  # Only the trainer's own lines: none of TensorFlow's C++ log lines
  # (I0000 ..., "WARNING: All log messages before absl::InitializeLog()").
  tf_lines = [l for l in result.stderr.splitlines()
              if re.match(r"[IWEF]\d{4} |WARNING: All log messages", l)]
  assert not tf_lines, tf_lines
  assert f"model_dir: {model_dir}" in result.stdout
  assert "train: 100%" in result.stderr and "40/40 steps" in result.stderr
  assert re.search(eval_line(40), result.stderr, re.M), result.stderr[-3000:]
  # One start-up line, at the first host loop (smoke: 10 steps per loop).
  assert len(re.findall(
      r"^start-up: \d+\.\d s from TensorFlow import to the first step \(the "
      r"import itself: \d+\.\d s\); first host loop \(tracing \+ XLA "
      r"compile \+ \d+ steps\) \d+\.\d s$", result.stderr, re.M)) == 1, (
          result.stderr[-3000:])
  metrics = json.loads((model_dir / "metrics.json").read_text())
  assert metrics["step"] == 40 and metrics["num_replicas"] == 1
  assert np.isfinite(metrics["eval"]["loss"])
  assert_by_op_adds_up(metrics["eval"])
  assert set(metrics["trace_counts"].values()) == {1}
  assert json.loads((model_dir / "config.json").read_text())["train"][
      "num_steps"] == 40
  # TensorBoard (a dependency) reads the scalars the run wrote.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  for sub, tag in (("train", "loss"), ("eval", "accuracy"),
                   *(("eval", f"{metric}_{op}") for op in OPERATION_NAMES
                     for metric in ("loss", "accuracy"))):
    events = event_accumulator.EventAccumulator(str(model_dir / sub))
    events.Reload()
    assert tag in events.Tags()["tensors"], events.Tags()
    assert events.Tensors(tag)[-1].step == 40
  assert (model_dir / "export" / "saved_model.pb").exists()
  assert len(model_weights(str(model_dir))) == 8


def test_a_finished_run_ends_with_its_time_and_the_commands_that_show_it(
    smoke_run, run):
  result, model_dir = smoke_run, smoke_run.model_dir
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"model_dir: {model_dir}" in result.stdout
  found = re.fullmatch(
      r"done in (\d+\.\d s|\d+ min \d\d s) \(training \d+%, the largest "
      r"overhead: [^)]+\); look at it: (tensorboard .+); "
      r"try it: (python -m trainer\.predict .+)",
      result.stderr.splitlines()[-1])
  assert found, result.stderr[-3000:]
  tensorboard, predict = shlex.split(found[2]), shlex.split(found[3])
  assert tensorboard == ["tensorboard", "--logdir", str(model_dir)]
  assert shutil.which("tensorboard", path=os.path.dirname(sys.executable))
  assert predict == ["python", "-m", "trainer.predict",
                     f"--model_dir={model_dir}", "x=3,y=4:x*y"]
  answered = run(*predict[2:])  # python -m trainer.predict ...
  assert answered.returncode == 0, answered.stderr[-3000:]
  assert re.fullmatch(r"x=3,y=4:x\*y -> (\S|' ') \(p=[01]\.\d\d\)\n",
                      answered.stdout), answered.stdout


@pytest.mark.parametrize("seconds, took", [
    (59.94, "59.9 s"), (62.4, "1 min 02 s"), (3725.4, "1 h 02 min")])
def test_the_done_line_quotes_paths_and_follows_vertex_ai_dirs(seconds, took):
  from trainer.training import loop  # pylint: disable=g-import-not-at-top
  from trainer.training import run_dir  # pylint: disable=g-import-not-at-top
  assert loop.done_line(seconds, run_dir.RunDirs.under("/tmp/a b")) == (
      f"done in {took}; look at it: tensorboard --logdir '/tmp/a b'; try it: "
      "python -m trainer.predict --model_dir='/tmp/a b' 'x=3,y=4:x*y'")
  # Vertex AI: the logs and the SavedModel in directories of their own.
  vertex = run_dir.RunDirs.from_vertex_env({
      "AIP_MODEL_DIR": "gs://b/model", "AIP_TENSORBOARD_LOG_DIR": "gs://b/tb"})
  assert loop.done_line(seconds, vertex).endswith(
      "tensorboard --logdir gs://b/tb; try it: python -m trainer.predict "
      "--model_dir=gs://b/model 'x=3,y=4:x*y'")


def test_mirrored_on_two_cpu_devices(mirrored_smoke_run):
  # The session's mirrored smoke run (conftest).
  result, model_dir = mirrored_smoke_run, mirrored_smoke_run.model_dir
  assert result.returncode == 0, result.stderr[-3000:]
  assert "MirroredStrategy with 2 replica(s)" in result.stderr
  metrics = json.loads((model_dir / "metrics.json").read_text())
  assert metrics["num_replicas"] == 2
  # 4 host loops and 2 evaluations: the loops are traced once; each
  # replica's compiled step once per replica device.
  assert metrics["trace_counts"] == {"forward_backward": 2, "forward": 2,
                                     "apply_update": 2, "train_loop": 1,
                                     "eval_loop": 1}
  assert np.isfinite(metrics["train"]["loss"])
  assert_by_op_adds_up(metrics["eval"])  # summed over both replicas


def test_sigterm_checkpoints_and_resume_matches_uninterrupted(
    run, smoke_data, tmp_path):
  flags = [f"--data_dir={smoke_data}", "--config.train.exact_resume=True",
           "--config.train.num_steps=1500", "--config.train.steps_per_loop=10",
           "--config.train.eval_every_steps=0",
           "--config.train.checkpoint_every_steps=0"]
  reference = tmp_path / "reference"
  result = task(run, *flags, f"--model_dir={reference}")
  assert result.returncode == 0, result.stderr[-3000:]

  # The README's first command (no --model_dir: a new run directory in the
  # cache), stopped; the printed hint is the command that resumes it.
  env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
  process = start(trainer_command(*flags), stdout=subprocess.PIPE, env=env)
  stderr = []
  for line in process.stderr:  # the first progress line: training runs
    stderr.append(line)
    if line.startswith("train: ") and "steps/s" in line:
      process.send_signal(signal.SIGTERM)
      break
  stderr.extend(process.stderr)
  assert process.wait(timeout=120) == 0, "".join(stderr)[-3000:]
  interrupted = pathlib.Path(
      process.stdout.read().split("model_dir: ")[1].split("\n")[0])
  assert interrupted.parent == tmp_path / "cache" / (
      "masked-attention-trainer") / "runs"
  stderr = "".join(stderr)
  hint = re.search(r"^SIGTERM: saved a checkpoint at step (\d+) in "
                   r"(\S+); to resume: (.*)$", stderr, re.M)
  assert hint, stderr[-3000:]
  stopped_at = int(hint.group(1))
  assert hint.group(2) == f"{interrupted}/checkpoints"
  assert 0 < stopped_at < 1500
  assert not (interrupted / "export").exists()

  command = shlex.split(hint.group(3))
  assert command[:3] == ["python", "-m", "trainer.task"]
  assert command[-1] == f"--model_dir={interrupted}"
  result = run_command([sys.executable, *command[1:]], env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"resuming from {interrupted}/checkpoints/ckpt-{stopped_at}" in (
      result.stderr)
  assert "resumed with changes" not in result.stderr
  assert json.loads((interrupted / "metrics.json").read_text())["step"] == 1500
  expected, resumed = model_weights(str(reference)), model_weights(
      str(interrupted))
  assert sorted(expected) == sorted(resumed)
  for name in expected:
    np.testing.assert_array_equal(resumed[name], expected[name], err_msg=name)


@pytest.mark.parametrize("flags, message", [
    (["--strategy=bogus"], "strategy"),
    (["--strategy=tpu"], "no TPU reachable at --tpu=local"),
    (["--strategy=tpu", "--tpu=grpc://127.0.0.1:{port}"],
     "no TPU reachable at --tpu=grpc://127.0.0.1:{port} (cannot connect"),
    (["--strategy=mirrored", "--num_cpu_devices=3"],
     "global_batch_size=16 is not divisible by the 3 replicas"),
    (["--strategy=multi_worker_mirrored"], "needs TF_CONFIG"),
    (["--config.train.num_steps=0"], "num_steps=0 must be positive"),
    (["--config.train.num_steps=many"], "num_steps"),
    (["--config.train.no_such_field=1"], "no_such_field"),
    (["extra"], "unexpected arguments ['extra']"),
])
def test_bad_flags_are_one_error_line(run, smoke_data, tmp_path, flags,
                                      message):
  port = closed_port()
  flags = [f.format(port=port) for f in flags]
  model_dir = tmp_path / "run"
  result = task(run, *flags, f"--data_dir={smoke_data}",
                f"--model_dir={model_dir}", timeout=120,
                env={"TF_CONFIG": None})
  assert result.returncode == 2, result.stderr[-3000:]
  errors = error_lines(result)
  assert len(errors) == 1, result.stderr[-3000:]
  assert message.format(port=port) in errors[0]
  assert "Traceback" not in result.stderr
  assert not model_dir.exists()


def test_tf_config_that_is_not_json(run, smoke_data, tmp_path):
  result = task(run, "--strategy=mirrored", f"--data_dir={smoke_data}",
                f"--model_dir={tmp_path}/run", env={"TF_CONFIG": "{cluster"})
  assert result.returncode == 2
  errors = error_lines(result)
  assert len(errors) == 1 and "TF_CONFIG is not valid JSON" in errors[0]


def test_missing_config_file(run, tmp_path):
  result = run("trainer.task", f"--config={tmp_path}/nope.py",
               f"--model_dir={tmp_path}/run")
  assert result.returncode == 2
  errors = error_lines(result)
  assert len(errors) == 1 and "nope.py" in errors[0]
  assert f"--config={tmp_path}/nope.py: no such file" in (
      result.stderr.splitlines()[-1])


def test_data_dir_without_shards(run, tmp_path):
  result = task(run, f"--data_dir={tmp_path}", f"--model_dir={tmp_path}/run")
  assert result.returncode == 2
  assert error_lines(result) == [
      f"error: no training shards: no file matches "
      f"'{tmp_path}/train-*-of-*.tfrecord' (generate them with python -m "
      "trainer.data generate --out_dir=DATA_DIR, or fix --data_dir / "
      "config.data)"]


def test_config_flag_finds_the_installed_configs(run, smoke_data, tmp_path):
  # Run from another directory (as a Vertex AI job or a TPU VM does): the
  # relative --config=configs/smoke.py names the installed package's file.
  model_dir = tmp_path / "run"
  result = run("trainer.task", "--config=configs/smoke.py",
               "--config.train.num_steps=2", "--config.train.eval_steps=1",
               f"--data_dir={smoke_data}", f"--model_dir={model_dir}",
               cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((model_dir / "config.json").read_text())["model"][
      "hidden_size"] == smoke.get_config().model.hidden_size
  missing = run("trainer.task", "--config=configs/nonexistent.py",
                cwd=str(tmp_path))
  assert missing.returncode == 2
  shipped = ", ".join(f"configs/{n}" for n in sorted(os.listdir(
      os.path.join(ROOT, "configs"))) if n.endswith(".py") and n[0] != "_")
  assert error_lines(missing) == [
      "error: --config=configs/nonexistent.py: no such file (the package's "
      f"configs: {shipped})"]


def test_vertex_ai_environment_without_model_dir(run, smoke_data, tmp_path):
  # What a Vertex AI custom job with baseOutputDirectory=BASE sets.
  base = tmp_path / "base"
  env = {"AIP_MODEL_DIR": f"{base}/model/",
         "AIP_CHECKPOINT_DIR": f"{base}/checkpoints/",
         "AIP_TENSORBOARD_LOG_DIR": f"{base}/logs/"}
  result = task(run, f"--data_dir={smoke_data}", env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"model_dir: {base}/model" in result.stdout
  assert (base / "model" / "saved_model.pb").exists()
  for name in ("config.json", "metrics.json"):
    assert (base / "model" / name).exists()
  assert tf.train.latest_checkpoint(str(base / "checkpoints")).endswith(
      "ckpt-40")
  for sub in ("train", "eval"):
    assert list((base / "logs" / sub).glob("events.out.tfevents.*"))
  assert sorted(p.name for p in base.iterdir()) == [
      "checkpoints", "logs", "model"]
  # The same job restarted resumes from AIP_CHECKPOINT_DIR.
  again = task(run, f"--data_dir={smoke_data}", env=env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "is already at step 40 of 40" in again.stderr
