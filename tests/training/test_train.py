"""The training loop, in process on the default strategy."""

import collections
import dataclasses
import glob
import hashlib
import json
import logging
import os
import pathlib
import re

import numpy as np
import pytest
import tensorflow as tf

from configs import smoke
from trainer import errors
from trainer.data import problems
from trainer.data import vocab
from trainer.model import layers as model_lib
from trainer.training import loop
from trainer.training import plan
from trainer.training import run_dir
from trainer.training import train

from tests.helpers import shared
from tests.helpers.eval_checks import OPERATIONS, assert_by_op_adds_up, eval_line


def read_scalars(logdir):
  """{tag: {step: value}} of the scalar summaries in the TensorBoard event
  files in logdir (not its histograms or hparams)."""
  scalars = collections.defaultdict(dict)
  plugins = {}  # tag: its plugin, named by the tag's first summary only
  for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.HasField("metadata"):
          plugins[value.tag] = value.metadata.plugin_data.plugin_name
        if plugins.get(value.tag) == "scalars":
          scalars[value.tag][event.step] = float(
              tf.make_ndarray(value.tensor))
  return scalars


def run(config, data_dir, model_dir):
  strategy = tf.distribute.get_strategy()
  return loop.train_and_evaluate(plan.for_strategy(config, strategy, data_dir),
                                 strategy,
                                 run_dir.RunDirs.under(str(model_dir)))


@dataclasses.dataclass(frozen=True)
class SmokeRun:
  """The smoke config run once in process: its model_dir (no test writes
  in it: `smoke_copy`), what train_and_evaluate returned, the absl lines it
  logged, and the Keras compute dtype it left set."""
  model_dir: pathlib.Path
  results: dict
  messages: list
  compute_dtype: str


class _Lines(logging.Handler):
  """Keeps each record's message, as caplog.messages does."""

  def __init__(self):
    super().__init__(logging.INFO)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def smoke_trained(smoke_data, tmp_path_factory):
  """The 40 steps of the smoke config, run once (once per session under
  xdist too) for the tests that read a plain run: a SmokeRun."""
  import keras  # pylint: disable=g-import-not-at-top

  def produce(root):
    logger = logging.getLogger("absl")
    lines, level = _Lines(), logger.level
    logger.setLevel(logging.INFO)  # the run's lines: absl INFO
    logger.addHandler(lines)
    try:
      results = run(smoke.get_config(), smoke_data, root / "run")
    finally:
      logger.removeHandler(lines)
      logger.setLevel(level)
    (root / "run.json").write_text(json.dumps({
        "results": results, "messages": lines.messages,
        "compute_dtype": keras.mixed_precision.global_policy().compute_dtype}))

  root = shared.once_per_session(tmp_path_factory, "test_train_smoke_run",
                                 produce)
  done = json.loads((root / "run.json").read_text())
  return SmokeRun(root / "run", done["results"], done["messages"],
                  done["compute_dtype"])


@pytest.fixture
def smoke_copy(smoke_trained, tmp_path):
  """A copy of smoke_trained's model_dir, for a test that resumes it."""
  return shared.copy_of(smoke_trained.model_dir, tmp_path)


def test_loss_decreases_and_summaries_are_written(smoke_data, tmp_path):
  config = smoke.get_config()
  config.train.num_steps = 300
  config.train.steps_per_loop = 20
  config.train.eval_every_steps = 100
  config.train.learning_rate = 1e-2
  results = run(config, smoke_data, tmp_path)
  scalars = read_scalars(tmp_path / "train")
  losses = scalars["loss"]
  assert sorted(losses) == list(range(20, 301, 20))
  assert losses[300] < 0.75 * losses[20]
  for tag in ("accuracy", "learning_rate", "steps_per_sec",
              "examples_per_sec"):
    assert sorted(scalars[tag]) == sorted(losses)
  assert scalars["learning_rate"][20] > scalars["learning_rate"][300] > 0
  evals = read_scalars(tmp_path / "eval")
  assert sorted(evals["loss"]) == [100, 200, 300]
  assert evals["loss"][300] == pytest.approx(results["eval"]["loss"])
  assert results["eval"]["examples"] == 4 * 16  # eval_steps batches
  assert_by_op_adds_up(results["eval"])
  assert set(evals) == {f"{metric}{op}" for metric in ("loss", "accuracy")
                        for op in ("", "_add", "_sub", "_mul")}
  for name, op_metrics in results["eval"]["by_op"].items():
    assert sorted(evals[f"accuracy_{name}"]) == [100, 200, 300]
    assert evals[f"accuracy_{name}"][300] == pytest.approx(
        op_metrics["accuracy"])
    assert evals[f"loss_{name}"][300] == pytest.approx(op_metrics["loss"])


