"""config.train.target_accuracy / target_loss end a run at its target, and
benchmarks/time_to_accuracy.py times runs to one.

Two smoke runs in all, shared by the module's fixtures: one in process that
never reaches its target (its eval curve picks a target the second one
reaches mid-run), and one through the benchmark, a real `python -m
trainer.task` that ends at that target by itself.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from configs import smoke
from trainer import errors
from trainer.model import export
from trainer.training import loop
from trainer.training import plan
from trainer.training import run_dir
from trainer.training import summaries

from tests.conftest import ROOT
from tests.helpers import eval_checks

# A smoke run evaluated over the whole eval split every 2 steps, slowly
# enough to see the eval accuracy climb from chance (~0.03) to its plateau
# (~0.46) in about 10 steps.
TRAINER_FLAGS = {"eval_steps": 0, "num_steps": 20, "steps_per_loop": 2,
                 "eval_every_steps": 2, "learning_rate": 1e-3}


def target_config(**train):
  config = smoke.get_config()
  config.train.update(TRAINER_FLAGS)
  config.train.update(train)
  return config


def train_in_process(config, data_dir, model_dir):
  """train_and_evaluate on the default strategy; (results, the loop's lines:
  what it says through loop.say)."""
  lines = []
  say = loop.say
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(loop, "say", lambda line: (lines.append(line), say(line)))
    strategy = tf.distribute.get_strategy()
    results = loop.train_and_evaluate(
        plan.for_strategy(config, strategy, data_dir), strategy,
        run_dir.RunDirs.under(str(model_dir)))
  return results, lines


def eval_curve(lines):
  """{step: accuracy} of the run's eval lines."""
  return dict(filter(None, map(eval_checks.parse_eval_line, lines)))


# --- the plan: one line per bad target ------------------------------------


@pytest.mark.parametrize("train, message", [
    ({"target_accuracy": 1.5}, r"config\.train\.target_accuracy=1\.5 must be "
     r"in \[0, 1\] \(0: off\)"),
    ({"target_accuracy": math.nan}, r"config\.train\.target_accuracy=nan "),
    ({"target_loss": -0.1}, r"config\.train\.target_loss=-0\.1 must be a "
     r"finite number >= 0 \(0: off\)"),
    ({"target_loss": math.inf}, r"config\.train\.target_loss=inf must be "),
    ({"target_accuracy": 0.9, "target_loss": 0.1},
     r"config\.train\.target_accuracy=0\.9 and config\.train\.target_loss="
     r"0\.1 are both set: set one of them \(the other 0\)"),
    ({"target_accuracy": 0.9, "eval_steps": 4},
     r"config\.train\.target_accuracy=0\.9 is judged on evaluations over the "
     r"whole eval split, but config\.train\.eval_steps=4 reads part of it: "
     r"set config\.train\.eval_steps=0"),
    ({"target_loss": 0.2, "eval_every_steps": 0},
     r"config\.train\.target_loss=0\.2 needs evaluations during the run, but "
     r"config\.train\.eval_every_steps=0: set it"),
])
def test_a_bad_target_is_one_line_naming_its_fields(train, message):
  with pytest.raises(errors.UserError, match="^" + message) as raised:
    plan.resolve(target_config(**train))
  assert "\n" not in str(raised.value)


def test_the_plan_holds_the_target_and_how_it_is_reached():
  assert plan.resolve(target_config()).target is None  # 0.0: off
  accuracy = plan.resolve(target_config(target_accuracy=0.9)).target
  assert accuracy == plan.Target("accuracy", 0.9)
  assert accuracy.reached_by({"accuracy": 0.9, "loss": 5.0})
  assert not accuracy.reached_by({"accuracy": 0.8999, "loss": 0.0})
  loss = plan.resolve(target_config(target_loss=0.25)).target
  assert loss.reached_by({"accuracy": 0.0, "loss": 0.25})
  assert not loss.reached_by({"accuracy": 1.0, "loss": 0.2501})
  assert plan.resolve(target_config(target_accuracy=1)).target.value == 1.0


