"""config.train.profile_steps: a tf.profiler trace of chosen host loops."""

import glob
import json
import os

import pytest

from configs import smoke
from trainer import errors
from trainer.training import plan

from tests.helpers import ROOT

SMOKE = os.path.join(ROOT, "configs", "smoke.py")


@pytest.mark.parametrize("value, expected", [
    ("", None), ("0,1", (0, 1)), ("5,10", (5, 10)), (" 5, 10 ", (5, 10))])
def test_profile_steps_parses(value, expected):
  config = smoke.get_config()
  config.train.profile_steps = value
  window = plan.resolve(config).profile
  assert (window and (window.start, window.count)) == expected


@pytest.mark.parametrize("value", ["abc", "5", "5,", "1,2,3", "-1,3", "3,0",
                                   "1.5,2"])
def test_bad_profile_steps_name_the_field_and_the_form(value):
  config = smoke.get_config()
  config.train.profile_steps = value
  with pytest.raises(errors.UserError, match=r"config\.train\.profile_steps="
                     r".* is not START,COUNT"):
    plan.resolve(config, num_replicas=1)


def test_profile_past_the_last_step_is_an_error():
  config = smoke.get_config()
  config.train.profile_steps = f"{config.train.num_steps},5"
  with pytest.raises(errors.UserError, match="nothing to trace"):
    plan.resolve(config, num_replicas=1)


def test_smoke_run_writes_a_trace_and_keeps_its_steps(run, smoke_data,
                                                      tmp_path):
  model_dir = tmp_path / "run"
  # Steps 5 to 15: neither bound is a steps_per_loop (10) boundary.
  result = run("trainer.task", f"--config={SMOKE}", f"--data_dir={smoke_data}",
               f"--model_dir={model_dir}",
               "--config.train.profile_steps=5,10")
  assert result.returncode == 0, result.stderr[-3000:]
  traces = glob.glob(str(model_dir / "plugins" / "profile" / "*" /
                         "*.xplane.pb"))
  assert len(traces) == 1, traces
  assert os.path.getsize(traces[0]) > 0
  lines = [l for l in result.stderr.splitlines() if l.startswith("profile:")]
  assert len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith(
      f"profile: steps 5 to 15 traced to {os.path.dirname(traces[0])};")
  assert f"tensorboard --logdir {model_dir}" in lines[0]
  metrics = json.loads((model_dir / "metrics.json").read_text())
  assert metrics["step"] == 40
  assert set(metrics["trace_counts"].values()) == {1}  # no retrace


def test_bad_profile_steps_is_one_error_line(run, smoke_data, tmp_path):
  result = run("trainer.task", f"--config={SMOKE}", f"--data_dir={smoke_data}",
               f"--model_dir={tmp_path / 'run'}",
               "--config.train.profile_steps=10")
  assert result.returncode == 2, result.stderr[-3000:]
  error_lines = [l for l in result.stderr.splitlines()
                 if l.startswith("error:")]
  assert error_lines == [
      "error: config.train.profile_steps='10' is not START,COUNT: two "
      "integers, START >= 0 and COUNT > 0 (e.g. '100,20': the 20 steps after "
      "step 100), or '' for no profile"]
  assert not (tmp_path / "run").exists()
