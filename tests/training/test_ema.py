"""The EMA of the weights (config.train.ema_decay): the recurrence it follows
on each update path, exact resume, a resume that turns it on, the export.

In process on the default strategy (the fused XLA step, a call per step and
several steps per call, and Keras's apply_gradients); in trainer processes
under MirroredStrategy over 2 CPU devices (the update's XLA function and the
assignment through the strategy), which a checkpoint per step makes
observable.
"""

import shutil

import numpy as np
import pytest
import tensorflow as tf

from configs import smoke
from trainer.data import vocab
from trainer.model import layers as model_lib
from trainer.training import train as train_lib

from tests.helpers import shared
from tests.helpers.trainer_process import run_trainer

DECAY = 0.9
STEPS = 12


def decay_at(updates):
  """The decay of the update after `updates` updates (train.moving_average)."""
  return min(DECAY, (1 + updates) / (10 + updates))


def smoke_config(**train):
  config = smoke.get_config()
  config.train.ema_decay = DECAY
  for name, value in train.items():
    config.train[name] = value
  return config


def batches(config):
  """STEPS random batches of the smoke shape, on the default strategy."""
  rng = np.random.default_rng(0)
  size = config.train.global_batch_size * STEPS
  x = rng.integers(0, vocab.VOCAB_SIZE,
                   (size, config.model.len_max_input)).astype(np.int32)
  y = rng.integers(0, vocab.VOCAB_SIZE, size).astype(np.int32)
  dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(
      config.train.global_batch_size, drop_remainder=True)
  return iter(tf.distribute.get_strategy().experimental_distribute_dataset(
      dataset))


def arrays(variables):
  return [np.asarray(tf.convert_to_tensor(v), np.float64) for v in variables]


def step_by_step(config):
  """A Trainer after STEPS host loops of one step each, and the numpy
  recurrence of the EMA over the weights seen after each step."""
  trainer = train_lib.Trainer(config, tf.distribute.get_strategy())
  iterator = batches(config)
  expected = arrays(trainer.model.trainable_variables)  # the EMA's start
  for weight, average in zip(expected, arrays(trainer.ema)):
    np.testing.assert_array_equal(average, weight)
  for updates in range(STEPS):
    trainer.train_loop(iterator, tf.constant(1))
    decay = decay_at(updates)
    expected = [decay * average + (1 - decay) * weight for average, weight in
                zip(expected, arrays(trainer.model.trainable_variables))]
  return trainer, expected


@pytest.fixture(scope="module")
def stepped():
  """step_by_step on the fused XLA path, shared by the tests that read it."""
  return step_by_step(smoke_config(steps_per_call=1))


@pytest.mark.parametrize("path", ["fused XLA step", "Keras apply_gradients"])
def test_ema_follows_the_recurrence_on_the_default_strategy(path, stepped):
  trainer, expected = (stepped if path == "fused XLA step" else
                       step_by_step(smoke_config(xla_update=False)))
  assert (trainer.fused_step is not None) == (path == "fused XLA step")
  for average, value in zip(arrays(trainer.ema), expected):
    np.testing.assert_allclose(average, value, rtol=1e-5, atol=1e-7)
  # The EMA lags the weights: a test of a copy of the weights would fail.
  assert max(np.abs(a - w).max() for a, w in zip(
      arrays(trainer.ema), arrays(trainer.model.trainable_variables))) > 1e-4


def test_several_steps_per_call_move_the_ema_as_a_call_per_step(stepped):
  one, _ = stepped
  fused = train_lib.Trainer(smoke_config(steps_per_call=5),
                            tf.distribute.get_strategy())
  assert fused.fused_steps is not None
  # 12 steps: two calls of 5, then 2 single steps.
  fused.train_loop(batches(fused.config), tf.constant(STEPS))
  for name, a, b in (
      ("EMA", one.ema, fused.ema),
      ("weights", one.model.trainable_variables,
       fused.model.trainable_variables)):
    for x, y in zip(arrays(a), arrays(b)):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-8, err_msg=name)


def test_evaluation_uses_the_ema(stepped):
  trainer, _ = stepped
  ema = [tf.convert_to_tensor(v) for v in trainer.ema]
  assert all(np.array_equal(a, b) for a, b in zip(
      trainer.evaluated_weights(), ema))
  with trainer.ema_in_model():
    inside = arrays(trainer.model.trainable_variables)
  for a, b in zip(inside, arrays(ema)):
    np.testing.assert_array_equal(a, b)
  # Afterwards the model holds its own weights again.
  assert not np.array_equal(arrays(trainer.model.trainable_variables)[0],
                            inside[0])


# --- Trainer processes ------------------------------------------------------

