"""Default config: the seed blog's model dimensions, sized for a 2-core CPU.

  python -m trainer.task                      # this config, default data set
  python -m trainer.task --config=configs/default.py --config.train.num_steps=8000

Hardware: sized and measured on a 2-core CPU (no accelerator, TF 2.21).
Time and result there: 15,000 steps at batch 128 in ~1 min (70 s from a
fresh cache, data generation included); eval loss 0.472, first-token
accuracy 79.3 % (the seed's model plateaus near 0.80). Every field, its
default and meaning: docs/configuration.md.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the default config; variants import it and change fields."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # seeds initialization, the data order and the data set

  config.data = ml_collections.ConfigDict()
  # Shard globs, relative to --data_dir (or absolute / gs:// URLs).
  config.data.train_files = "train-*-of-*.tfrecord"  # training split
  config.data.eval_files = "eval-*-of-*.tfrecord"  # evaluation split
  config.data.shuffle_buffer_size = 16_384  # examples shuffled per pipeline
  # Parse a split's share once and serve its batches from memory when it
  # fits: at most this many MB (10^6 bytes) per input pipeline and split,
  # len_max_input + 1 bytes per example (800k: 17 MB); needs the manifest's
  # example counts. 0 = always stream from the files.
  config.data.memory_cache_mb = 512
  # The data set generated when --data_dir is not given (user cache dir).
  config.data.num_train_shards = 8  # training shard files
  config.data.train_examples_per_shard = 100_000  # 800k training examples
  config.data.num_eval_shards = 2  # evaluation shard files
  config.data.eval_examples_per_shard = 5_000  # 10k evaluation examples
  config.data.max_value = 100  # operands drawn from (-max_value, max_value)

  config.model = ml_collections.ConfigDict()
  config.model.vocab_size = 20  # tokens in trainer/data/vocab.py (fixed)
  config.model.hidden_size = 15  # embedding and attention width
  config.model.dense_size = 150  # units of the hidden Dense layer
  # Growing the model (these defaults are the seed's model exactly):
  config.model.num_heads = 1  # attention heads; must divide hidden_size
  config.model.num_layers = 1  # attention layers (or blocks), stacked
  # 0: bare attention layers (the seed's); > 0: residual blocks (LayerNorm,
  # attention, then a feed-forward of this width).
  config.model.ffn_size = 0
  config.model.position_embeddings = False  # a learned vector per position
  config.model.dropout = 0.0  # on attention, feed-forward and Dense outputs
  config.model.len_max_input = 20  # padded length of defs + ':' + op

  config.train = ml_collections.ConfigDict()
  config.train.global_batch_size = 128  # examples per step, all replicas
  config.train.num_steps = 15_000  # optimizer steps (~1 min on 2 CPU cores)
  # Gradient accumulation: batches of global_batch_size per optimizer step
  # (an effective batch of this x global_batch_size; 1 = off). Steps, the
  # schedule, checkpoints, resumes and the target count optimizer steps.
  config.train.accumulation_steps = 1
  config.train.steps_per_loop = 200  # steps per host loop (one tf.function call)
  # Steps per XLA call on one replica: the host loop stacks this many batches
  # and runs their steps in one compiled call (1 = a call per step; several
  # replicas and TPUs run a call per step / per host loop whatever this is).
  config.train.steps_per_call = 10
  config.train.learning_rate = 3e-3  # peak Adam learning rate
  config.train.warmup_steps = 300  # linear warm-up from 0 to the peak
  config.train.min_learning_rate_ratio = 0.05  # cosine decay ends at peak * this
  config.train.eval_every_steps = 5_000  # evaluate on the eval split this often
  # No periodic evaluation before this step (the one at num_steps stays):
  # evaluations long before a target are time on its clock; 0 = from the start.
  config.train.eval_start_step = 0
  config.train.eval_steps = 0  # eval batches per evaluation; 0 = one full pass
  # End the run, finished (checkpoint, export, metrics.json), at the first
  # evaluation (needs eval_steps=0) with accuracy >= target_accuracy or loss
  # <= target_loss; set one of them; 0.0 = off (train to num_steps).
  config.train.target_accuracy = 0.0
  config.train.target_loss = 0.0
  config.train.checkpoint_every_steps = 5_000  # save a checkpoint this often
  config.train.keep_checkpoints = 3  # checkpoints kept in model_dir
  # Keep the checkpoint of the best evaluation by this eval metric apart from
  # the rotating ones and export it too: "accuracy" (highest) or "loss"
  # (lowest); "" = off.
  config.train.keep_best = ""
  # A resumed run replays the data order exactly (skips the batches already
  # trained on: costs a re-read of them) instead of drawing a new order.
  config.train.exact_resume = False
  config.train.jit_compile = True  # XLA for each replica step (not on TPU)
  # With jit_compile: Adam's update in XLA too (trainer/training/optimizer.py); False:
  # Keras's apply_gradients outside XLA (the slower path, for comparison).
  config.train.xla_update = True
  config.train.mixed_precision = "float32"  # float32 | bfloat16 | float16
  # Threads of TensorFlow's inter-op pool (0 = its default, one a core): the
  # host loop's ops run in order, so one thread saves the others' spinning.
  config.train.inter_op_threads = 1
  # glibc malloc's top pad in MiB (0 = glibc's own, 128 KiB): a step's
  # buffers stop growing and trimming the heaps every step
  # (trainer/training/runtime.py).
  config.train.malloc_top_pad_mb = 256
  # Exponential moving average of the trainable weights, moved after every
  # optimizer update (decay min(ema_decay, (1 + t) / (10 + t)) at update t),
  # checkpointed, and used for evaluation and export; 0 = off, else in (0, 1).
  config.train.ema_decay = 0.0
  # Collective ops of multi_worker_mirrored: AUTO | RING | NCCL.
  config.train.collective = "AUTO"
  # multi_worker_mirrored: seconds the chief (worker 0) waits for the other
  # workers of TF_CONFIG to start, saying which it waits for, before it
  # gives up (exit status 1); 0 = no limit.
  config.train.startup_timeout_s = 600
  # TensorBoard: weight histograms and the gradient norm every this many
  # steps and at the run's last step (0 = off); a multiple of steps_per_loop
  # adds no host-loop ends.
  config.train.histogram_every_steps = 1_000
  # "START,COUNT": trace the COUNT steps after step START with tf.profiler,
  # into the TensorBoard logs (plugins/profile/); "" = off.
  config.train.profile_steps = ""

  return config
