"""GPU config: the default model with larger batches for one or more GPUs.

  python -m trainer.task --config=configs/gpu.py --strategy=mirrored \
      --data_dir=gs://BUCKET/arith --model_dir=gs://BUCKET/runs/gpu
  launch/multi_gpu.sh --config=configs/gpu.py --data_dir=DIR --model_dir=DIR

Hardware: sized for one machine with one or more GPUs (global batch 1,024
split over them). Time and result: not run on a GPU here (no GPU on this
project's machine); its settings are the default's, scaled by batch.
"""

from trainer.configs import default


def get_config():
  config = default.get_config()
  config.data.train_examples_per_shard = 500_000  # 4M training examples
  config.train.global_batch_size = 1024  # split over the GPUs
  config.train.num_steps = 20_000  # longer run
  config.train.steps_per_loop = 500  # fewer host round trips
  config.train.learning_rate = 5e-3  # larger batch, larger step
  config.train.eval_every_steps = 5_000  # evaluate less often
  # TensorFlow's inter-op pool as it sizes it: one thread was measured on
  # CPUs only (several devices' ops may want to be issued side by side).
  config.train.inter_op_threads = 0
  config.train.checkpoint_every_steps = 5_000  # checkpoint less often
  return config