def _inputs(*rows):
  """int32 [len(rows), 20] model inputs of texts defs:op."""
  return tf.constant([vocab.encode(r) + [vocab.PAD_ID] * (20 - len(r))
                      for r in rows], tf.int32)


def test_operation_is_read_after_the_separator():
  x = _inputs("x=-3,y=4:x*y",  # '-' in defs: a sign, not the operation
              "y=-12,x=-56:y-x",
              "x=7,y=-8:y+x",
              "x=-1,y=-2:xy",  # no operator: in no operation
              "x=1,y=2:")
  expected = [[0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]]
  assert train.operation_one_hot(x).numpy().tolist() == expected
  compiled = tf.function(train.operation_one_hot, jit_compile=True)
  assert compiled(x).numpy().tolist() == expected
  # The README's names, in problems.OPERATORS' order.
  assert train.OPERATION_NAMES == tuple(
      OPERATIONS[op] for op in problems.OPERATORS)


def test_eval_rows_without_an_operator_count_in_the_totals_only():
  trainer = train.Trainer(smoke.get_config(), tf.distribute.get_strategy())
  x = _inputs(*(["x=-3,y=4:x*y", "y=5,x=-6:y-x", "x=7,y=8:y+x"] * 5 +
                ["x=-1,y=-2:xy"]))  # 16 rows: one batch of the smoke config
  y = tf.constant([vocab.TOKEN_IDS["1"]] * 16, tf.int32)
  sums = {k: v.numpy() for k, v in trainer.eval_loop(
      tf.data.Dataset.from_tensors((x, y)).repeat(2)).items()}
  assert sums["count"] == 32
  assert sums["op_count"].tolist() == [10, 10, 10]  # + - *
  assert sums["op_correct"].sum() <= sums["correct"]
  assert sums["op_loss_sum"].sum() < sums["loss_sum"]
  assert trainer.trace_counts()["eval_loop"] == 1


def test_each_function_is_traced_once(smoke_trained):
  results = smoke_trained.results  # 4 host loops
  # fused_steps: the host loops' steps, 10 (steps_per_call) per XLA call;
  # fused_step (traced with train_loop, for a loop's last steps that do not
  # fill a call) never runs here: 10-step loops.
  assert results["trace_counts"] == {"fused_steps": 1, "fused_step": 1,
                                     "forward": 1, "train_loop": 1,
                                     "eval_loop": 1}


def test_outputs_and_rerun_at_final_step(smoke_data, smoke_trained,
                                        smoke_copy, caplog):
  config = smoke.get_config()
  results = smoke_trained.results
  assert results["step"] == 40 and not results["stopped"]
  saved = json.loads((smoke_copy / "config.json").read_text())
  # The resolved config, and beside config.data's fields the data set's
  # identity: its directory and its manifest's sha256.
  identity = {"dir": str(smoke_data), "manifest_sha256": hashlib.sha256(
      (pathlib.Path(smoke_data) / "manifest.json").read_bytes()).hexdigest()}
  expected = json.loads(config.to_json_best_effort())
  expected["data"].update(identity)
  assert saved == expected
  assert results["data"] == identity
  metrics = json.loads((smoke_copy / "metrics.json").read_text())
  assert metrics["step"] == 40 and metrics["eval"] == results["eval"]
  # The final eval line ends with the accuracy per operation.
  lines = [m for m in smoke_trained.messages
           if m.startswith("eval at step 40")]
  assert len(lines) == 1 and re.match(eval_line(40), lines[0]), lines
  by_op = results["eval"]["by_op"]
  assert lines[0].endswith(
      f"; + {by_op['add']['accuracy']:.4f}, - {by_op['sub']['accuracy']:.4f}"
      f", * {by_op['mul']['accuracy']:.4f}")
  assert tf.train.latest_checkpoint(str(smoke_copy / "checkpoints")).endswith(
      "ckpt-40")
  assert (smoke_copy / "export" / "saved_model.pb").exists()
  caplog.set_level("INFO", logger="absl")  # the run's lines: absl INFO
  again = run(config, smoke_data, smoke_copy)
  assert again == {"step": 40, "stopped": None}
  assert "already at step 40 of 40, and the export and metrics.json" in (
      caplog.text)