def test_the_benchmark_reads_the_trainers_eval_line():
  metrics = {"loss": 0.12345, "accuracy": 0.98765, "examples": 300,
             "by_op": {name: {"loss": 0.1, "accuracy": 0.9, "examples": 100}
                       for name in ("add", "sub", "mul")}}
  line = summaries.eval_line(12000, metrics, 304)
  assert eval_checks.parse_eval_line(line) == (12000, 0.9877)
  # Through absl's default prefix (a run with --verbosity set) too.
  assert eval_checks.parse_eval_line(
      "I1203 10:00:00.000 140 loop.py:400] " + line) == (12000, 0.9877)
  for other in ("train  40% | 80/200 steps, loss 0.5, accuracy 0.812",
                "target: eval accuracy 0.9912 >= 0.99 at step 12000 after "
                "301.4 s: stopping"):
    assert eval_checks.parse_eval_line(other) is None


# --- the runs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def missed(smoke_data, tmp_path_factory):
  """A smoke run whose target (accuracy 1.0) no evaluation reaches."""
  model_dir = tmp_path_factory.mktemp("missed")
  results, lines = train_in_process(target_config(target_accuracy=1.0),
                                    smoke_data, model_dir)
  return results, lines, model_dir


def test_a_run_that_misses_its_target_trains_to_num_steps_and_says_so(missed):
  results, lines, model_dir = missed
  curve = eval_curve(lines)
  assert sorted(curve) == list(range(2, 21, 2))  # the final one included
  best_step = max(curve, key=curve.get)
  assert results["step"] == 20 and results["stopped"] is None
  target = results["target"]
  assert target == {"metric": "accuracy", "value": 1.0, "reached": False,
                    "step": None, "seconds": None,
                    "best": pytest.approx(curve[best_step], abs=5e-5),
                    "best_step": best_step}
  with open(model_dir / "metrics.json", encoding="utf-8") as f:
    assert json.load(f)["target"] == target
  # Then the finished run's last line (test_task checks it).
  assert lines[-2] == (
      "target: not reached: no evaluation up to step 20 had accuracy >= 1 "
      f"(the best: {curve[best_step]:.4f} at step {best_step})")
  assert lines[-1].startswith("done in "), lines[-1]


@pytest.fixture(scope="module")
def benchmarked(missed, smoke_data, tmp_path_factory):
  """benchmarks/time_to_accuracy.py, one run of the trainer to a target
  between two of the missed run's evaluations: (its output, the target,
  the step expected to reach it, the kept run directory)."""
  curve = eval_curve(missed[1])
  steps = sorted(curve)[:-1]  # mid-run evaluations only
  # The evaluation that rises most above every earlier one; the target in
  # the middle of that rise (a margin for run-to-run noise).
  rises = {step: curve[step] - max(curve[s] for s in steps if s < step)
           for step in steps[1:]}
  step = max(rises, key=rises.get)
  assert rises[step] > 0, curve  # the smoke run learns
  target = round(curve[step] - rises[step] / 2, 4)
  flags = [f"--config.train.{name}={value}"
           for name, value in TRAINER_FLAGS.items()]
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "time_to_accuracy.py"),
       "--config=configs/smoke.py", f"--target={target}", "--repeats=1",
       f"--data_dir={smoke_data}", "--keep", "--", *flags],
      capture_output=True, text=True, timeout=300, cwd=ROOT,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, check=False)
  kept = re.search(r"^kept (.+)$", result.stdout, re.M)
  yield result, target, step, kept and kept.group(1)
  if kept:
    shutil.rmtree(kept.group(1), ignore_errors=True)


