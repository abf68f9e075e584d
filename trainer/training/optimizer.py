"""Adam's update as a function of tensors, so that XLA can compile it.

Keras 3's `optimizer.apply_gradients` runs as ~10 small ops per variable per
step outside XLA, and its `stateless_apply` refuses the TensorFlow backend
("incompatible with tf.distribute"). This module computes the same update
from the values of the optimizer's own variables:

  update = TensorAdam(optimizer, model.trainable_variables)
  state, params = update.values(), [v.value for v in trainable_variables]
  new_state, new_params = update.apply(state, params, gradients)  # in XLA
  update.assign(new_state, new_params)  # or assign inside the XLA function

The variables stay the Keras optimizer's (`iterations`, momentums,
velocities; the loss scale and its counter under float16), so checkpoints
are unchanged. The arithmetic follows keras.optimizers.Adam.update_step and
LossScaleOptimizer (Keras 3.15); a test compares it with apply_gradients.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class TensorAdam:
  """Adam (optionally inside a LossScaleOptimizer) on tensors."""

  def __init__(self, optimizer: keras.optimizers.Optimizer,
               trainable_variables):
    self.loss_scale = (optimizer if isinstance(
        optimizer, keras.optimizers.LossScaleOptimizer) else None)
    adam = optimizer.inner_optimizer if self.loss_scale else optimizer
    if type(adam) is not keras.optimizers.Adam or adam.amsgrad or any(
        getattr(adam, name, None) for name in (
            "weight_decay", "clipnorm", "clipvalue", "global_clipnorm",
            "use_ema", "gradient_accumulation_steps")):
      raise ValueError(f"TensorAdam computes plain Adam only, not {adam} "
                       "with these options")
    self.adam = adam
    # Private in Keras: one momentum and one velocity per variable, in the
    # order of the list the optimizer was built with.
    index = adam._get_variable_index  # pylint: disable=protected-access
    self.momentums = [adam._momentums[index(v)] for v in trainable_variables]  # pylint: disable=protected-access
    self.velocities = [adam._velocities[index(v)] for v in trainable_variables]  # pylint: disable=protected-access
    self.state = [adam.iterations, *self.momentums, *self.velocities]
    if self.loss_scale:
      self.state += [self.loss_scale.dynamic_scale,
                     self.loss_scale.step_counter]
    self.trainable_variables = list(trainable_variables)

  def values(self) -> list[tf.Tensor]:
    """The state's current values (this replica's), as tensors."""
    return [tf.convert_to_tensor(v.value) for v in self.state]

  def learning_rate(self, iterations: tf.Tensor) -> tf.Tensor:
    schedule = self.adam._learning_rate  # pylint: disable=protected-access
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
      return tf.cast(schedule(iterations), tf.float32)
    return tf.convert_to_tensor(schedule.value if hasattr(
        schedule, "value") else schedule, tf.float32)

  def apply(self, state: list[tf.Tensor], params: list[tf.Tensor],
            gradients: list[tf.Tensor]
            ) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
    """One update: (new state, new params). Gradients are the summed ones
    (scaled by the loss scale under float16)."""
    count = len(params)
    iterations = state[0]
    momentums = state[1:1 + count]
    velocities = state[1 + count:1 + 2 * count]
    if not self.loss_scale:
      return self._adam(iterations, momentums, velocities, params, gradients)
    scale, counter = state[1 + 2 * count:]
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(_values(g)))
                            for g in gradients])
    unscaled = [_map_values(lambda t: t / tf.cast(scale, t.dtype), g)
                for g in gradients]
    # Both branches are computed; the non-finite step keeps every value.
    applied_state, applied_params = self._adam(
        iterations, momentums, velocities, params, unscaled)
    grow = tf.equal(counter, self.loss_scale.dynamic_growth_steps - 1)
    finite_scale = tf.where(grow, scale * 2.0, scale)
    finite_counter = tf.where(grow, tf.zeros_like(counter), counter + 1)
    new_state = [tf.where(finite, new, old) for new, old in zip(
        applied_state, [iterations, *momentums, *velocities])]
    new_params = [tf.where(finite, new, old)
                  for new, old in zip(applied_params, params)]
    new_state += [tf.where(finite, finite_scale, scale * 0.5),
                  tf.where(finite, finite_counter, tf.zeros_like(counter))]
    return new_state, new_params

  def _adam(self, iterations, momentums, velocities, params, gradients):
    adam = self.adam
    learning_rate = self.learning_rate(iterations)
    new_momentums, new_velocities, new_params = [], [], []
    for m, v, param, gradient in zip(momentums, velocities, params,
                                     gradients):
      dtype = param.dtype
      lr = tf.cast(learning_rate, dtype)
      gradient = _map_values(lambda t: tf.cast(t, dtype), gradient)
      # An embedding's gradient comes as IndexedSlices, one slice per lookup.
      # Keras (like TF's sparse Adam before it) squares the slices before
      # summing repeated rows: the same here, to train as Keras does.
      square = tf.convert_to_tensor(_map_values(tf.square, gradient))
      gradient = tf.convert_to_tensor(gradient)  # repeated rows summed
      local_step = tf.cast(iterations + 1, dtype)
      beta_1_power = tf.pow(tf.cast(adam.beta_1, dtype), local_step)
      beta_2_power = tf.pow(tf.cast(adam.beta_2, dtype), local_step)
      alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
      m = m + (gradient - m) * (1 - adam.beta_1)
      v = v + (square - v) * (1 - adam.beta_2)
      new_momentums.append(m)
      new_velocities.append(v)
      new_params.append(param - (m * alpha) / (tf.sqrt(v) + adam.epsilon))
    return [iterations + 1, *new_momentums, *new_velocities], new_params

  def assign(self, state: list[tf.Tensor], params: list[tf.Tensor]) -> None:
    """Writes an update back: in the XLA function itself (one replica), or
    per replica from its own values (several; every replica computed the
    same update from the all-reduced gradients)."""
    assign_variables([*self.state, *self.trainable_variables],
                     [*state, *params])


def assign_variables(variables, values) -> None:
  """Assigns each variable its value, in a replica context: directly for
  plain variables (also inside an XLA function), else each replica its own
  value (through the strategy's update, as Keras's optimizers do)."""
  variables, values = list(variables), list(values)
  if not variables:
    return
  if not mirrors_variables(tf.distribute.get_strategy()):
    for variable, value in zip(variables, values):
      variable.assign(value)
    return

  def assign_all(strategy, values):
    for variable, value in zip(variables, values):
      strategy.extended.update(
          _tf_variable(variable), lambda var, val: var.assign(val),
          args=(value,), group=False)

  tf.__internal__.distribute.interim.maybe_merge_call(
      assign_all, tf.distribute.get_strategy(), values)


def _values(gradient):
  return gradient.values if isinstance(gradient, tf.IndexedSlices) else (
      gradient)


def _map_values(fn, gradient):
  """fn of a gradient's values, keeping IndexedSlices sparse."""
  if isinstance(gradient, tf.IndexedSlices):
    return tf.IndexedSlices(fn(gradient.values), gradient.indices,
                            gradient.dense_shape)
  return fn(gradient)


def mirrors_variables(strategy: tf.distribute.Strategy) -> bool:
  """True for a strategy whose variables are mirrored (each replica holds a
  copy, assigned through the strategy): Mirrored, MultiWorkerMirrored (even
  of one replica) and TPU; the default strategy and OneDevice keep plain
  variables. Decided from the strategy's kind, which the trainer chose, not
  from the variable's wrapper: Keras's variable classes differ between
  versions (on Keras 3.6.0 a layer's variables are no `keras.Variable`)."""
  return isinstance(strategy, (tf.distribute.MirroredStrategy,
                               tf.distribute.MultiWorkerMirroredStrategy,
                               tf.distribute.TPUStrategy))


def _tf_variable(variable):
  """The tf.Variable (a MirroredVariable when mirrored) behind a variable:
  itself, or the one a Keras variable holds (`.value`; whatever its class)."""
  return variable if isinstance(variable, tf.Variable) else variable.value