def test_longer_run_resumes_and_continues_the_step_count(smoke_data,
                                                        smoke_copy, caplog):
  config = smoke.get_config()
  config.train.num_steps = 60
  caplog.set_level("INFO", logger="absl")
  results = run(config, smoke_data, smoke_copy)
  assert "resuming from" in caplog.text
  assert results["step"] == 60
  assert sorted(read_scalars(smoke_copy / "train")["loss"]) == [
      10, 20, 30, 40, 50, 60]


def test_other_model_shape_is_a_clear_error(smoke_data, smoke_copy):
  config = smoke.get_config()
  config.model.hidden_size = 12
  with pytest.raises(errors.UserError, match=r"another model shape "
                     r"\(hidden_size: checkpoint 8 vs config 12\)"):
    run(config, smoke_data, smoke_copy)


def test_export_matches_the_trained_model(smoke_copy):
  config = smoke.get_config()
  model = model_lib.build_model(config.model)
  tf.train.Checkpoint(model=model).restore(tf.train.latest_checkpoint(
      str(smoke_copy / "checkpoints"))).expect_partial()
  exported = tf.saved_model.load(str(smoke_copy / "export"))
  assert set(exported.signatures) == {"serving_default", "predict_text"}

  problems = ["x=3,y=4:x*y", "y=-12,x=34:y-x", "x=99,y=-99:x+y"]
  tokens = np.zeros((3, 20), np.int32)
  for row, text in enumerate(problems):
    tokens[row, :len(text)] = vocab.encode(text)
  expected = np.asarray(model(tokens))
  served = exported.signatures["serving_default"](tokens=tf.constant(tokens))
  np.testing.assert_allclose(served["logits"].numpy(), expected, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(served["probabilities"].numpy().sum(-1), 1.0,
                             rtol=1e-5)

  by_text = exported.signatures["predict_text"](
      problems=tf.constant(problems))
  np.testing.assert_allclose(by_text["logits"].numpy(), expected, rtol=1e-5,
                             atol=1e-6)
  assert [t.decode() for t in by_text["token"].numpy()] == [
      vocab.VOCAB[i] for i in expected.argmax(-1)]
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="outside the vocabulary"):
    exported.signatures["predict_text"](problems=tf.constant(["x=3,z=4:x*z"]))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="longer than len_max_input=20"):
    exported.signatures["predict_text"](
        problems=tf.constant(["x=123456,y=654321:x*y"]))


def test_missing_data_is_a_clear_error(tmp_path):
  with pytest.raises(errors.UserError, match=r"no training shards: no file "
                     r"matches .*train-\*-of-\*\.tfrecord.*python -m "
                     "trainer.data generate"):
    run(smoke.get_config(), str(tmp_path), tmp_path / "model")
  assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("field, value, message", [
    ("train.global_batch_size", 0, "global_batch_size=0 must be positive"),
    ("train.num_steps", -1, "num_steps=-1 must be positive"),
    ("train.eval_every_steps", -5, "eval_every_steps=-5 must be >= 0"),
    ("train.mixed_precision", "float8", "'float8' is not one of"),
    ("model.vocab_size", 21, "vocab_size=21 but the vocabulary has 20"),
    ("model.num_heads", 3, r"num_heads=3 does not divide "
     r"config.model.hidden_size=8"),
    ("model.num_layers", 0, "num_layers=0 must be positive"),
    ("model.ffn_size", -1, "ffn_size=-1 must be >= 0"),
    ("model.dropout", 1.0, r"dropout=1.0 must be in \[0, 1\)"),
])
def test_bad_config_fields(field, value, message):
  config = smoke.get_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(errors.UserError, match=message):
    plan.resolve(config, num_replicas=1)


