"""TensorBoard as a user opens it: the model graph, weight histograms and
the gradient norm every config.train.histogram_every_steps and at the last
step, the config as hparams with the final eval metrics.

Two trainer runs in one directory of runs: "every20" (the smoke config,
histograms every 20 steps) and "run" (the session's mirrored smoke run on 2
logical CPUs, copied here: histograms at the default interval, longer than
the run). Two real TensorBoard servers read them through their HTTP API,
one with --logdir=<the directory of runs>, one with --logdir=<every20's
model_dir>, shared by the module's tests."""

import json
import math
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from configs import smoke
from trainer import errors
from trainer.model import layers as model_lib
from trainer.training import plan
from trainer.training import schedule as schedule_lib

from tests.helpers.trainer_process import run_module
from tests.helpers import ROOT, SMOKE, closed_port

HISTOGRAM_EVERY = 20  # smoke: 40 steps in host loops of 10
NUM_STEPS = 40  # the smoke config's
DASHBOARDS = ("graphs", "histograms", "hparams", "scalars")
ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                "STATUS_RUNNING"]
# The hparams to compare runs by, with their column titles: {name: title}.
COMPARED = {
    "train.learning_rate": "learning rate",
    "train.global_batch_size": "global batch size",
    "model.hidden_size": "hidden size", "model.dense_size": "dense size",
    "model.num_heads": "heads", "model.num_layers": "layers",
    "model.ffn_size": "ffn size", "train.num_steps": "steps",
    "train.warmup_steps": "warm-up steps",
    "train.min_learning_rate_ratio": "min learning rate ratio",
    "strategy": "strategy", "num_replicas": "replicas"}
# The five of them the dashboard shows as columns until a user ticks more.
SHOWN = ["model.hidden_size", "num_replicas", "train.global_batch_size",
         "train.learning_rate", "train.num_steps"]
# Each run of the directory of runs: (its strategy's hparams, the steps of
# its weight histograms).
RUNS = {"every20": ({"strategy": "DefaultDistributionStrategy",
                     "num_replicas": 1}, [20, 40]),
        "run": ({"strategy": "MirroredStrategy", "num_replicas": 2}, [40])}
LAYOUTS = ("runs", "run_dir")  # --logdir=<directory of runs>, <model_dir>


def smoke_config():
  config = smoke.get_config()
  config.train.histogram_every_steps = HISTOGRAM_EVERY
  return config


@pytest.fixture(scope="module")
def runs_dir(smoke_data, mirrored_smoke_run, tmp_path_factory):
  """A directory of two finished runs' model_dirs, every20 and run (see the
  module docstring)."""
  runs_dir = tmp_path_factory.mktemp("tensorboard")
  result = run_module(
      "trainer.task", f"--config={SMOKE}", f"--data_dir={smoke_data}",
      f"--model_dir={runs_dir / 'every20'}",
      f"--config.train.histogram_every_steps={HISTOGRAM_EVERY}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert mirrored_smoke_run.returncode == 0, (
      mirrored_smoke_run.stderr[-3000:])
  assert mirrored_smoke_run.model_dir.name == "run"
  # A copy: the session's run stays as other tests read it.
  shutil.copytree(mirrored_smoke_run.model_dir, runs_dir / "run")
  return runs_dir


@pytest.fixture(scope="module")
def model_dir(runs_dir):
  """every20's model_dir, as the trainer printed it."""
  return runs_dir / "every20"


class Board:
  """A TensorBoard's HTTP API on `port`: board(route, **query) GETs
  /data/route, board.post(route, body) POSTs `body` as JSON there; both
  answer its JSON (or text)."""

  def __init__(self, port):
    self.url = f"http://127.0.0.1:{port}/data/"

  def __call__(self, route, **query):
    url = self.url + route
    if query:
      url += "?" + urllib.parse.urlencode(query)
    return self._answer(url)

  def post(self, route, body):
    return self._answer(urllib.request.Request(
        self.url + route, data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}))

  @staticmethod
  def _answer(request):
    with urllib.request.urlopen(request, timeout=10) as response:
      body = response.read().decode()
    return (json.loads(body) if response.headers.get_content_type() ==
            "application/json" else body)


