"""Smoke config: a tiny model and run for tests and quick checks.

  python -m trainer.task --config=configs/smoke.py --data_dir=DIR --model_dir=DIR

Hardware: any CPU; the tests run it on a 2-core CPU. 40 steps of a tiny
model: a check that everything runs end to end, not a model (not timed on
its own; its accuracy means nothing).
"""

from trainer.configs import default


def get_config():
  config = default.get_config()
  config.data.shuffle_buffer_size = 256  # small data, small buffer
  config.data.num_train_shards = 4  # enough for 4 input pipelines
  config.data.train_examples_per_shard = 500  # 2,000 training examples
  config.data.num_eval_shards = 2  # one per pipeline of a 2-worker run
  config.data.eval_examples_per_shard = 128  # 256 evaluation examples
  config.model.hidden_size = 8  # tiny model
  config.model.dense_size = 16  # tiny model
  config.train.global_batch_size = 16  # small steps
  config.train.num_steps = 40  # a few loops
  config.train.steps_per_loop = 10  # several host loops per run
  config.train.warmup_steps = 5  # short warm-up
  config.train.eval_every_steps = 20  # evaluate mid-run and at the end
  config.train.checkpoint_every_steps = 20  # checkpoint mid-run and at the end
  config.train.eval_steps = 4  # 4 eval batches
  return config