def test_global_batch_must_divide_over_replicas():
  config = smoke.get_config()
  plan.resolve(config, num_replicas=4)
  with pytest.raises(errors.UserError, match="global_batch_size=16 is not "
                     "divisible by the 3 replicas"):
    plan.resolve(config, num_replicas=3)


@pytest.mark.parametrize("precision, compute_dtype", [
    ("float32", "float32"), ("bfloat16", "bfloat16"), ("float16", "float16")])
def test_mixed_precision_smoke_runs_end_finite(smoke_data, tmp_path, request,
                                               precision, compute_dtype):
  import keras  # pylint: disable=g-import-not-at-top
  config = smoke.get_config()
  if config.train.mixed_precision == precision:  # the module's smoke run
    smoke_trained = request.getfixturevalue("smoke_trained")
    results, model_dir = smoke_trained.results, smoke_trained.model_dir
    assert smoke_trained.compute_dtype == compute_dtype
  else:
    config.train.mixed_precision = precision
    model_dir = tmp_path
    try:
      results = run(config, smoke_data, model_dir)
      assert keras.mixed_precision.global_policy().compute_dtype == (
          compute_dtype)
    finally:
      keras.mixed_precision.set_global_policy("float32")
  assert np.isfinite(results["train"]["loss"])
  assert np.isfinite(results["eval"]["loss"])
  scalars = read_scalars(model_dir / "train")
  assert all(np.isfinite(v) for v in scalars["loss"].values())
  assert scalars["loss"][40] < scalars["loss"][10]


def test_float16_uses_loss_scaling(smoke_data, tmp_path):
  import keras  # pylint: disable=g-import-not-at-top
  config = smoke.get_config()
  config.train.mixed_precision = "float16"
  try:
    trainer = train.Trainer(config, tf.distribute.get_strategy())
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)


def test_tpu_config_resolves():
  from configs import tpu  # pylint: disable=g-import-not-at-top
  config = tpu.get_config()
  assert config.train.mixed_precision == "bfloat16"
  assert not config.train.jit_compile  # TPUStrategy compiles the step
  assert config.train.steps_per_loop >= 1000
  for cores in (8, 32, 128):  # v4-8 .. v4-128 style slices
    plan.resolve(config, num_replicas=cores, on_tpu=True)
  assert config.model.to_dict() == smoke.default.get_config().model.to_dict()


def test_tpu_needs_per_core_batches_of_eight():
  config = smoke.get_config()  # global batch 16
  plan.resolve(config, num_replicas=2, on_tpu=True)  # 8 per core
  with pytest.raises(errors.UserError, match=r"gives 4 examples per TPU core;"
                     r" use a multiple of 8 per core \(4 cores\)"):
    plan.resolve(config, num_replicas=4, on_tpu=True)
  plan.resolve(config, num_replicas=4, on_tpu=False)  # fine on GPUs


@pytest.mark.parametrize("data_dir, model_dir, bad", [
    ("/data/arith", "gs://b/run", "config.data.train_files=/data/arith/"),
    ("gs://b/arith", "/tmp/run", "--model_dir=/tmp/run is a local path"),
    ("gs://b/arith", "runs/1", "--model_dir=runs/1 is a local path"),
])
def test_tpu_refuses_local_paths(data_dir, model_dir, bad):
  def tpu_plan(data_dir):
    return plan.resolve(smoke.get_config(), num_replicas=1, on_tpu=True,
                        data_dir=data_dir)

  with pytest.raises(errors.UserError, match=re.escape(bad)):
    plan.check_tpu_paths(tpu_plan(data_dir), run_dir.RunDirs.under(model_dir))
  plan.check_tpu_paths(tpu_plan("gs://b/arith"),
                       run_dir.RunDirs.under("gs://b/run"))
  # Vertex AI's directories are checked by the variable that named them.
  vertex = run_dir.RunDirs.from_vertex_env({
      "AIP_MODEL_DIR": "gs://b/out/model/",
      "AIP_CHECKPOINT_DIR": "/tmp/checkpoints",
      "AIP_TENSORBOARD_LOG_DIR": "gs://b/out/logs/"})
  with pytest.raises(errors.UserError,
                     match="AIP_CHECKPOINT_DIR=/tmp/checkpoints is a local"):
    plan.check_tpu_paths(tpu_plan("gs://b/arith"), vertex)


