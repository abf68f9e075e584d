"""trainer/training/hypertune.py: a Vertex AI tuning trial's metric file, in
cloudml-hypertune's format, and a trial run end to end with the environment
Vertex AI sets (what Vertex AI itself does with the file cannot run here)."""

import json

from tests.helpers import SMOKE
from trainer.training import hypertune


def lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_only_a_trial_reports_and_where_its_file_is():
  assert hypertune.Reporter.from_env({}) is None
  assert hypertune.Reporter.from_env({"CLOUD_ML_TRIAL_ID": ""}) is None
  default = hypertune.Reporter.from_env({"CLOUD_ML_TRIAL_ID": "7"})
  assert (default.trial, default.path) == ("7", "/tmp/hypertune/output.metrics")
  chosen = hypertune.Reporter.from_env({"CLOUD_ML_TRIAL_ID": "7",
                                        "CLOUD_ML_HP_METRIC_FILE": "/x/m"})
  assert chosen.path == "/x/m"


def test_the_file_is_cloudml_hypertunes_and_keeps_the_last_100(tmp_path):
  path = tmp_path / "hypertune" / "output.metrics"   # made when missing
  reporter = hypertune.Reporter("12", str(path))
  reporter.report(20, {"accuracy": 0.5, "loss": 1.25, "examples": 64})
  text = path.read_text()
  # What cloudml-hypertune writes for report(tag, value, global_step) per
  # tag: sorted keys, the value and the step as strings.
  first, second = text.splitlines()
  assert first.startswith('{"accuracy": "0.5", "global_step": "20", '
                          '"timestamp": ')
  assert first.endswith(', "trial": "12"}')
  assert json.loads(second)["loss"] == "1.25"
  for step in range(21, 81):
    reporter.report(step, {"accuracy": 1, "loss": 0})
  entries = lines(path)
  assert len(entries) == 100   # 2 a report: the last 50 reports
  assert entries[0]["global_step"] == "31" and entries[-1] == {
      "loss": "0.0", "global_step": "80", "trial": "12",
      "timestamp": entries[-1]["timestamp"]}
  assert [p.name for p in path.parent.iterdir()] == ["output.metrics"]


def test_a_trial_reports_every_evaluation_and_writes_under_its_own_dir(
    run, smoke_data, tmp_path):
  """A trial as Vertex AI starts it: the job's args, the study's parameter
  appended as a flag, CLOUD_ML_TRIAL_ID, and the AIP_* directories of trial
  3 under the job's baseOutputDirectory (BASE/3/model/ ...)."""
  base = tmp_path / "base"
  metric_file = tmp_path / "hypertune" / "output.metrics"
  env = {"CLOUD_ML_TRIAL_ID": "3", "CLOUD_ML_HP_METRIC_FILE": str(metric_file),
         "AIP_MODEL_DIR": f"{base}/3/model/",
         "AIP_CHECKPOINT_DIR": f"{base}/3/checkpoints/",
         "AIP_TENSORBOARD_LOG_DIR": f"{base}/3/logs/"}
  result = run("trainer.task", f"--config={SMOKE}", "--strategy=default",
               f"--data_dir={smoke_data}", "--config.train.learning_rate=0.004",
               env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(p.name for p in base.iterdir()) == ["3"]
  assert sorted(p.name for p in (base / "3").iterdir()) == [
      "checkpoints", "logs", "model"]
  config = json.loads((base / "3" / "model" / "config.json").read_text())
  assert config["train"]["learning_rate"] == 0.004
  metrics = json.loads((base / "3" / "model" / "metrics.json").read_text())
  entries = lines(metric_file)
  # The smoke config evaluates at steps 20 and 40: accuracy and loss each.
  assert [(sorted(e), e["global_step"], e["trial"]) for e in entries] == [
      (["accuracy", "global_step", "timestamp", "trial"], "20", "3"),
      (["global_step", "loss", "timestamp", "trial"], "20", "3"),
      (["accuracy", "global_step", "timestamp", "trial"], "40", "3"),
      (["global_step", "loss", "timestamp", "trial"], "40", "3")]
  assert float(entries[2]["accuracy"]) == metrics["eval"]["accuracy"]
  assert float(entries[3]["loss"]) == metrics["eval"]["loss"]