MIRRORED = ["--strategy=mirrored", "--num_cpu_devices=2",
            f"--config.train.ema_decay={DECAY}",
            "--config.train.exact_resume=True", "--config.train.num_steps=8",
            "--config.train.steps_per_loop=1",
            "--config.train.checkpoint_every_steps=1",
            "--config.train.keep_checkpoints=10",
            "--config.train.eval_every_steps=4",
            "--config.train.histogram_every_steps=0"]


def checkpoint_weights(prefix):
  """(weights, EMA) of the smoke model in the checkpoint `prefix`: lists of
  arrays in the order of its trainable variables."""
  model = model_lib.build_model(smoke.get_config().model)
  ema = [tf.Variable(tf.zeros_like(v.value), trainable=False)
         for v in model.trainable_variables]
  tf.train.Checkpoint(model=model, ema=ema).restore(
      prefix).assert_existing_objects_matched().expect_partial()
  return arrays(model.trainable_variables), arrays(ema)


@pytest.fixture(scope="session")
def mirrored_ema(smoke_data, tmp_path_factory):
  """A mirrored run on 2 CPU devices with EMA, a checkpoint per step (once
  per session, under xdist too): (its model_dir, the FinishedRun)."""
  result = shared.trainer_run_once(tmp_path_factory, "mirrored_ema",
                                   smoke_data, *MIRRORED)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.model_dir, result


def test_mirrored_ema_follows_the_recurrence(mirrored_ema):
  model_dir, result = mirrored_ema
  assert "MirroredStrategy with 2 replica(s)" in result.stderr
  assert "eval (EMA weights) at step 4: loss" in result.stderr
  assert "eval (EMA weights) at step 8: loss" in result.stderr
  saved = [checkpoint_weights(model_dir / "checkpoints" / f"ckpt-{step}")
           for step in range(1, 9)]
  for step in range(2, 9):  # saved[step - 1] is of step `step`
    (_, before), (weights, average) = saved[step - 2], saved[step - 1]
    decay = decay_at(step - 1)
    for b, w, a in zip(before, weights, average):
      np.testing.assert_allclose(a, decay * b + (1 - decay) * w, rtol=1e-5,
                                 atol=1e-7, err_msg=f"step {step}")


def test_mirrored_resume_restores_the_ema_exactly(mirrored_ema, smoke_data,
                                                  tmp_path):
  model_dir, _ = mirrored_ema
  resumed = tmp_path / "run"
  shutil.copytree(model_dir, resumed)
  # As if the run had been killed after its checkpoint of step 4.
  for path in (resumed / "checkpoints").glob("ckpt-*"):
    if int(path.name.split(".")[0].split("-")[1]) > 4:
      path.unlink()
  shutil.rmtree(resumed / "export")
  (resumed / "metrics.json").unlink()
  result = run_trainer(f"--data_dir={smoke_data}", f"--model_dir={resumed}",
                       *MIRRORED)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"resuming from {resumed}/checkpoints/ckpt-4" in result.stderr
  assert "holds no EMA" not in result.stderr
  expected = checkpoint_weights(model_dir / "checkpoints" / "ckpt-8")
  got = checkpoint_weights(resumed / "checkpoints" / "ckpt-8")
  for name, want, have in zip(("weights", "EMA"), expected, got):
    for a, b in zip(want, have):
      np.testing.assert_array_equal(b, a, err_msg=name)


def test_export_holds_the_ema_weights(mirrored_ema):
  model_dir, _ = mirrored_ema
  weights, ema = checkpoint_weights(model_dir / "checkpoints" / "ckpt-8")
  tokens = tf.constant(np.random.default_rng(1).integers(
      0, vocab.VOCAB_SIZE, (32, smoke.get_config().model.len_max_input)),
                       tf.int32)
  served = tf.saved_model.load(str(model_dir / "export")).signatures[
      "serving_default"](tokens=tokens)["logits"].numpy()
  model = model_lib.build_model(smoke.get_config().model)

  def logits(values):
    for variable, value in zip(model.trainable_variables, values):
      variable.assign(value.astype(np.float32))
    return np.asarray(model(tokens, training=False), np.float32)

  np.testing.assert_allclose(served, logits(ema), rtol=1e-5, atol=1e-5)
  assert not np.allclose(served, logits(weights), rtol=1e-5, atol=1e-5)


def test_resume_without_ema_in_the_checkpoint_starts_it_from_the_weights(
    resumable, smoke_data):
  result = run_trainer(f"--data_dir={smoke_data}", f"--model_dir={resumable}",
                       f"--config.train.ema_decay={DECAY}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert (f"ema_decay={DECAY} but {resumable}/checkpoints/ckpt-20 holds no "
          "EMA of the weights: the EMA starts from the weights of step 20"
          ) in result.stderr
  assert "eval (EMA weights) at step 40" in result.stderr
  weights, ema = checkpoint_weights(resumable / "checkpoints" / "ckpt-40")
  assert train_lib.has_ema(str(resumable / "checkpoints" / "ckpt-40"))
  assert not all(np.array_equal(a, w) for a, w in zip(ema, weights))
