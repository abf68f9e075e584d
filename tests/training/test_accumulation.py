"""Gradient accumulation (config.train.accumulation_steps): K batches of B
per optimizer step train as one step at K x B.

In process (default strategy, fixed synthetic batches): K = 2 at batch 16
against K = 1 at batch 32 on the same examples, through each path of the
one-replica step -- the fused XLA step, several steps a call and one
(steps_per_call), and Keras's apply_gradients (xla_update=False, as on
TPU) -- the divergence flag, and an exact resume's skip (K batches a step,
on the smoke data).

In real trainer processes (test_equivalence's full-batch data: every step
of either side sees the whole training set, see its docstring): K = 2 at
global batch 32 on the default strategy, Mirrored over 2 CPU devices and 2
MultiWorkerMirrored workers, against K = 1 at global batch 64 on the default
strategy. Measured here (TF 2.21, CPU): every variable of the final
checkpoint (model, Adam's moments, iterations, the step counter) within
2.8e-7 (default), 2.3e-7 (mirrored), 3.7e-7 (2 workers) on the variable's
scale (scaled_difference); the loss of every host loop within 1e-6
relative and the eval accuracy equal. The tolerances are test_equivalence's
FLOAT32 (variables 3e-6, losses 1e-6 relative). Without accumulation,
batch 32 against 64 differs far beyond them (test_equivalence's negative
control), so they tell a wrong step apart. `pytest -s` prints each run's
time and largest difference.
"""

import numpy as np
import pytest
import tensorflow as tf

from configs import smoke
from trainer.training import feeds
from trainer.training import plan
from trainer.training import train

from tests.training.test_equivalence import (  # pylint: disable=unused-import
    _MIRRORED, FLOAT32, NUM_STEPS, Spec, data_dir, runs_once,
    scaled_difference)

BATCH = 16  # the micro-batch of the in-process tests
STEPS = 8


def _batches(seed=0):
  """STEPS x 2 x BATCH model inputs and labels: random tokens, the last 5
  positions padding (the loss and its gradient need no real problems)."""
  rng = np.random.default_rng(seed)
  count = STEPS * 2 * BATCH
  x = rng.integers(1, 20, size=(count, 20)).astype(np.int32)
  x[:, 15:] = 0
  y = rng.integers(0, 20, size=(count,)).astype(np.int32)
  return x, y


def _train(accumulation_steps, x, y, **fields):
  """A Trainer of the smoke config at global batch 2 x BATCH / K, trained
  STEPS steps on x, y in order: (the loop's results, the trainer, its
  weights and optimizer state before training)."""
  config = smoke.get_config()
  config.train.accumulation_steps = accumulation_steps
  config.train.global_batch_size = 2 * BATCH // accumulation_steps
  for name, value in fields.items():
    config.train[name] = value
  strategy = tf.distribute.get_strategy()
  trainer = train.Trainer(config, strategy)
  dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(
      config.train.global_batch_size, drop_remainder=True).repeat()
  iterator = iter(strategy.experimental_distribute_dataset(dataset))
  initial = _values(trainer)
  results = [float(t) for t in trainer.train_loop(iterator,
                                                  tf.constant(STEPS))]
  return results, trainer, initial


def _values(trainer):
  return [np.asarray(v.value) for v in [*trainer.model.weights,
                                        *trainer.optimizer.variables]]


@pytest.mark.parametrize("fields", [
    # The fused XLA step: 2 calls of 3 steps (fused_steps), then 2 single
    # steps (fused_step).
    {"steps_per_call": 3},
    # Keras's apply_gradients after the XLA backward (TPU's path too).
    {"xla_update": False},
], ids=["fused", "apply_gradients"])
def test_two_batches_a_step_train_as_one_step_at_twice_the_batch(fields):
  x, y = _batches()
  (loss, accuracy, diverged), accumulated, initial = _train(2, x, y,
                                                             **fields)
  (reference_loss, reference_accuracy, _), reference, _ = _train(1, x, y,
                                                                 **fields)
  assert diverged == -1
  # Optimizer steps: the counter, Adam's iterations and the schedule.
  assert int(accumulated.step) == int(reference.step) == STEPS
  assert int(accumulated.optimizer.iterations) == STEPS
  assert accumulated.learning_rate() == reference.learning_rate()
  # The loop's mean loss and accuracy are over all K x B examples a step.
  np.testing.assert_allclose(loss, reference_loss, rtol=1e-6)
  assert accuracy == reference_accuracy
  values, reference_values = _values(accumulated), _values(reference)
  assert len(values) == len(reference_values) > 10
  for found, expected in zip(values, reference_values):
    assert scaled_difference(found, expected) <= FLOAT32.variables
  # It trained: the weights moved from the initial ones. (Not one step per
  # batch either: test_equivalence's negative control, batch 32 against
  # 64, differs by ~1e-1.)
  assert max(scaled_difference(v, i) for v, i in zip(values, initial)) > 1e-3
  # Static shapes: each training function traced once (no eval here).
  counts = accumulated.trace_counts()
  del counts["eval_loop"], counts["forward"]
  assert set(counts.values()) == {1}, counts


