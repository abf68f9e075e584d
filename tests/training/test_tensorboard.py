"""TensorBoard like the seed's: the model graph, weight histograms and the
gradient norm every config.train.histogram_every_steps, the config as
hparams with the final eval metrics. One smoke run, read by one real
TensorBoard server through its HTTP API, shared by the module's tests."""

import json
import math
import re
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

from tests.conftest import run_module
from tests.helpers import ROOT, SMOKE, closed_port

HISTOGRAM_EVERY = 20  # smoke: 40 steps in host loops of 10
DASHBOARDS = ("graphs", "histograms", "hparams", "scalars")
ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                "STATUS_RUNNING"]


def smoke_config():
  config = smoke.get_config()
  config.train.histogram_every_steps = HISTOGRAM_EVERY
  return config


@pytest.fixture(scope="module")
def model_dir(smoke_data, tmp_path_factory):
  """A smoke run's model_dir (its TensorBoard logs are there)."""
  model_dir = tmp_path_factory.mktemp("tensorboard") / "run"
  result = run_module(
      "trainer.task", f"--config={SMOKE}", f"--data_dir={smoke_data}",
      f"--model_dir={model_dir}",
      f"--config.train.histogram_every_steps={HISTOGRAM_EVERY}")
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir


@pytest.fixture(scope="module")
def board(model_dir, tmp_path_factory):
  """A real TensorBoard on the directory above the run, as for comparing
  runs (runs "run", "run/train", "run/eval"), once every dashboard has data:
  get(route, **query) answers its HTTP API's JSON (or text)."""
  port = closed_port()
  log = open(tmp_path_factory.mktemp("board") / "tensorboard.log", "w+")
  process = subprocess.Popen(
      [sys.executable, "-m", "tensorboard.main", "--logdir",
       str(model_dir.parent),
       "--host", "127.0.0.1", "--port", str(port)],
      stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

  def get(route, **query):
    url = f"http://127.0.0.1:{port}/data/{route}"
    if query:
      url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=10) as response:
      body = response.read().decode()
    return (json.loads(body) if response.headers.get_content_type() ==
            "application/json" else body)

  try:
    deadline = time.monotonic() + 60
    listing = None
    while time.monotonic() < deadline:
      assert process.poll() is None, _read(log)
      try:
        listing = get("plugins_listing")
      except OSError:  # not listening yet
        listing = None
      if listing and all(listing[name]["enabled"] for name in DASHBOARDS):
        break
      time.sleep(0.5)
    else:
      pytest.fail(f"TensorBoard did not show {DASHBOARDS} within 60 s: "
                  f"{listing and {n: listing[n]['enabled'] for n in listing}}"
                  f"\n{_read(log)}")
    yield get
  finally:
    process.terminate()
    process.wait(timeout=30)
    log.close()


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


def test_graphs_histograms_hparams_and_scalars_have_data(board):
  listing = board("plugins_listing")
  enabled = {name: listing[name]["enabled"] for name in DASHBOARDS}
  assert enabled == dict.fromkeys(DASHBOARDS, True)


def test_graph_is_the_model_with_its_layers(board):
  graph = board("plugin/graphs/graph", run="run/train", conceptual="false")
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


def test_weight_histograms_at_the_interval_hold_the_final_weights(
    board, model_dir):
  weights = trained_weights(model_dir)
  tags = board("plugin/histograms/tags")["run/train"]
  assert set(tags) == set(weights)
  histograms = board("plugin/histograms/histograms", run="run/train",
                     tag="dense/kernel")
  assert [step for _, step, _ in histograms] == [20, 40]
  buckets = np.array(histograms[-1][2])  # [[left, right, count], ...]
  kernel = weights["dense/kernel"]
  assert buckets[:, 2].sum() == kernel.size
  assert buckets[0, 0] == pytest.approx(kernel.min(), rel=1e-5)
  assert buckets[-1, 1] == pytest.approx(kernel.max(), rel=1e-5)


def test_gradient_norm_at_the_interval(board):
  assert "gradient_norm" in board("plugin/scalars/tags")["run/train"]
  norms = board("plugin/scalars/scalars", run="run/train", tag="gradient_norm")
  assert [step for _, step, _ in norms] == [20, 40]
  assert all(math.isfinite(norm) and norm > 0 for _, _, norm in norms), norms


def test_hparams_are_the_config_and_the_final_eval_metrics(board, model_dir):
  expected = flat_config(smoke_config())
  experiment = board("plugin/hparams/experiment",
                     request=json.dumps({"experimentName": ""}))
  assert {info["name"] for info in experiment["hparamInfos"]} == set(expected)
  assert sorted((m["name"]["group"], m["name"]["tag"])
                for m in experiment["metricInfos"]) == [
                    ("eval", "accuracy"), ("eval", "loss")]

  groups = board("plugin/hparams/session_groups", request=json.dumps({
      "experimentName": "", "startIndex": 0, "sliceSize": 10,
      "allowedStatuses": ALL_STATUSES}))["sessionGroups"]
  assert [[session["name"] for session in group["sessions"]]
          for group in groups] == [["run"]]
  hparams = groups[0]["hparams"]
  for name, value in expected.items():
    if isinstance(value, str):
      assert hparams[name] == value, name
    else:  # bool, or a number (TensorBoard keeps numbers as doubles)
      assert hparams[name] == pytest.approx(value), name
  final = json.loads((model_dir / "metrics.json").read_text())["eval"]
  metrics = {m["name"]["tag"]: m for m in groups[0]["metricValues"]}
  assert set(metrics) == {"accuracy", "loss"}, groups[0]
  for tag in ("accuracy", "loss"):
    assert metrics[tag]["name"]["group"] == "eval"
    assert metrics[tag]["trainingStep"] == 40
    assert metrics[tag]["value"] == pytest.approx(final[tag], rel=1e-6)


def test_histograms_end_host_loops_at_their_interval_and_zero_is_off():
  config = smoke_config()
  config.train.histogram_every_steps = 15  # not a steps_per_loop multiple
  schedule = schedule_lib.Schedule.of(plan.resolve(config))
  Action = schedule_lib.Action  # pylint: disable=invalid-name
  assert schedule.next_boundary(10) == 15
  assert Action.HISTOGRAMS in schedule.due(15)
  assert Action.HISTOGRAMS not in schedule.due(20)
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