def loaded(board, prefixes) -> bool:
  """Whether `board` has read the runs of `prefixes` ("every20/", "")
  to their ends: every eval/ scalar and train/gradient_norm (the last
  summary a run writes there) at the last step (TensorBoard loads in the
  background)."""
  listing = board("plugins_listing")
  if not all(listing[name]["enabled"] for name in DASHBOARDS):
    return False
  tags = board("plugin/scalars/tags")
  for prefix in prefixes:
    eval_tags = tags.get(f"{prefix}eval", {})
    if "gradient_norm" not in tags.get(f"{prefix}train", {}) or not eval_tags:
      return False
    for run, tag in ([(f"{prefix}train", "gradient_norm")] +
                     [(f"{prefix}eval", tag) for tag in eval_tags]):
      if board("plugin/scalars/scalars", run=run, tag=tag)[-1][1] != (
          NUM_STEPS):
        return False
  return True


def start_board(logdir, prefixes, log_path):
  """A real TensorBoard on `logdir` as a user starts it, yielded as a Board
  once it has loaded the runs of `prefixes` (`loaded`)."""
  port = closed_port()
  log = open(log_path, "w+")
  process = subprocess.Popen(
      [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
       "--host", "127.0.0.1", "--port", str(port)],
      stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

  get = Board(port)
  try:
    deadline = time.monotonic() + 60
    listing = None
    while time.monotonic() < deadline:
      assert process.poll() is None, _read(log)
      try:
        if loaded(get, prefixes):
          break
        listing = get("plugins_listing")
      except OSError:  # not listening yet
        pass
      time.sleep(0.5)
    else:
      pytest.fail(f"TensorBoard did not load {prefixes} within 60 s: "
                  f"{listing and {n: listing[n]['enabled'] for n in listing}}"
                  f"\n{_read(log)}")
    yield get
  finally:
    process.terminate()
    process.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def board(runs_dir, tmp_path_factory):
  """TensorBoard on the directory of runs, as for comparing runs (runs
  "every20/train", "every20/eval", "run/train", "run/eval")."""
  yield from start_board(runs_dir, ["every20/", "run/"],
                         tmp_path_factory.mktemp("board") / "tensorboard.log")


@pytest.fixture(scope="module")
def run_board(model_dir, tmp_path_factory):
  """TensorBoard on every20's model_dir, as for one run (runs "train",
  "eval")."""
  yield from start_board(model_dir, [""],
                         tmp_path_factory.mktemp("board") / "tensorboard.log")


@pytest.fixture(params=LAYOUTS)
def layout(request):
  """(the board of a layout, the TensorBoard run name prefix of every20:
  "every20/" or "")."""
  if request.param == "runs":
    return request.getfixturevalue("board"), "every20/"
  return request.getfixturevalue("run_board"), ""


def _read(log) -> str:
  log.seek(0)
  return log.read()[-3000:]


def trained_weights(model_dir):
  """{variable path: array} of the smoke model in the run's last checkpoint,
  restored here."""
  model = model_lib.build_model(smoke.get_config().model)
  latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
  tf.train.Checkpoint(model=model).restore(
      latest).assert_existing_objects_matched().expect_partial()
  return {v.path: np.asarray(v) for v in model.trainable_variables}


def flat_config(config) -> dict:
  """{"model.hidden_size": 8, ...}: the config's leaves, flattened here."""
  flat = {}

  def add(prefix, section):
    for name, value in section.items():
      if isinstance(value, dict):
        add(f"{prefix}{name}.", value)
      else:
        flat[prefix + name] = value

  add("", config.to_dict())
  return flat


def test_both_layouts_list_the_runs_and_have_every_dashboard(board,
                                                             run_board):
  assert sorted(board("runs")) == ["every20/eval", "every20/train",
                                   "run/eval", "run/train"]
  assert sorted(run_board("runs")) == ["eval", "train"]
  for get in (board, run_board):
    listing = get("plugins_listing")
    enabled = {name: listing[name]["enabled"] for name in DASHBOARDS}
    assert enabled == dict.fromkeys(DASHBOARDS, True)


def test_graph_is_the_model_with_its_layers(board):
  graph = board("plugin/graphs/graph", run="every20/train", conceptual="false")
  # GraphDef text: a node per op, named by the Keras layer that made it.
  names = [line.split('"')[1] for line in graph.splitlines()
           if line.strip().startswith("name:")]
  assert any(name.startswith("tokens") for name in names), names[:20]
  model = model_lib.build_model(smoke.get_config().model)
  # Every layer with weights, by the name scope Keras gives it ("embed" or
  # "embed_1"): embed, reflect, dense, logits.
  layers = [layer.name for layer in model.layers if layer.weights]
  assert len(layers) == 4, layers
  for layer in layers:
    assert any(re.search(rf"(^|/){layer}(_\d+)?/", name) for name in names), (
        layer, names)


@pytest.mark.parametrize("name", RUNS)
def test_weight_histograms_at_the_interval_and_the_last_step(board, runs_dir,
                                                             name):
  """every20 every 20 steps; run, shorter than its interval (1,000), at its
  last step only; the last ones hold the final weights."""
  steps = RUNS[name][1]
  weights = trained_weights(runs_dir / name)
  tags = board("plugin/histograms/tags")[f"{name}/train"]
  assert set(tags) == set(weights)
  for tag, kernel in weights.items():
    histograms = board("plugin/histograms/histograms", run=f"{name}/train",
                       tag=tag)
    assert [step for _, step, _ in histograms] == steps, tag
    buckets = np.array(histograms[-1][2])  # [[left, right, count], ...]
    assert buckets[:, 2].sum() == kernel.size, tag
    assert buckets[0, 0] == pytest.approx(kernel.min(), rel=1e-5), tag
    assert buckets[-1, 1] == pytest.approx(kernel.max(), rel=1e-5), tag


@pytest.mark.parametrize("name", RUNS)
def test_gradient_norm_at_the_interval_and_the_last_step(board, name):
  norms = board("plugin/scalars/scalars", run=f"{name}/train",
                tag="gradient_norm")
  assert [step for _, step, _ in norms] == RUNS[name][1]
  assert all(math.isfinite(norm) and norm > 0 for _, _, norm in norms), norms


def test_run_dir_layout_shows_the_same_histograms(run_board):
  histograms = run_board("plugin/histograms/histograms", run="train",
                         tag="dense/kernel")
  assert [step for _, step, _ in histograms] == RUNS["every20"][1]


def experiment(get):
  return get.post("plugin/hparams/experiment", {"experimentName": ""})


def session_groups(get):
  return get.post("plugin/hparams/session_groups", {
      "experimentName": "", "startIndex": 0, "sliceSize": 10,
      "allowedStatuses": ALL_STATUSES})["sessionGroups"]


def test_hparams_are_the_config_the_strategy_and_the_replicas(layout):
  get, _ = layout
  infos = experiment(get)["hparamInfos"]
  assert {info["name"] for info in infos} == {
      *flat_config(smoke_config()), "strategy", "num_replicas"}


def test_the_shown_hparams_fill_the_first_columns(layout):
  """TensorBoard's HParams dashboard lists the hparams as the plugin orders
  them, those flagged `differs` first, and ticks the first five."""
  get, _ = layout
  infos = experiment(get)["hparamInfos"]
  flagged = [info["name"] for info in infos if info.get("differs")]
  assert flagged == [info["name"] for info in infos[:5]] == SHOWN
  titles = {info["name"]: info.get("displayName", "") for info in infos}
  assert {name: titles[name] for name in COMPARED} == COMPARED
  assert not any(titles[name] for name in titles if name not in COMPARED)


def test_hparams_metrics_are_the_final_eval_accuracy_and_loss(layout):
  get, _ = layout
  metrics = experiment(get)["metricInfos"]
  assert sorted((m["name"].get("group", ""), m["name"]["tag"],
                 m["displayName"]) for m in metrics) == [
                     ("", "accuracy", "eval accuracy"),
                     ("", "loss", "eval loss")]


def check_session_group(group, model_dir, session, strategy_hparams,
                        histogram_every):
  """A session group of the run in `model_dir`: named by the run, one
  session (the TensorBoard run `session`), its hparams the run's config and
  strategy, its metrics the final evaluation's (metrics.json)."""
  assert group["name"] == model_dir.name
  assert [s["name"] for s in group["sessions"]] == [session]
  config = smoke_config()
  config.train.histogram_every_steps = histogram_every
  expected = {**flat_config(config), **strategy_hparams}
  assert set(group["hparams"]) == set(expected)
  for name, value in expected.items():
    if isinstance(value, str):
      assert group["hparams"][name] == value, name
    else:  # bool, or a number (TensorBoard keeps numbers as doubles)
      assert group["hparams"][name] == pytest.approx(value), name
  final = json.loads((model_dir / "metrics.json").read_text())
  for metrics in (group["metricValues"], group["sessions"][0]["metricValues"]):
    values = {m["name"]["tag"]: m for m in metrics}
    assert set(values) == {"accuracy", "loss"}, group
    for tag, metric in values.items():
      assert metric["trainingStep"] == final["step"] == NUM_STEPS
      assert metric["value"] == pytest.approx(final["eval"][tag], rel=1e-6)


def test_run_dir_layout_has_the_runs_trial_with_its_final_metrics(
    run_board, model_dir):
  groups = session_groups(run_board)
  assert len(groups) == 1, groups
  check_session_group(groups[0], model_dir, "eval", RUNS["every20"][0],
                      HISTOGRAM_EVERY)


def test_runs_layout_has_a_trial_per_run_with_its_final_metrics(board,
                                                                runs_dir):
  groups = {group["name"]: group for group in session_groups(board)}
  assert sorted(groups) == sorted(RUNS)
  check_session_group(groups["every20"], runs_dir / "every20",
                      "every20/eval", RUNS["every20"][0], HISTOGRAM_EVERY)
  check_session_group(groups["run"], runs_dir / "run", "run/eval",
                      RUNS["run"][0], smoke.get_config().train.
                      histogram_every_steps)


def test_histograms_end_host_loops_at_their_interval_and_the_last_step_and_zero_is_off():
  config = smoke_config()
  config.train.histogram_every_steps = 15  # not a steps_per_loop multiple
  schedule = schedule_lib.Schedule.of(plan.resolve(config))
  Action = schedule_lib.Action  # pylint: disable=invalid-name
  assert schedule.next_boundary(10) == 15
  assert Action.HISTOGRAMS in schedule.due(15)
  assert Action.HISTOGRAMS not in schedule.due(20)
  assert Action.HISTOGRAMS in schedule.due(40)  # the last step
  config.train.histogram_every_steps = 1000  # longer than the run
  schedule = schedule_lib.Schedule.of(plan.resolve(config))
  assert [step for step in range(1, 41)
          if Action.HISTOGRAMS in schedule.due(step)] == [40]
  assert [schedule.next_boundary(s) for s in range(0, 40, 10)] == [
      10, 20, 30, 40]  # no host-loop end of its own
  config.train.histogram_every_steps = 0
  schedule = schedule_lib.Schedule.of(plan.resolve(config))
  assert not any(Action.HISTOGRAMS in schedule.due(step)
                 for step in range(1, 41))


def test_negative_histogram_interval_is_one_line_naming_it():
  config = smoke_config()
  config.train.histogram_every_steps = -1
  with pytest.raises(errors.UserError) as raised:
    plan.resolve(config)
  assert str(raised.value) == (
      "config.train.histogram_every_steps=-1 must be >= 0")
