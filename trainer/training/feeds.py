"""The distributed input of one run: a train iterator and an eval dataset.

Each worker (or TPU host) builds one input pipeline per split from its share
of the files (trainer/data/input_pipeline.py); the seeds and the batch
counts to skip or take come from the run's plan. A share that fits
config.data.memory_cache_mb is parsed once into memory and served from
there; the others stream from their files.
"""

from __future__ import annotations

import posixpath

from absl import logging
import tensorflow as tf

from trainer import errors
from trainer.cloud import storage
from trainer.data import schema
from trainer.data import input_pipeline
from trainer.data import manifest
from trainer.data import verify
from trainer.training import plan as plan_lib


def list_data_files(run_plan: plan_lib.RunPlan) -> dict[str, list[str]]:
  """{"training": files, "evaluation": files}: every file of each split,
  listed once and checked against its manifest (counts, sizes, input
  length), before anything is built.

  Raises:
    UserError: a missing bucket, no file for a pattern, a manifest that
      disagrees with the files, a split too small for a batch per input
      pipeline.
  """
  files = {}
  for split, pattern in run_plan.patterns.items():
    storage.check_bucket(pattern, run_plan.pattern_sources[split])
    files[split] = input_pipeline.list_split_files(
        pattern, run_plan.config.model.len_max_input, split)
  input_pipeline.check_split_sizes(
      files, run_plan.patterns, run_plan.config.train.global_batch_size,
      run_plan.num_replicas, run_plan.num_input_pipelines)
  return files


def data_identity(files: dict[str, list[str]]) -> dict[str, str | None]:
  """What a run trains on, recorded in config.json and metrics.json
  ("data.dir", "data.manifest_sha256"): the directory of the training
  files (their common parent) and the SHA-256 of the manifest.json there
  (None without one), so a resume on another data set is said and kept."""
  directories = sorted({posixpath.dirname(f) for f in files["training"]})
  directory = directories[0] if len(directories) == 1 else (
      " ".join(directories))
  digest = manifest.sha256(directories[0]) if len(directories) == 1 else None
  return {"dir": directory, "manifest_sha256": digest}


class Feeds:
  """The train iterator and eval dataset of a run that starts at
  `start_step`.

  A resumed run either replays the exact order (config.train.exact_resume:
  skip the batches already trained on) or draws a new one (seed + step), so
  it does not repeat the first batches after every restart (RunPlan.seed,
  RunPlan.skip_batches).
  """

  def __init__(self, run_plan: plan_lib.RunPlan,
               strategy: tf.distribute.Strategy,
               files: dict[str, list[str]], start_step: int):
    self.run_plan = run_plan
    self.strategy = strategy
    self.files = files
    self.start_step = start_step
    self.train_iterator = iter(self._distribute(training=True))
    self._eval_dataset = None
    # What a full eval pass (eval_steps=0) should count, from the manifests.
    self.eval_split_examples = None if run_plan.take_batches else (
        manifest.count_examples(files["evaluation"]))

  @classmethod
  def of(cls, run_plan: plan_lib.RunPlan, strategy: tf.distribute.Strategy,
         start_step: int = 0) -> Feeds:
    """The feeds of `run_plan`'s data, its files listed and checked here
    (benchmarks and tests; the loop lists them before building anything
    else)."""
    return cls(run_plan, strategy, list_data_files(run_plan), start_step)

  @property
  def eval_dataset(self):
    """The eval dataset, built (its cache filled) at the first evaluation:
    a bad eval record fails that evaluation, as when it streams."""
    if self._eval_dataset is None:
      self._eval_dataset = self._distribute(training=False)
    return self._eval_dataset

  def data_error(self, error: tf.errors.OpError,
                 split: str) -> errors.UserError:
    """The one line for a step that failed on its `split` input: names the
    bad file (trainer/data/verify.py)."""
    return verify.describe_data_error(
        error, self.files[split], self.run_plan.config.model.len_max_input,
        split)

  def _distribute(self, training: bool):
    run_plan = self.run_plan
    config = run_plan.config
    split = schema.TRAIN if training else schema.EVAL
    seed = run_plan.seed(training, self.start_step)

    def dataset_fn(context: tf.distribute.InputContext):
      # This pipeline's share of the files (disjoint across workers).
      files = input_pipeline.pipeline_files(
          self.files[split.noun], training=training, seed=seed,
          input_context=context)
      input_pipeline.check_holds_a_batch(
          files, run_plan.per_replica_batch_size, split.noun)
      names = [posixpath.basename(f) for f in files]
      logging.info(
          f"data: {split.name} input pipeline "
          f"{context.input_pipeline_id} of {context.num_input_pipelines} "
          f"reads {len(files)} file(s): {' '.join(names[:8])}"
          f"{f' (+{len(names) - 8} more)' if len(names) > 8 else ''}")
      skip_batches = (run_plan.skip_batches(self.start_step) if training
                      else 0)
      take_batches = None if training else run_plan.take_batches
      cache = self._fill_cache(files, split, context)
      if cache is not None:
        return input_pipeline.cached_dataset(
            cache, run_plan.per_replica_batch_size, training=training,
            seed=seed, skip_batches=skip_batches, take_batches=take_batches)
      return input_pipeline.make_dataset(
          files, run_plan.per_replica_batch_size,
          len_max_input=config.model.len_max_input, training=training,
          seed=seed, shuffle_buffer_size=config.data.shuffle_buffer_size,
          skip_batches=skip_batches, take_batches=take_batches)

    try:
      return self.strategy.distribute_datasets_from_function(dataset_fn)
    except errors.UserError as e:  # e.g. fewer files than workers
      raise errors.UserError(f"{split.noun} data: {e}", e.exit_status) from e
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
      raise self.data_error(e, split.noun) from e  # filling the cache

  def _fill_cache(self, files: list[str], split: schema.Split,
                  context: tf.distribute.InputContext
                  ) -> input_pipeline.CachedExamples | None:
    """This pipeline's share of `split` parsed into memory, or None (it
    streams); says which in one line."""
    run_plan = self.run_plan
    len_max_input = run_plan.config.model.len_max_input
    per_replica = run_plan.per_replica_batch_size
    training = split is schema.TRAIN
    num_examples, why_not = input_pipeline.cache_size(
        files, len_max_input, run_plan.config.data.memory_cache_mb)
    which = ("" if context.num_input_pipelines == 1 else
             f" (input pipeline {context.input_pipeline_id} of "
             f"{context.num_input_pipelines})")
    if num_examples is not None and not training:
      # The streamed pass's examples: its last partial batch left out.
      num_examples = num_examples // per_replica * per_replica
    if num_examples is not None and num_examples < per_replica:
      num_examples, why_not = None, f"fewer than a batch of {per_replica}"
    if num_examples is None:
      logging.info(f"{split.noun} split{which}: streamed from files: "
                   f"{why_not}")
      return None
    cache = input_pipeline.fill_cache(
        files, num_examples, len_max_input=len_max_input,
        stream_batch_size=None if training else per_replica)
    logging.info(f"{split.noun} split{which}: {num_examples:,} examples "
                 f"cached in memory "
                 f"({input_pipeline.megabytes(cache.num_bytes)} MB) in "
                 f"{cache.seconds:.1f} s")
    return cache
