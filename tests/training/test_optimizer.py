"""trainer/training/optimizer.py: Adam's update on tensors against Keras's own
apply_gradients, and the trainer's XLA step against its non-XLA one."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from configs import smoke
from trainer.training import feeds
from trainer.training import plan
from trainer.training import optimizer as optimizer_lib
from trainer.training import train

SMOKE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "smoke.py")


def make(loss_scale):
  """Two variables and a built Adam (with a schedule, as the trainer's)."""
  variables = [keras.Variable(np.linspace(-1, 1, 6).reshape(2, 3), name="a",
                              dtype="float32"),
               keras.Variable(np.arange(4.0), name="b", dtype="float32")]
  schedule = keras.optimizers.schedules.CosineDecay(
      0.0, decay_steps=10, warmup_target=0.1, warmup_steps=3)
  optimizer = keras.optimizers.Adam(learning_rate=schedule)
  if loss_scale:
    optimizer = keras.optimizers.LossScaleOptimizer(
        optimizer, initial_scale=8.0, dynamic_growth_steps=2)
  optimizer.build(variables)
  return variables, optimizer


def all_values(variables, optimizer):
  return [np.asarray(v.value) for v in [*variables, *optimizer.variables]]


@pytest.mark.parametrize("loss_scale", [False, True])
def test_tensor_adam_matches_apply_gradients(loss_scale):
  rng = np.random.default_rng(0)
  steps = [[rng.normal(size=(2, 3)), rng.normal(size=(4,))]
           for _ in range(5)]
  if loss_scale:  # a non-finite step: skipped, the scale halves
    steps[2][1][0] = np.inf
  keras_vars, keras_opt = make(loss_scale)
  tensor_vars, tensor_opt = make(loss_scale)
  update = optimizer_lib.TensorAdam(tensor_opt, tensor_vars)
  apply = tf.function(update.apply, jit_compile=True)
  for gradients in steps:
    gradients = [tf.constant(g, tf.float32) for g in gradients]
    keras_opt.apply_gradients(zip(gradients, keras_vars))
    update.assign(*apply(update.values(),
                         [tf.convert_to_tensor(v.value) for v in tensor_vars],
                         gradients))
    for expected, found in zip(all_values(keras_vars, keras_opt),
                               all_values(tensor_vars, tensor_opt)):
      np.testing.assert_allclose(found, expected, rtol=1e-6, atol=1e-7)
  if loss_scale:
    assert float(tensor_opt.dynamic_scale) != 8.0  # it moved


def test_other_optimizers_are_refused():
  variables, _ = make(False)
  sgd = keras.optimizers.SGD()
  sgd.build(variables)
  with pytest.raises(ValueError, match="plain Adam only"):
    optimizer_lib.TensorAdam(sgd, variables)


def run_steps(config, smoke_data, strategy, steps):
  trainer = train.Trainer(config, strategy)
  iterator = feeds.Feeds.of(plan.for_strategy(config, strategy, smoke_data), strategy).train_iterator
  trainer.train_loop(iterator, tf.constant(steps))
  return trainer


@pytest.mark.parametrize("policy", ["float32", "float16"])
def test_the_fused_xla_step_trains_as_apply_gradients(smoke_data, policy):
  """40 steps of the smoke config on one replica: the fused XLA step (Adam
  inside; under float16 with the loss scale) against xla_update=False
  (forward and backward in XLA, Keras's apply_gradients outside: the loop
  before), on the same data order."""
  results = {}
  for xla_update in (True, False):
    config = smoke.get_config()
    config.train.xla_update = xla_update
    config.train.mixed_precision = policy
    try:
      trainer = run_steps(config, smoke_data, tf.distribute.get_strategy(),
                          40)
    finally:  # the Trainer sets Keras's global policy: leave it as found
      keras.mixed_precision.set_global_policy("float32")
    assert (trainer.fused_step is not None) == xla_update
    results[xla_update] = [np.asarray(v.value) for v in
                            [*trainer.model.weights,
                             *trainer.optimizer.variables]]
  for xla, plain in zip(results[True], results[False]):
    np.testing.assert_allclose(xla, plain, rtol=2e-4, atol=2e-5)


def checkpoint_values(model_dir):
  reader = tf.train.load_checkpoint(
      tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")))
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if "optimizer" in name or "model" in name}


def test_the_mirrored_xla_update_trains_as_apply_gradients(
    run, smoke_data, mirrored_smoke_run, tmp_path):
  """Two replicas (2 CPU devices, a subprocess each): Adam on tensors in XLA
  after the gradient all-reduce, against Keras's apply_gradients. The XLA
  side (config.train.xla_update=True, the default) is the session's mirrored
  smoke run (conftest)."""
  assert smoke.get_config().train.xla_update
  assert mirrored_smoke_run.returncode == 0, (
      mirrored_smoke_run.stderr[-3000:])
  values = {True: checkpoint_values(mirrored_smoke_run.model_dir)}
  model_dir = tmp_path / "xla_update_False"
  result = run("trainer.task", f"--config={SMOKE}", "--strategy=mirrored",
               "--num_cpu_devices=2", f"--data_dir={smoke_data}",
               f"--model_dir={model_dir}", "--config.train.xla_update=False")
  assert result.returncode == 0, result.stderr[-3000:]
  values[False] = checkpoint_values(model_dir)
  assert sorted(values[True]) == sorted(values[False])
  assert len(values[True]) > 10
  for name, plain in values[False].items():
    np.testing.assert_allclose(values[True][name], plain, rtol=2e-4,
                               atol=2e-5, err_msg=name)


def test_one_replica_mirrored_variables_are_not_fused(smoke_data):
  """MirroredStrategy on one device still mirrors its variables: they are
  assigned through the strategy, outside the XLA functions (a fused step
  would call merge_call inside a nested tf.function and fail)."""
  config = smoke.get_config()
  strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
  trainer = run_steps(config, smoke_data, strategy, 10)
  assert trainer.fused_step is None and trainer.update is not None
  # No fused step: one step per call whatever config.train.steps_per_call.
  assert config.train.steps_per_call > 1 and trainer.steps_per_call == 1
  assert int(trainer.optimizer.iterations.numpy()) == 10


def test_float16_loss_scaling_skips_overflows_without_stopping(smoke_data):
  # A loss scale so large that every scaled gradient overflows float16: the
  # optimizer skips those steps and halves the scale until they fit; the
  # divergence flag stays down (the loss itself is finite).
  config = smoke.get_config()
  config.train.mixed_precision = "float16"
  strategy = tf.distribute.get_strategy()
  trainer = train.Trainer(config, strategy)
  trainer.optimizer.dynamic_scale.assign(2.0**60)
  weights = [w.numpy().copy() for w in trainer.model.trainable_weights]
  iterator = feeds.Feeds.of(plan.for_strategy(config, strategy, smoke_data), strategy).train_iterator
  loss, _, diverged = trainer.train_loop(iterator, tf.constant(3))
  assert int(diverged) == -1 and np.isfinite(float(loss))
  assert float(trainer.optimizer.dynamic_scale) == 2.0**57  # 3 skips
  for before, after in zip(weights, trainer.model.trainable_weights):
    np.testing.assert_array_equal(before, after.numpy())  # skipped
  loss, _, diverged = trainer.train_loop(iterator, tf.constant(60))
  assert int(diverged) == -1 and np.isfinite(float(loss))
  assert float(trainer.optimizer.dynamic_scale) < 2.0**20  # it came down


@pytest.mark.parametrize("policy", ["float32", "bfloat16"])
def test_a_non_finite_gradient_is_flagged_at_its_step(smoke_data, policy):
  config = smoke.get_config()
  config.train.mixed_precision = policy
  strategy = tf.distribute.get_strategy()
  trainer = train.Trainer(config, strategy)
  iterator = feeds.Feeds.of(plan.for_strategy(config, strategy, smoke_data), strategy).train_iterator
  _, _, diverged = trainer.train_loop(iterator, tf.constant(3))
  assert int(diverged) == -1
  # An infinite weight: the next step's loss and gradients are not finite.
  weight = trainer.model.trainable_weights[0]
  weight.assign(tf.fill(weight.shape, float("inf")))
  _, _, diverged = trainer.train_loop(iterator, tf.constant(5))
  assert int(diverged) == 4  # the step counter after its first step


def test_steps_per_call_trains_as_one_call_per_step(smoke_data):
  """Host loops of 10 steps at 4 steps per XLA call (2 calls, then 2 single
  steps) against a call per step: the same batches, the same weights and
  Adam state, the same loop results."""
  trainers, results = {}, {}
  for per_call in (1, 4):
    config = smoke.get_config()
    config.train.steps_per_call = per_call
    strategy = tf.distribute.get_strategy()
    trainer = train.Trainer(config, strategy)
    iterator = feeds.Feeds.of(plan.for_strategy(config, strategy, smoke_data),
                              strategy).train_iterator
    results[per_call] = [float(t) for _ in range(2) for t in
                         trainer.train_loop(iterator, tf.constant(10))]
    results[per_call].append(float(trainer.gradient_norm))
    trainers[per_call] = trainer
  assert trainers[1].fused_steps is None
  assert trainers[4].trace_counts()["fused_steps"] == 1
  assert int(trainers[4].step) == int(trainers[1].step) == 20
  np.testing.assert_allclose(results[4], results[1], rtol=1e-5)
  for fused, single in zip(*(
      [np.asarray(v.value) for v in [*trainers[k].model.weights,
                                     *trainers[k].optimizer.variables]]
      for k in (4, 1))):
    np.testing.assert_allclose(fused, single, rtol=1e-5, atol=1e-6)


def test_a_divergence_inside_a_call_is_flagged_at_its_step(smoke_data):
  # A learning rate so large that the loss turns non-finite a few steps in:
  # at 3 steps per call the flag names the same step as a call per step.
  diverged = {}
  for per_call in (1, 3):
    config = smoke.get_config()
    config.train.learning_rate = 1e30
    config.train.warmup_steps = 0
    config.train.steps_per_call = per_call
    strategy = tf.distribute.get_strategy()
    trainer = train.Trainer(config, strategy)
    iterator = feeds.Feeds.of(plan.for_strategy(config, strategy, smoke_data),
                              strategy).train_iterator
    # Calls of steps 1-3, 4-6, 7-9.
    diverged[per_call] = int(trainer.train_loop(iterator, tf.constant(9))[2])
  assert diverged[3] == diverged[1]
  assert diverged[1] % 3 != 1, diverged  # not a call's first step
