"""Where a run's time went (trainer/training/timing.py): the clock's
arithmetic, the session's smoke runs' metrics.json "time", their train/time/*
scalars and last line, and one real process whose parts are checked against
its wall time measured from outside."""

import json
import re
import time

import pytest

from trainer.training import timing

from tests.helpers.trainer_process import Trainer
from tests.training.test_train import read_scalars

# What the done line says of the time (loop.done_line).
DONE = re.compile(r"done in (\d+\.\d s|\d+ min \d\d s) \(training (\d+)%, the "
                  r"largest overhead: (.+) (\d+(?:\.\d)? s|\d+ min \d\d s)\); "
                  r"look at it: ")


def test_the_parts_add_up_to_the_clock_and_follow_the_switches():
  clock = timing.Clock(time.perf_counter())
  time.sleep(0.02)
  clock.switch("train")
  time.sleep(0.03)
  with clock.during("checkpoint"):
    time.sleep(0.01)
  assert clock.part == "train"  # back to what ran before the block
  split = clock.split()
  assert sum(split.values()) == pytest.approx(clock.total(), abs=2e-3)
  assert split["start_up"] >= 0.02 and split["train"] >= 0.03
  assert 0.01 <= split["checkpoint"] < split["train"]
  with pytest.raises(ValueError, match="not a part"):
    clock.switch("lunch")


def test_the_first_calls_excess_over_the_steady_rate_is_compile():
  clock = timing.Clock(time.perf_counter())
  clock.seconds.update(train=6.0, eval=1.5)
  # The first host loop: 10 steps in 3 s; the later ones 1 s per 10 steps
  # (the median: a slow loop does not move it); a 5-step loop at the end.
  clock.host_loops = [(3.0, 10), (1.0, 10), (1.5, 10), (1.0, 10), (0.5, 5)]
  clock.evaluations = [1.0, 0.25, 0.25]  # the first fills the cache too
  clock.move("train", "input_wait", 0.5)
  split = clock.seconds | {}
  estimated = clock.split()
  assert estimated["compile"] == pytest.approx(2.0 + 0.75)
  assert estimated["train"] == pytest.approx(5.5 - 2.0)
  assert estimated["eval"] == pytest.approx(0.75)
  assert estimated["input_wait"] == pytest.approx(0.5)
  assert sum(estimated.values()) == pytest.approx(sum(split.values()),
                                                  abs=0.01)
  # One host loop, one evaluation: no steady rate, nothing moved.
  single = timing.Clock(time.perf_counter())
  single.seconds.update(train=3.0, eval=1.0)
  single.host_loops, single.evaluations = [(3.0, 10)], [1.0]
  assert single.split()["compile"] == 0.0
  # A move never takes more than the part holds.
  single.move("train", "input_wait", 99.0)
  assert single.seconds["train"] == 0.0


def test_the_report_names_the_largest_overhead():
  split = dict.fromkeys(timing.PARTS, 0.0) | {
      "start_up": 12.4, "train": 44.0, "eval": 3.0, "export": 2.6}
  report = timing.report(split)
  assert report["total"] == pytest.approx(62.0)
  assert report["fraction_training"] == pytest.approx(44.0 / 62.0, abs=1e-4)
  assert timing.summary(split) == (
      "training 71%, the largest overhead: start-up 12 s")
  assert timing.largest_overhead(split | {"other": 13.0}) == ("other", 13.0)
  assert [timing.format_seconds(s) for s in (0.44, 9.96, 62.4, 3725.4)] == [
      "0.4 s", "10.0 s", "1 min 02 s", "1 h 02 min"]


@pytest.mark.parametrize("fixture", ["smoke_run", "mirrored_smoke_run"])
def test_a_run_records_where_its_time_went(fixture, request):
  run = request.getfixturevalue(fixture)
  assert run.returncode == 0, run.stderr[-3000:]
  metrics = json.loads((run.model_dir / "metrics.json").read_text())
  spent = metrics["time"]
  assert set(spent) == {*timing.PARTS, "total", "fraction_training"}
  parts = [spent[part] for part in timing.PARTS]
  assert min(parts) >= 0.0, spent
  assert sum(parts) == pytest.approx(spent["total"], abs=0.01)
  assert spent["fraction_training"] == pytest.approx(
      spent["train"] / spent["total"], abs=1e-4)
  # What every smoke run does: import TensorFlow, trace and compile its
  # loops (4 host loops: a steady rate), train, evaluate twice, save twice,
  # export, and wait for at least some input.
  for part in ("start_up", "compile", "train", "eval", "checkpoint",
               "export"):
    assert spent[part] > 0.0, (part, spent)
  assert spent["start_up"] > 1.0  # TensorFlow's import alone takes that
  assert spent["compile"] > spent["train"]  # a tiny model's 40 steps
  # The last line: the same split, its largest overhead named.
  found = DONE.match(run.stderr.splitlines()[-1])
  assert found, run.stderr[-3000:]
  assert int(found[2]) == round(100 * spent["fraction_training"])
  name, _ = timing.largest_overhead(spent)
  assert found[3] == name, (found[3], spent)


def test_each_host_loop_writes_its_time_to_tensorboard(smoke_run):
  scalars = read_scalars(smoke_run.model_dir / "train")
  tags = {f"time/{part}_s" for part in timing.PARTS if part != "compile"}
  assert tags <= set(scalars), sorted(scalars)
  for tag in tags:
    assert sorted(scalars[tag]) == [10, 20, 30, 40], tag
    assert min(scalars[tag].values()) >= 0.0, (tag, scalars[tag])
  # Start-up comes before the first host loop, the first evaluation and
  # checkpoint after the second; the first host loop traces and compiles.
  assert scalars["time/start_up_s"][10] > 1.0
  assert scalars["time/start_up_s"][20] == 0.0
  assert scalars["time/eval_s"][30] > 0.0 == scalars["time/eval_s"][20]
  assert scalars["time/checkpoint_s"][30] > 0.0
  assert scalars["time/train_s"][10] > scalars["time/train_s"][30]


@pytest.mark.parametrize("fixture", ["smoke_run", "mirrored_smoke_run"])
def test_the_first_host_loops_compile_is_not_counted_as_input_wait(
    fixture, request):
  # The smoke data are read from local disk and cached: the first host
  # loop's wait is the pipeline's start, a few ms, against seconds of
  # tracing and XLA compile. Before, with one inter-op thread (the default)
  # the step's XLA call could run before the wait's end timestamp, and a
  # third of the first loop (the whole step in later loops) was input wait.
  scalars = read_scalars(request.getfixturevalue(fixture).model_dir / "train")
  first_wait = scalars["time/input_wait_s"][10]
  first_train = scalars["time/train_s"][10]
  assert first_train > 1.0  # trace and compile
  assert first_wait < 0.2 * first_train, (first_wait, first_train)


def test_the_parts_add_up_to_the_wall_time_measured_from_outside(
    smoke_data, tmp_path):
  # From before the process is started to its last line, read as it comes:
  # the parts must add up to it within a few percent.
  started = time.perf_counter()
  trainer = Trainer(f"--data_dir={smoke_data}", f"--model_dir={tmp_path}")
  trainer.wait_for("done in ")
  wall = time.perf_counter() - started
  status, stderr = trainer.finish()
  assert status == 0, stderr[-3000:]
  spent = json.loads((tmp_path / "metrics.json").read_text())["time"]
  assert spent["total"] == pytest.approx(wall, rel=0.03), (wall, spent)