def test_a_divergence_is_flagged_at_its_optimizer_step():
  # A learning rate so large that the loss turns non-finite a few steps in:
  # flagged at the step counter (optimizer steps) after that step.
  x, y = _batches()
  results, trainer, _ = _train(2, x, y, learning_rate=1e30, warmup_steps=0,
                               steps_per_call=1)
  assert 2 <= int(results[2]) <= STEPS, results  # the first step is finite
  assert int(trainer.step) == STEPS


def test_an_exact_resume_skips_k_batches_a_step(smoke_data):
  # Resumed at optimizer step 3 of K = 2: the pipeline starts at the 7th
  # batch of the uninterrupted order (3 steps x 2 batches read before).
  config = smoke.get_config()
  config.train.accumulation_steps = 2
  config.train.exact_resume = True
  strategy = tf.distribute.get_strategy()
  run_plan = plan.for_strategy(config, strategy, smoke_data)
  whole = feeds.Feeds.of(run_plan, strategy).train_iterator
  batches = [next(whole)[0].numpy() for _ in range(8)]
  resumed = feeds.Feeds.of(run_plan, strategy, start_step=3).train_iterator
  for expected in batches[6:]:
    np.testing.assert_array_equal(next(resumed)[0].numpy(), expected)
  assert not np.array_equal(batches[3], batches[6])


# --- real processes, every strategy ------------------------------------

_ACCUMULATE = (("train.global_batch_size", 32),
               ("train.accumulation_steps", 2))
SPECS = [
    Spec("batch64"),  # K = 1, the whole training set a step
    Spec("accumulated_default", config=_ACCUMULATE),
    Spec("accumulated_mirrored", tuple(_MIRRORED), _ACCUMULATE),
    Spec("accumulated_multi_worker", config=_ACCUMULATE, workers=2),
]


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):  # pylint: disable=redefined-outer-name
  """Every Spec run once (2 processes at a time), shared by the tests."""
  return runs_once(SPECS, data_dir, tmp_path_factory, "accumulation_runs")


@pytest.mark.parametrize("name", ["accumulated_default",
                                  "accumulated_mirrored",
                                  "accumulated_multi_worker"])
def test_every_strategy_accumulates_to_the_step_at_twice_the_batch(runs,
                                                                  name):
  run, reference = runs[name], runs["batch64"]
  losses, reference_losses = run.losses(), reference.losses()
  # Host loops at the same optimizer steps (10, 20, 30).
  assert list(losses) == list(reference_losses) == [10, 20, 30]
  np.testing.assert_allclose(list(losses.values()),
                             list(reference_losses.values()),
                             rtol=FLOAT32.loss_rtol)
  # The final checkpoint is named after optimizer step 30 (Run.variables).
  variables, reference_variables = run.variables(), reference.variables()
  assert sorted(variables) == sorted(reference_variables)
  assert variables["step/.ATTRIBUTES/VARIABLE_VALUE"] == NUM_STEPS
  differences = {key: scaled_difference(variables[key], value)
                 for key, value in reference_variables.items()}
  print(f"\n{name}: max variable difference "
        f"{max(differences.values()):.2g}")
  assert max(differences.values()) <= FLOAT32.variables, differences
  metrics, reference_metrics = run.eval_metrics(), reference.eval_metrics()
  assert metrics["accuracy"] == reference_metrics["accuracy"]
  np.testing.assert_allclose(metrics["loss"], reference_metrics["loss"],
                             rtol=FLOAT32.loss_rtol)
