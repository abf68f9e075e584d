"""Cloud TPU config: bfloat16, per-core batches of 128, long host loops.

  python -m trainer.task --config=configs/tpu.py --strategy=tpu --tpu=local \
      --data_dir=gs://BUCKET/arith --model_dir=gs://BUCKET/runs/tpu
  DATA_DIR=gs://BUCKET/arith MODEL_DIR=gs://BUCKET/runs/tpu launch/tpu_vm.sh train

Hardware: sized for a TPU VM with 8 TPU cores (128 examples per
core). Time and result: not run on a TPU here (no TPU on this project's
machine); off a TPU, --strategy=tpu stops at once with one error line.
"""

from trainer.configs import default


def get_config():
  config = default.get_config()
  config.data.num_train_shards = 64  # enough files for every TPU host
  config.data.train_examples_per_shard = 100_000  # 6.4M training examples
  config.data.num_eval_shards = 8  # one per host of a v4-64 or smaller
  config.train.global_batch_size = 1024  # 128 per core on 8 cores (multiple of 8)
  config.train.num_steps = 20_000  # longer run
  config.train.steps_per_loop = 1_000  # keep the TPU busy between host calls
  config.train.learning_rate = 5e-3  # larger batch, larger step
  config.train.eval_every_steps = 5_000  # evaluate less often
  config.train.checkpoint_every_steps = 5_000  # checkpoint less often
  config.train.mixed_precision = "bfloat16"  # TPU-native compute dtype
  # TensorFlow's inter-op pool as it sizes it: one thread was measured on
  # CPUs only (several devices' ops may want to be issued side by side).
  config.train.inter_op_threads = 0
  config.train.jit_compile = False  # TPUStrategy compiles the step itself
  return config
