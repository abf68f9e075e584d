"""The Trainer: model, optimizer and the compiled train and eval steps.

Keras 3 `fit` cannot be the loop under tf.distribute with XLA (it fails
under MirroredStrategy with jit_compile and under multi-worker; see the
README's "What a run does"), so the steps are written here:

  * with plain variables (default and one_device strategies), the whole
    step -- forward, backward and Adam's update
    (trainer/training/optimizer.py) -- is one XLA-compiled function
    (`jit_compile=True`) that reads and assigns the variables itself;
  * with mirrored variables (mirrored, multi_worker_mirrored), each
    replica's forward and backward pass is one XLA function that takes the
    weights as tensors (`model.stateless_call`), the gradients are summed
    across replicas, and the update is a second XLA function on tensors
    whose results each replica assigns through the strategy (a compiled
    function may not capture another replica's variables, nor assign a
    mirrored one);
  * on TPU, TPUStrategy compiles the whole step itself (Keras's
    apply_gradients inside it);
  * `strategy.run` of the replica step runs `num_steps` times inside one
    outer tf.function, so the host calls into the graph once per host loop;
  * the loss is summed per replica and divided by the global batch size, so
    summing over replicas gives the mean;
  * gradient accumulation (config.train.accumulation_steps = K > 1): an
    optimizer step takes K batches, stacked [K, batch, ...]; the replica's
    compiled forward/backward runs them one after another in a loop and
    sums their gradients (of losses summed and divided by K x the global
    batch), so the update -- and the one all-reduce of several replicas --
    sees the gradient of one step at K x the batch;
  * every shape is static, so each function is traced exactly once per run;
  * with config.train.ema_decay, an exponential moving average of the
    trainable weights is updated right after each optimizer update, in the
    same compiled function (moving_average), and evaluation and export use
    it.

When to train, evaluate, checkpoint and stop is `loop`'s business.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import keras
import ml_collections
import numpy as np
import tensorflow as tf

from trainer.data import problems
from trainer.data import vocab
from trainer.model import layers as model_lib
from trainer.training import optimizer as optimizer_lib
from trainer.training import plan

# The names evaluation reports problems.OPERATORS under, in that order.
OPERATION_NAMES = ("add", "sub", "mul")
assert len(OPERATION_NAMES) == len(problems.OPERATORS)
_OPERATOR_IDS = [vocab.TOKEN_IDS[op] for op in problems.OPERATORS]


def operation_one_hot(x: tf.Tensor) -> tf.Tensor:
  """Which operation each row of model inputs asks for, from x alone.

  The operation is the first operator token after the first ':' of a row
  (x = defs + [':'] + op: a '-' in defs is a negative sign, not the
  operation). Static shapes and plain tensor ops, so it runs inside an XLA
  function and on TPU.

  Args:
    x: int32 [batch, len_max_input] model inputs.

  Returns:
    int32 [batch, len(problems.OPERATORS)]: one-hot over problems.OPERATORS
    in that order; a row whose op part has no operator is all zeros.
  """
  # [batch, length]: True strictly after the first separator.
  after_separator = tf.cumsum(tf.cast(tf.equal(x, vocab.SEP_ID), tf.int32),
                              axis=1, exclusive=True) > 0
  # [batch, length, operators]
  is_operator = (tf.equal(x[:, :, tf.newaxis], _OPERATOR_IDS) &
                 after_separator[:, :, tf.newaxis])
  any_operator = tf.cast(tf.reduce_any(is_operator, axis=2), tf.int32)
  # [batch, length]: the first operator position of the op part only.
  first = tf.equal(tf.cumsum(any_operator, axis=1, exclusive=True), 0)
  return tf.cast(tf.reduce_any(is_operator & first[:, :, tf.newaxis], axis=1),
                 tf.int32)


class Trainer:
  """The model, its optimizer and the compiled train and eval functions.

  Datasets come in: `train_loop(iterator, num_steps)` runs steps on a
  distributed iterator, `eval_loop(dataset)` one pass over a distributed
  dataset. Variables are created under the strategy's scope; `checkpoint`
  tracks the model, the optimizer and the step counter.
  """

  def __init__(self, config: ml_collections.ConfigDict,
               strategy: tf.distribute.Strategy):
    self.config = config
    self.strategy = strategy
    train = config.train
    self.global_batch_size = train.global_batch_size
    # Batches per optimizer step (gradient accumulation; 1 = off).
    self.accumulation_steps = train.accumulation_steps
    self.num_replicas = strategy.num_replicas_in_sync
    self.use_xla = train.jit_compile and not isinstance(
        strategy, tf.distribute.TPUStrategy)

    keras.mixed_precision.set_global_policy(
        plan.POLICIES[train.mixed_precision])
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
      self.model = model_lib.build_model(config.model)
      schedule = keras.optimizers.schedules.CosineDecay(
          initial_learning_rate=0.0 if train.warmup_steps else
          train.learning_rate,
          decay_steps=max(train.num_steps - train.warmup_steps, 1),
          alpha=train.min_learning_rate_ratio,
          warmup_target=train.learning_rate if train.warmup_steps else None,
          warmup_steps=train.warmup_steps)
      optimizer = keras.optimizers.Adam(learning_rate=schedule)
      if train.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
      self.optimizer = optimizer
      self.optimizer.build(self.model.trainable_variables)
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    # --- EMA of the weights (config.train.ema_decay; None: off) ---------
    # One float32 variable per trainable weight, started from the weights,
    # moved after each optimizer update (moving_average), kept in
    # checkpoints as "ema".
    self.ema_decay = train.ema_decay
    self.ema = None
    if self.ema_decay:
      with strategy.scope():
        self.ema = [
            tf.Variable(tf.convert_to_tensor(v.value), trainable=False,
                        name="ema_" + v.path.replace("/", "_"))
            for v in self.model.trainable_variables]
    self._checkpoint_without_ema = tf.train.Checkpoint(
        model=self.model, optimizer=self.optimizer, step=self.step)
    self.checkpoint = (tf.train.Checkpoint(
        model=self.model, optimizer=self.optimizer, step=self.step,
        ema=self.ema) if self.ema else self._checkpoint_without_ema)
    # The mean over the last host loop's steps of the global norm of the
    # gradient each step applied (NaN: not known on this path; see
    # _step_results); TensorBoard's train/gradient_norm. Not checkpointed.
    self.gradient_norm = tf.Variable(float("nan"), trainable=False,
                                     name="gradient_norm")
    # The seconds the last host loop waited for its batches (the sum of its
    # get_next calls: _next_batch); the run's time split reads it
    # (trainer/training/timing.py). Not checkpointed.
    self.input_wait = tf.Variable(0.0, dtype=tf.float64, trainable=False,
                                  name="input_wait")

    # One step's loss, correct count and gradients: of one batch, or of K
    # accumulated ones (config.train.accumulation_steps).
    self._gradients = (self._forward_backward if self.accumulation_steps == 1
                       else self._accumulated_forward_backward)
    self.forward_backward = tf.function(self._gradients,
                                        jit_compile=self.use_xla)
    self.forward = tf.function(self._forward, jit_compile=self.use_xla)
    # Adam's update in XLA too: fused with the step on one replica, a
    # second function on tensors on several.
    self.update = None
    self.fused_step = None
    if self.use_xla and train.xla_update:
      self.update = optimizer_lib.TensorAdam(self.optimizer,
                                             self.model.trainable_variables)
      # Mirrored variables (MirroredStrategy or MultiWorkerMirrored, even of
      # one replica) are assigned through the strategy, which may not run
      # inside a nested XLA function: fused only for plain variables (told
      # by the strategy's kind, not by Keras's variable classes).
      if not optimizer_lib.mirrors_variables(strategy):
        self.fused_step = tf.function(self._fused_step, jit_compile=True)
      else:
        self.apply_update = tf.function(self._apply_update, jit_compile=True)
    # Steps per XLA call (config.train.steps_per_call): on the fused path
    # the host loop stacks this many batches and runs their steps in one
    # compiled call (one dispatch, not one per step); elsewhere a call is a
    # step (several replicas: each step's all-reduce and update are calls of
    # their own; TPU: TPUStrategy compiles the whole host loop already).
    self.steps_per_call = (train.steps_per_call if self.fused_step is not None
                           else 1)
    self.fused_steps = (tf.function(self._fused_steps, jit_compile=True)
                        if self.steps_per_call > 1 else None)
    self.train_loop = tf.function(self._train_loop)
    self.eval_loop = tf.function(self._eval_loop)

  # --- per-replica computations -------------------------------------------

  def _weights(self):
    """This replica's variable values, as tensors.

    The XLA functions take the weights as arguments instead of capturing the
    variables: under MirroredStrategy a compiled function that captures
    replica 1's variables is launched from replica 0's device and fails
    ("Trying to access resource ... located in device CPU:1 from device
    CPU:0"). On tensors, each replica's launch stays on its own device.
    """
    return ([tf.convert_to_tensor(v.value) for v in
             self.model.trainable_variables],
            [tf.convert_to_tensor(v.value) for v in
             self.model.non_trainable_variables])

  def _per_example(self, trainable, non_trainable, x, y, training=True):
    """Loss (float32) and correctness (int32 0/1) per example [batch], and
    the non-trainable variables' new values (dropout's seed state advances
    in training)."""
    logits, non_trainable = self.model.stateless_call(
        trainable, non_trainable, x, training=training)
    logits = tf.cast(logits, tf.float32)
    per_example = keras.losses.sparse_categorical_crossentropy(
        y, logits, from_logits=True)  # [per_replica_batch]
    correct = tf.cast(
        tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y),
        tf.int32)  # [per_replica_batch]
    return per_example, correct, non_trainable

  def _loss_and_correct(self, trainable, non_trainable, x, y):
    """Training: per-example losses, the correct count, new non-trainable
    values."""
    per_example, correct, non_trainable = self._per_example(
        trainable, non_trainable, x, y)
    return per_example, tf.reduce_sum(correct), non_trainable

  def _forward_backward(self, trainable, non_trainable, x, y,
                        examples_per_step=None):
    with tf.GradientTape() as tape:
      tape.watch(trainable)
      per_example, correct, non_trainable = self._loss_and_correct(
          trainable, non_trainable, x, y)
      # Summed per replica over the global batch (times the accumulated
      # batches): replica sums add to the mean.
      loss = tf.reduce_sum(per_example) / (examples_per_step or
                                           self.global_batch_size)
      scaled_loss = self.optimizer.scale_loss(loss)
    gradients = tape.gradient(scaled_loss, trainable)
    return loss, correct, gradients, non_trainable

  # --- gradient accumulation (config.train.accumulation_steps) -------------

  def _accumulated_forward_backward(self, trainable, non_trainable, xs, ys):
    """_forward_backward over K = accumulation_steps batches, stacked as
    xs [K, batch, len_max_input] and ys [K, batch]: one batch after another
    in a loop (only one batch's activations alive at a time), gradients
    summed.

    Each batch's loss is summed and divided by K x the global batch, so the
    sums are the loss and gradient of one step over the K x global batch
    examples. Dense gradients add up in place; an embedding's IndexedSlices
    are kept, slices of every batch concatenated (as the K x batch's would
    be), because Adam squares slices before it sums repeated rows
    (optimizer.py).
    """
    steps = self.accumulation_steps
    examples = steps * self.global_batch_size
    # The first batch outside the loop: the gradients' kinds and shapes.
    loss, correct, gradients, non_trainable = self._forward_backward(
        trainable, non_trainable, xs[0], ys[0], examples)
    sliced = [isinstance(g, tf.IndexedSlices) for g in gradients]
    dense = [g for g, s in zip(gradients, sliced) if not s]
    slices = [(tf.TensorArray(g.values.dtype, size=steps,
                              element_shape=g.values.shape).write(0, g.values),
               tf.TensorArray(g.indices.dtype, size=steps,
                              element_shape=g.indices.shape).write(
                                  0, g.indices))
              for g, s in zip(gradients, sliced) if s]

    def body(k, loss, correct, dense, slices, non_trainable):
      step_loss, step_correct, step_gradients, non_trainable = (
          self._forward_backward(trainable, non_trainable, xs[k], ys[k],
                                 examples))
      step_dense = [g for g, s in zip(step_gradients, sliced) if not s]
      step_slices = [g for g, s in zip(step_gradients, sliced) if s]
      return (k + 1, loss + step_loss, correct + step_correct,
              [total + g for total, g in zip(dense, step_dense)],
              [(values.write(k, g.values), indices.write(k, g.indices))
               for (values, indices), g in zip(slices, step_slices)],
              non_trainable)

    _, loss, correct, dense, slices, non_trainable = tf.while_loop(
        lambda k, *_: k < steps, body,
        (tf.constant(1), loss, correct, dense, slices, non_trainable))
    dense, slices = iter(dense), iter(slices)
    summed = []
    for g, s in zip(gradients, sliced):
      if not s:
        summed.append(next(dense))
        continue
      values, indices = next(slices)
      summed.append(tf.IndexedSlices(
          tf.reshape(values.stack(), [-1, *g.values.shape[1:]]),
          tf.reshape(indices.stack(), [-1]), g.dense_shape))
    return loss, correct, summed, non_trainable

  def _next_step_batches(self, iterator):
    """One optimizer step's input from the train iterator: its next batch
    (x, y), or with accumulation the next K, as (xs, ys) tuples of K
    (per-replica values: stacked inside the replica, _stacked)."""
    if self.accumulation_steps == 1:
      return next(iterator)
    batches = [next(iterator) for _ in range(self.accumulation_steps)]
    return (tuple(x for x, _ in batches), tuple(y for _, y in batches))

  @staticmethod
  def _stacked(values):
    """K batches (a tuple) stacked [K, ...]; one batch as it is."""
    return tf.stack(values) if isinstance(values, tuple) else values

  # --- steps ----------------------------------------------------------------

  def _step_results(self, loss, correct, gradients, gradient_norm):
    """What one replica's step reports, as one vector (one all-reduce):
    [loss, correct count, 1 when the step diverged else 0, gradient norm
    share].

    Diverged: the loss is not finite, or the gradient norm is not (except
    under float16 loss scaling, whose optimizer skips such steps itself and
    lowers the scale).

    `gradient_norm`: the global norm of the gradient the update applies
    (summed over replicas; _gradient_norm), or NaN where this path does not
    see that gradient; reported divided by the replicas, so that the sum over
    replicas is the norm.
    """
    diverged = tf.logical_not(tf.math.is_finite(loss))
    if self.config.train.mixed_precision != "float16":
      diverged |= tf.logical_not(
          tf.math.is_finite(tf.linalg.global_norm(gradients)))
    return tf.stack([loss, tf.cast(correct, tf.float32),
                     tf.cast(diverged, tf.float32),
                     gradient_norm / self.num_replicas])

  def _gradient_norm(self, gradients) -> tf.Tensor:
    """The global norm of `gradients`, unscaled under float16 loss scaling
    (the gradients are of the scaled loss there)."""
    norm = tf.linalg.global_norm(gradients)
    if self.config.train.mixed_precision == "float16":
      norm /= tf.cast(self.optimizer.dynamic_scale, norm.dtype)
    return norm

  def _fused_step(self, x, y):
    """One replica's whole step, compiled as one XLA function."""
    trainable, non_trainable = self._weights()
    loss, correct, gradients, non_trainable = self._gradients(
        trainable, non_trainable, x, y)
    self._assign_update(*self._apply_update(
        self.update.values(), trainable, gradients, self._ema_values()))
    optimizer_lib.assign_variables(self.model.non_trainable_variables,
                                   non_trainable)
    # One replica: its gradient is the one applied.
    return self._step_results(loss, correct, gradients,
                              self._gradient_norm(gradients))

  def _fused_steps(self, xs, ys):
    """steps_per_call whole steps (_fused_step) in one XLA call, on batches
    stacked as xs [steps, batch, len_max_input] and ys [steps, batch]
    ([steps, K, batch, ...] with K accumulated batches a step).

    Returns:
      _step_results' vector summed over the steps, but for its diverged
      entry: the 1-based index of the first step that diverged, 0 if none.
    """
    totals = tf.zeros([4])
    for j in tf.range(tf.shape(xs)[0]):
      loss, correct, diverged, gradient_norm = tf.unstack(
          self._fused_step(xs[j], ys[j]))
      first_diverged = tf.where((totals[2] == 0) & (diverged > 0),
                                tf.cast(j + 1, tf.float32), totals[2])
      totals = tf.stack([totals[0] + loss, totals[1] + correct,
                         first_diverged, totals[3] + gradient_norm])
    return totals

  def _replica_train_step(self, x, y):
    x, y = self._stacked(x), self._stacked(y)
    if self.fused_step is not None:
      return self.fused_step(x, y)
    trainable, non_trainable = self._weights()
    loss, correct, gradients, non_trainable = self.forward_backward(
        trainable, non_trainable, x, y)
    optimizer_lib.assign_variables(self.model.non_trainable_variables,
                                   non_trainable)
    if self.update is None:  # TPU (compiled whole by TPUStrategy), or
      # Keras's apply_gradients chosen (jit_compile or xla_update False).
      # apply_gradients sums the replicas' gradients inside: with several
      # replicas the norm of that sum is not seen here (another all-reduce
      # per step just for it would cost every run).
      gradient_norm = (self._gradient_norm(gradients)
                       if self.num_replicas == 1 else
                       tf.constant(np.nan, tf.float32))
      updates = tf.convert_to_tensor(self.optimizer.iterations)
      self.optimizer.apply_gradients(
          zip(gradients, self.model.trainable_variables))
      if self.ema is not None:  # read after the update (control deps)
        optimizer_lib.assign_variables(self.ema, moving_average(
            self._ema_values(), self._weights()[0], self.ema_decay, updates))
      return self._step_results(loss, correct, gradients, gradient_norm)
    summed = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, gradients)
    results = self._step_results(loss, correct, gradients,
                                 self._gradient_norm(summed))
    self._assign_update(*self.apply_update(
        self.update.values(), trainable, summed, self._ema_values()))
    return results

  # --- the update and the EMA of the weights ------------------------------

  def _apply_update(self, state, params, gradients, ema):
    """Adam's update (optimizer.TensorAdam) and the EMA moved after it,
    on tensors: (new state, new params, new EMA; [] when EMA is off)."""
    new_state, new_params = self.update.apply(state, params, gradients)
    if self.ema is None:
      return new_state, new_params, []
    # state[0]: the optimizer's iterations before this update.
    return new_state, new_params, moving_average(ema, new_params,
                                                 self.ema_decay, state[0])

  def _assign_update(self, state, params, ema) -> None:
    """Writes the update and the EMA back, in one assignment (one merge
    call on mirrored variables)."""
    optimizer_lib.assign_variables(
        [*self.update.state, *self.update.trainable_variables,
         *(self.ema or [])], [*state, *params, *ema])

  def _ema_values(self) -> list[tf.Tensor]:
    """This replica's EMA of the weights, as tensors ([] when off)."""
    return [tf.convert_to_tensor(v) for v in self.ema or []]

  def evaluated_weights(self):
    """The trainable weights evaluation and export use: the EMA when on,
    else the weights themselves (this replica's, as tensors)."""
    return self._ema_values() if self.ema is not None else self._weights()[0]

  def checkpoint_for(self, prefix: str) -> tf.train.Checkpoint:
    """What to restore the checkpoint `prefix` into: self.checkpoint, or,
    with EMA on and a checkpoint saved without it, the checkpoint without
    the EMA (start_ema then starts it from the restored weights)."""
    if self.ema is not None and not has_ema(prefix):
      return self._checkpoint_without_ema
    return self.checkpoint

  def start_ema(self) -> None:
    """Sets the EMA to the current weights (a run resumed with EMA on
    from a checkpoint without one)."""
    for average, weight in zip(self.ema, self.model.trainable_variables):
      average.assign(tf.convert_to_tensor(weight.value))

  @contextlib.contextmanager
  def ema_in_model(self):
    """With EMA on: the model holds the EMA weights inside the block (for
    export), its own weights again after it; without EMA: nothing."""
    if self.ema is None:
      yield
      return
    weights = [tf.convert_to_tensor(v.value)
               for v in self.model.trainable_variables]
    for variable, average in zip(self.model.trainable_variables, self.ema):
      variable.assign(tf.convert_to_tensor(average))
    try:
      yield
    finally:
      for variable, value in zip(self.model.trainable_variables, weights):
        variable.assign(value)

  def _forward(self, trainable, non_trainable, x, y):
    """One replica's eval sums: totals, and per operation ([operators])."""
    per_example, correct, _ = self._per_example(
        trainable, non_trainable, x, y, training=False)
    by_op = operation_one_hot(x)  # [batch, operators]
    return {
        "loss_sum": tf.reduce_sum(per_example),
        "correct": tf.reduce_sum(correct),
        "count": tf.shape(y)[0],
        "op_loss_sum": tf.linalg.matvec(tf.cast(by_op, tf.float32),
                                        per_example, transpose_a=True),
        "op_correct": tf.linalg.matvec(by_op, correct, transpose_a=True),
        "op_count": tf.reduce_sum(by_op, axis=0),
    }

  def _replica_eval_step(self, x, y):
    return self.forward(self.evaluated_weights(), self._weights()[1], x, y)

  # --- host loops ---------------------------------------------------------

  def _train_loop(self, iterator, num_steps):
    """Runs num_steps steps.

    Returns:
      The mean loss and accuracy, and the step counter's value after the
      first step that diverged (a non-finite loss or gradient norm on any
      replica), or -1: one flag per host loop, read by the host once. The
      mean gradient norm goes to self.gradient_norm (read when wanted).
    """
    # (loss, correct count, gradient norm) summed, the first diverged step.
    sums = (tf.constant(0.0), tf.constant(0, tf.int64), tf.constant(0.0),
            tf.constant(-1, tf.int64))
    waited = tf.constant(0.0, tf.float64)  # seconds in get_next
    per_call = self.steps_per_call
    if per_call > 1:
      # Whole calls of per_call steps, then single steps for the rest: the
      # iterator still yields one batch at a time, so the data order, skips
      # and resumes are the same whatever per_call is.
      for i in tf.range(num_steps // per_call):
        batches, seconds = _next_batches(iterator, per_call, after=sums,
                                         read=self._next_step_batches)
        waited += seconds
        results = self.strategy.reduce(
            tf.distribute.ReduceOp.SUM, self.strategy.run(
                self.fused_steps,
                args=(tf.stack([self._stacked(x) for x, _ in batches]),
                      tf.stack([self._stacked(y) for _, y in batches]))),
            axis=None)
        # Its diverged entry is the index of the call's first diverged step.
        sums = _add_results(sums, results, self.step + tf.cast(
            i * per_call, tf.int64) + tf.cast(results[2], tf.int64))
    done = num_steps // per_call * per_call if per_call > 1 else 0
    for i in tf.range(done, num_steps):
      [(x, y)], seconds = _next_batches(iterator, 1, after=sums,
                                        read=self._next_step_batches)
      waited += seconds
      replica_results = self.strategy.run(self._replica_train_step,
                                          args=(x, y))
      # [loss, correct, diverged, gradient norm] summed over replicas: one
      # all-reduce.
      sums = _add_results(sums, self.strategy.reduce(
          tf.distribute.ReduceOp.SUM, replica_results, axis=None),
                          self.step + tf.cast(i, tf.int64) + 1)
    loss_sum, correct, gradient_norm_sum, first_diverged = sums
    self.step.assign_add(tf.cast(num_steps, tf.int64))
    steps = tf.cast(num_steps, tf.float32)
    self.gradient_norm.assign(gradient_norm_sum / steps)
    self.input_wait.assign(waited)
    return (loss_sum / steps,
            tf.cast(correct, tf.float32) / (
                steps * self.global_batch_size * self.accumulation_steps),
            first_diverged)

  def _eval_loop(self, dataset):
    """One pass over the distributed eval dataset.

    Returns:
      A dict of sums over every replica: loss_sum (float32), correct and
      count (int64), and per operation of problems.OPERATORS, in that order,
      op_loss_sum, op_correct and op_count ([operators]). A row whose op part
      has no operator counts in the totals only.
    """
    num_ops = len(problems.OPERATORS)
    sums = {"loss_sum": tf.constant(0.0),
            "correct": tf.constant(0, tf.int64),
            "count": tf.constant(0, tf.int64),
            "op_loss_sum": tf.zeros([num_ops]),
            "op_correct": tf.zeros([num_ops], tf.int64),
            "op_count": tf.zeros([num_ops], tf.int64)}
    for x, y in dataset:
      replica_sums = self.strategy.run(self._replica_eval_step, args=(x, y))
      sums = {name: total + tf.cast(self.strategy.reduce(
                  tf.distribute.ReduceOp.SUM, replica_sums[name], axis=None),
                                    total.dtype)
              for name, total in sums.items()}
    return sums

  def evaluate(self, dataset) -> dict[str, Any]:
    """One eval pass (eval_loop), its sums made means.

    Returns:
      {"loss", "accuracy", "examples", "by_op": {name: {"loss", "accuracy",
      "examples"}}}, names of OPERATION_NAMES; an operation without
      examples has loss and accuracy None. Loss and accuracy are 0.0 for a
      pass of 0 examples.
    """
    sums = {name: t.numpy() for name, t in self.eval_loop(dataset).items()}
    count = int(sums["count"])
    metrics = {"loss": float(sums["loss_sum"] / max(count, 1)),
               "accuracy": float(sums["correct"] / max(count, 1)),
               "examples": count}
    metrics["by_op"] = {
        name: _mean_metrics(op_loss_sum, op_correct, op_count)
        for name, op_loss_sum, op_correct, op_count in zip(
            OPERATION_NAMES, sums["op_loss_sum"], sums["op_correct"],
            sums["op_count"])}
    return metrics

  def model_graph(self) -> tf.Graph:
    """The model's forward pass (int32 token ids [batch, len_max_input] to
    logits), traced and never run: the graph of TensorBoard's Graphs
    dashboard. The compiled train step's graph would show the host loop (a
    while loop, the iterator, a call into XLA) with the model's layers out
    of sight in its function library."""
    forward = tf.function(lambda tokens: self.model(tokens, training=False))
    return forward.get_concrete_function(tf.TensorSpec(
        [None, self.config.model.len_max_input], tf.int32,
        name="tokens")).graph

  def trace_counts(self) -> dict[str, int]:
    """How often each compiled function was traced (1 each: static shapes)."""
    names = ["forward", "train_loop", "eval_loop"]
    if self.fused_steps is not None:
      names.append("fused_steps")
    if self.fused_step is not None:
      names.append("fused_step")
    else:
      names.append("forward_backward")
      if self.update is not None:
        names.append("apply_update")
    return {name: getattr(self, name).experimental_get_tracing_count()
            for name in sorted(names)}

  def weights_sha256(self) -> str:
    """sha256 (hex) of the model's weights, this replica's copy: workers of
    one run must agree."""
    digest = hashlib.sha256()
    for weight in self.model.weights:
      digest.update(np.asarray(weight.value).tobytes())
    return digest.hexdigest()

  def learning_rate(self) -> float:
    optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
    return float(optimizer.learning_rate)


def _next_batches(iterator, count: int, after, read=next):
  """`count` steps' input of `iterator` (`read(iterator)` each: a batch, or
  with accumulation K of them) inside a compiled host loop, and the
  seconds their get_next calls took: the host's wait for them (none when
  the pipeline had them ready). The two timestamps are ordered around the
  get_next calls by control dependencies, the first after the tensors
  `after` (the previous step's results: a loop's next iteration may start
  before its last one ends). One pair per XLA call, not per batch: each
  costs about as much as a small step's dispatch."""
  with tf.control_dependencies(tf.nest.flatten(after)):
    start = tf.timestamp()
  with tf.control_dependencies([start]):
    batches = [read(iterator) for _ in range(count)]
  with tf.control_dependencies(tf.nest.flatten(batches,
                                               expand_composites=True)):
    end = tf.timestamp()
  # The step starts after `end`, its inputs passed through identities that
  # wait for it: with one inter-op thread (config.train.inter_op_threads)
  # the executor may otherwise run the step's XLA call before `end`, and the
  # whole step (the first call's compile too) is counted as input wait.
  with tf.control_dependencies([end]):
    batches = tf.nest.map_structure(_identity_on_its_device, batches,
                                    expand_composites=True)
  return batches, end - start


def _identity_on_its_device(tensor):
  with tf.device(tensor.device):
    return tf.identity(tensor)


def moving_average(ema, params, decay: float, updates) -> list[tf.Tensor]:
  """The EMA of the weights after one more optimizer update: each average
  moved to `decay_t` × itself + (1 - `decay_t`) × its new weight, where
  decay_t = min(decay, (1 + updates) / (10 + updates)) and `updates` is the
  number of optimizer updates before this one (tf.train.
  ExponentialMovingAverage's num_updates, Model Garden's dynamic decay): the
  average follows the weights closely early on, when they move most."""
  updates = tf.cast(updates, tf.float32)
  decay_t = tf.minimum(tf.constant(decay, tf.float32),
                       (1.0 + updates) / (10.0 + updates))
  return [average * decay_t + tf.cast(param, average.dtype) * (1.0 - decay_t)
          for average, param in zip(ema, params)]


def has_ema(prefix: str) -> bool:
  """Whether the checkpoint `prefix` holds an EMA of the weights."""
  return any(name.startswith("ema/")
             for name, _ in tf.train.list_variables(prefix))


def _add_results(sums, results, diverged_step):
  """The host loop's sums (loss, correct count, gradient norm, first
  diverged step or -1) with one step's or call's results added: [loss,
  correct, diverged (> 0: it did), gradient norm], summed over replicas;
  diverged_step: the step to record if it diverged and none did before."""
  loss_sum, correct, gradient_norm_sum, first_diverged = sums
  loss, step_correct, diverged, gradient_norm = tf.unstack(results)
  return (loss_sum + loss, correct + tf.cast(step_correct, tf.int64),
          gradient_norm_sum + gradient_norm,
          tf.where((first_diverged < 0) & (diverged > 0), diverged_step,
                   first_diverged))


def _mean_metrics(loss_sum, correct, count) -> dict[str, Any]:
  """Mean loss and accuracy of one operation's sums (None: no examples)."""
  count = int(count)
  if not count:
    return {"loss": None, "accuracy": None, "examples": 0}
  return {"loss": float(loss_sum / count), "accuracy": float(correct / count),
          "examples": count}