def test_the_benchmark_times_a_run_that_ends_at_its_target(benchmarked):
  result, target, step, _ = benchmarked
  assert result.returncode == 0, result.stdout + result.stderr
  label = r"this checkout \([0-9a-f]+(?:, with changes)?\)"
  assert re.search(rf"^{label}: {re.escape(ROOT)}; ends at the target by itself$",
                   result.stdout, re.M), result.stdout
  progress = re.findall(rf"^  {label}, run 1: eval at step (\d+): accuracy "
                        r"(\d\.\d{4}) at [\d.]+ s( \(target\))?$",
                        result.stdout, re.M)
  assert [int(s) for s, _, _ in progress] == list(range(2, step + 1, 2))
  assert [mark for _, _, mark in progress] == [""] * (len(progress) - 1) + [
      " (target)"]
  accuracy = progress[-1][1]
  assert float(accuracy) >= target
  found = re.search(
      rf"^{label}, run 1: time to target ([\d.]+) s \(step {step}, accuracy "
      rf"{accuracy}\), ([\d.]+) s of CPU; start to exit ([\d.]+) s "
      r"\(([\d.]+) s of CPU\); time: training \d+% "
      r"\([\d.]+ s\), (.+); total ([\d.]+) s$", result.stdout, re.M)
  assert found, result.stdout
  to_target, cpu_to_target, to_exit, cpu_to_exit = (
      float(found.group(i)) for i in (1, 2, 3, 4))
  assert 0 < to_target < to_exit
  # The process's CPU at its target line, then in all (its threads).
  assert 0 < cpu_to_target <= cpu_to_exit
  # The run's own time split (metrics.json "time"), every part named.
  parts = dict(part.rsplit(" ", 2)[:2] for part in found.group(5).split(", "))
  assert set(parts) == {"start_up", "compile", "input_wait", "eval",
                        "checkpoint", "export", "other"}, found.group(5)
  assert float(found.group(6)) <= to_exit
  assert re.search(
      rf"^{label}: time to target {found.group(1)} s \(median of 1 runs; min "
      rf"{found.group(1)}, max {found.group(1)}\), {found.group(2)} s of CPU "
      rf"\(median of 1 runs; min {found.group(2)}, max {found.group(2)}\), "
      rf"step {step} \(median of 1 runs; min {step}, max {step}\); start to "
      rf"exit {found.group(3)} s \(median of 1 runs; min {found.group(3)}, "
      rf"max {found.group(3)}\)$", result.stdout, re.M), result.stdout


def test_a_run_at_its_target_ends_finished_and_a_rerun_has_nothing_to_do(
    benchmarked, smoke_data):
  result, target, step, kept = benchmarked
  assert kept, result.stdout
  run = os.path.join(kept, "this1")
  with open(os.path.join(run, "metrics.json"), encoding="utf-8") as f:
    metrics = json.load(f)
  to_target, to_exit = (float(t) for t in re.search(
      r"time to target ([\d.]+) s .*; start to exit ([\d.]+) s .*; time: ",
      result.stdout, re.M).groups())
  reached = metrics["eval"]["accuracy"]
  assert reached >= target
  assert metrics["step"] == step and metrics["stopped"] is None
  assert metrics["target"] == {"metric": "accuracy", "value": target,
                               "reached": reached, "step": step,
                               "seconds": metrics["target"]["seconds"]}
  # From the process's start, as the benchmark's clock: the same moment.
  assert metrics["target"]["seconds"] == pytest.approx(to_target, abs=1.0)
  assert metrics["checkpoint"].endswith(f"ckpt-{step}")
  assert tf.train.latest_checkpoint(os.path.join(run, "checkpoints")) == (
      metrics["checkpoint"])
  assert export.is_saved_model(os.path.join(run, "export"))
  with open(os.path.join(kept, "this1.log"), encoding="utf-8") as f:
    log = f.read()
  assert re.search(
      rf"^target: eval accuracy {reached:.4f} >= {target:g} at step {step} "
      r"after [\d.]+ s: stopping$", log, re.M), log
  assert f"eval at step {step + 2}:" not in log  # no evaluation after it
  # Its weight histograms (interval 1,000) at its last step, the target's.
  histogram_steps = {
      event.step
      for path in tf.io.gfile.glob(os.path.join(run, "train", "events.*"))
      for event in tf.compat.v1.train.summary_iterator(path)
      for value in event.summary.value if value.tag == "dense/kernel"}
  assert histogram_steps == {step}

  # The same command again: finished at the target, nothing to do.
  results, lines = train_in_process(target_config(target_accuracy=target),
                                    smoke_data, run)
  assert results == {"step": step, "stopped": None}
  assert any(re.fullmatch(
      rf"\S+ is at step {step}, where an evaluation reached config\.train\."
      rf"target_accuracy={target}, and the export and metrics\.json in \S+ "
      "are of that checkpoint: nothing to do", line) for line in lines), lines