def test_manifest_that_disagrees_with_the_files(smoke_data, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path / "data"
  shutil.copytree(smoke_data, data_dir)
  shard = data_dir / "train-00002-of-00004.tfrecord"
  shard.write_bytes(shard.read_bytes()[:100])
  with pytest.raises(errors.UserError, match=r"train-00002-of-00004.tfrecord "
                     r"has 100 bytes but .*manifest.json says \d+: a partial"):
    run(smoke.get_config(), str(data_dir), tmp_path / "model")
  shard.unlink()
  with pytest.raises(errors.UserError, match=r"train-00002-of-00004.tfrecord "
                     r"is listed in .*manifest.json but missing"):
    run(smoke.get_config(), str(data_dir), tmp_path / "model")


# --- The schedule, the loss scale and the per-operation sums, against
# closed forms and hand-made batches (a test of each would have caught a
# one-line bug the slow tests alone caught or missed) ------------------------


def closed_form_learning_rate(step, peak, warmup, total, ratio):
  """Linear warm-up from 0 to `peak` over `warmup` steps, then a cosine from
  `peak` down to peak * ratio at step `total`, flat after."""
  if step < warmup:
    return peak * step / warmup
  done = min(step - warmup, total - warmup) / (total - warmup)
  return peak * (ratio + (1 - ratio) * 0.5 * (1 + np.cos(np.pi * done)))


@pytest.mark.parametrize("warmup, expected", [
    (10, {0: 0.0, 5: 0.01, 10: 0.02, 35: None, 60: 0.011, 85: None,
          110: 0.002, 150: 0.002}),
    (0, {0: 0.02, 50: 0.011, 100: 0.002, 120: 0.002}),
])
def test_learning_rate_schedule_is_warm_up_then_cosine_to_the_floor(
    warmup, expected):
  config = smoke.get_config()
  config.train.learning_rate = 0.02
  config.train.warmup_steps = warmup
  config.train.num_steps = 100 + warmup
  config.train.min_learning_rate_ratio = 0.1
  trainer = train.Trainer(config, tf.distribute.get_strategy())
  assert trainer.update is not None  # the rate the XLA step applies, too
  for step, value in expected.items():
    closed_form = closed_form_learning_rate(step, 0.02, warmup, 100 + warmup,
                                            0.1)
    if value is not None:  # the hand-computed values agree with the form
      assert closed_form == pytest.approx(value, abs=1e-12), step
    trainer.optimizer.iterations.assign(step)
    assert trainer.learning_rate() == pytest.approx(
        closed_form, rel=1e-5, abs=1e-9), step
    assert float(trainer.update.learning_rate(tf.constant(
        step, tf.int64))) == pytest.approx(closed_form, rel=1e-5,
                                           abs=1e-9), step


def _answer(text):
  """The first token of the answer of defs:op, computed here (None: no
  operator)."""
  defs, op = text.split(":")
  values = dict((name, int(value)) for name, value in
                (d.split("=") for d in defs.split(",")))
  if not any(o in op for o in "+-*"):
    return None
  return str(eval(op, {}, values))[0]  # pylint: disable=eval-used


# (operator, problem): 2 additions, 5 subtractions, 8 multiplications and one
# row without an operator: 16 rows, one smoke batch, every count different.
_ROWS = [("+", "x=3,y=4:x+y"), ("+", "y=-5,x=9:y+x"),
         ("-", "x=3,y=4:x-y"), ("-", "x=10,y=2:x-y"), ("-", "y=7,x=-7:y-x"),
         ("-", "x=0,y=5:y-x"), ("-", "x=-9,y=9:x-y"),
         ("*", "x=3,y=4:x*y"), ("*", "x=-2,y=6:x*y"), ("*", "x=5,y=5:x*y"),
         ("*", "y=9,x=9:y*x"), ("*", "x=0,y=7:x*y"), ("*", "x=-3,y=-3:x*y"),
         ("*", "x=11,y=2:x*y"), ("*", "y=4,x=-1:y*x"),
         (None, "x=1,y=2:xy")]


def _hand_batch(rows):
  x = _inputs(*(text for _, text in rows))
  y = tf.constant([vocab.TOKEN_IDS[_answer(text) or "0"]
                   for _, text in rows], tf.int32)
  return x, y


def _cross_entropy(logits, y):
  """Per-row cross-entropy of integer labels, in numpy."""
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return -log_p[np.arange(len(y)), np.asarray(y)]


def test_evaluation_attributes_each_row_to_its_own_operation():
  """Per-operation loss, accuracy and count against the same rows grouped
  here by the operator written in each problem."""
  assert _answer("x=3,y=4:x-y") == "-" and _answer("y=9,x=9:y*x") == "8"
  trainer = train.Trainer(smoke.get_config(), tf.distribute.get_strategy())
  x, y = _hand_batch(_ROWS)
  logits = trainer.model(x.numpy(), training=False).numpy()
  losses = _cross_entropy(logits, y.numpy())
  correct = logits.argmax(-1) == y.numpy()
  results = trainer.evaluate(tf.data.Dataset.from_tensors((x, y)))
  assert results["examples"] == 16
  assert results["loss"] == pytest.approx(losses.mean(), rel=1e-5)
  for operator, name in (("+", "add"), ("-", "sub"), ("*", "mul")):
    mine = np.array([op == operator for op, _ in _ROWS])
    assert results["by_op"][name] == {
        "examples": int(mine.sum()),
        "loss": pytest.approx(losses[mine].mean(), rel=1e-5),
        "accuracy": pytest.approx(correct[mine].mean())}, name
  # The operations' losses differ: a swap of two would show in them too.
  assert len({round(float(losses[np.array([op == o for op, _ in _ROWS])]
                           .mean()), 4) for o in "+-*"}) == 3


def test_a_replica_loss_is_its_sum_over_the_global_batch():
  """The 16 rows of a global batch split 5 + 11 between two replicas: each
  replica's loss is its rows' summed loss / 16, so that the two add up to
  the batch mean, and so do their gradients."""
  config = smoke.get_config()
  assert config.train.global_batch_size == 16 and not config.model.dropout
  trainer = train.Trainer(config, tf.distribute.get_strategy())
  # One of two replicas (as under Mirrored on two devices): the global batch
  # is still the divisor, not this replica's 8 (nor the 5 or 11 it got).
  trainer.num_replicas = 2
  x, y = _hand_batch(_ROWS)
  losses = _cross_entropy(trainer.model(x.numpy(), training=False).numpy(),
                          y.numpy())
  weights = trainer._weights()  # pylint: disable=protected-access
  replica_losses, replica_gradients = [], []
  for rows in (slice(0, 5), slice(5, 16)):
    loss, correct, gradients, _ = trainer.forward_backward(
        *weights, x[rows], y[rows])
    assert float(loss) == pytest.approx(losses[rows].sum() / 16, rel=1e-5)
    replica_losses.append(float(loss))
    replica_gradients.append([tf.convert_to_tensor(g) for g in gradients])
  assert sum(replica_losses) == pytest.approx(losses.mean(), rel=1e-5)
  variables = trainer.model.trainable_variables
  with tf.GradientTape() as tape:
    mean = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        y, tf.cast(trainer.model(x.numpy(), training=True), tf.float32)))
  for variable, expected, first, second in zip(
      variables, tape.gradient(mean, variables), *replica_gradients):
    np.testing.assert_allclose(first + second, tf.convert_to_tensor(expected),
                               rtol=1e-4, atol=1e-6, err_msg=variable.path)
