"""Scaled config: a small model that solves the task on 2 CPU cores, fast.

  python -m trainer.task --config=configs/scaled.py
  python -m trainer.task --config=configs/scaled.py \
      --config.train.target_accuracy=0.99   # stop at the first eval >= 0.99

Hardware: sized and measured on a 2-core CPU (no accelerator, TF 2.21).
Time and result there: 0.99 eval accuracy at step 11,500 in ~2 min (129 s
from process start with the target above on a quiet machine, data generated
beforehand; seed 1: step 12,000, 137 s); without the target the run goes on
to step 14,000.

Residual attention blocks with learned positions on the default data set
(800k training examples): 73,508 parameters. Each choice below was measured
against the recipe before it (docs/measurements.md, "A model that solves
the task": the curve, the search, and the time to 0.99 from
benchmarks/time_to_accuracy.py).
"""

from trainer.configs import default


def get_config():
  config = default.get_config()
  # Width 24, not 32: as accurate per step here (eval 0.9773 vs 0.9754 at
  # step 9,500 of otherwise equal runs; 0.99 at 11,500 vs 12,000) and a
  # step costs 0.77x as much.
  config.model.hidden_size = 24  # embedding and attention width
  config.model.dense_size = 128  # units of the hidden Dense layer
  # One head, not 4: the same weights and about the same accuracy per step
  # (width 32, 12,000 steps: 0.9853 vs 0.9876), but a step costs 0.64x as
  # much on this CPU (XLA runs per-head attention products as tiny ones).
  config.model.num_heads = 1
  config.model.num_layers = 2  # residual blocks
  config.model.ffn_size = 48  # feed-forward width in each block (2x width)
  config.model.position_embeddings = True  # a learned vector per position
  # 250, not 256: 10,000 eval examples are 40 whole batches, so every
  # evaluation covers the whole eval split (256 left 16 out).
  config.train.global_batch_size = 250
  # The schedule is the lever: cosine decay over 14,000 steps down to 0
  # (not 24,000 to 5 %) puts the end-of-decay gain where 0.99 is reached
  # (step 11,500, 1.7 s per 100 steps here).
  config.train.num_steps = 14_000
  config.train.learning_rate = 4e-3  # peak Adam learning rate
  config.train.min_learning_rate_ratio = 0.0  # decay to 0, not to 5 %
  config.train.warmup_steps = 500  # linear warm-up from 0 to the peak
  # Evaluation is on the time-to-accuracy clock: a pass over the 10,000
  # eval examples from memory costs ~0.2 s, so every 500 steps (~2 % of the
  # run) finds the target within 500 steps of reaching it.
  config.train.eval_every_steps = 500
  config.train.checkpoint_every_steps = 4_000
  return config
