"""The distributed input of one run: a train iterator and an eval dataset.

A batch's path visits each data module once: the splits are listed and
checked once (trainer/data/files.py: every size rule), then each worker (or
TPU host) builds one input pipeline per split from its share of the files
(trainer/data/pipeline.py, which streams it or serves it from memory); the
seeds and the batch counts to skip or take come from the run's plan.
"""

from __future__ import annotations

import posixpath

import tensorflow as tf

from trainer import errors
from trainer.data import files as files_lib
from trainer.data import manifest
from trainer.data import pipeline
from trainer.data import schema
from trainer.data import verify
from trainer.training import plan as plan_lib


def list_data_files(
    run_plan: plan_lib.RunPlan) -> dict[str, files_lib.SplitFiles]:
  """{"training": split, "evaluation": split}: every file of each split,
  listed once and checked (manifests, and a file and a batch for every
  input pipeline), before anything is built.

  Raises:
    UserError: a missing bucket, no file for a pattern, a manifest that
      disagrees with the files, a split too small for its input pipelines.
  """
  config = run_plan.config
  batching = files_lib.Batching(config.train.global_batch_size,
                                run_plan.num_replicas,
                                run_plan.num_input_pipelines)
  return {split: files_lib.list_split(
              pattern, split, len_max_input=config.model.len_max_input,
              batching=batching, source=run_plan.pattern_sources[split])
          for split, pattern in run_plan.patterns.items()}


def data_identity(
    splits: dict[str, files_lib.SplitFiles]) -> dict[str, str | None]:
  """What a run trains on, recorded in config.json and metrics.json
  ("data.dir", "data.manifest_sha256"): the directory of the training
  files (their common parent) and the SHA-256 of the manifest.json there
  (None without one), so a resume on another data set is said and kept."""
  directories = sorted({posixpath.dirname(f)
                        for f in splits["training"].files})
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
               splits: dict[str, files_lib.SplitFiles], start_step: int):
    self.run_plan = run_plan
    self.strategy = strategy
    self.splits = splits
    self.files = {noun: split.files for noun, split in splits.items()}
    self.start_step = start_step
    self.train_iterator = iter(self._distribute(training=True))
    self._eval_dataset = None
    # What a full eval pass (eval_steps=0) should count, from the manifests.
    self.eval_split_examples = None if run_plan.take_batches else (
        splits["evaluation"].num_examples)

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
    skip_batches = run_plan.skip_batches(self.start_step) if training else 0
    take_batches = None if training else run_plan.take_batches

    def dataset_fn(context: tf.distribute.InputContext):
      # This pipeline's share of the files (disjoint across workers).
      return pipeline.input_dataset(
          self.splits[split.noun], run_plan.per_replica_batch_size,
          len_max_input=config.model.len_max_input, training=training,
          seed=seed, shuffle_buffer_size=config.data.shuffle_buffer_size,
          memory_cache_mb=config.data.memory_cache_mb,
          skip_batches=skip_batches, take_batches=take_batches,
          input_context=context)

    try:
      return self.strategy.distribute_datasets_from_function(dataset_fn)
    except errors.UserError as e:  # the cache's count against the manifest
      raise errors.UserError(f"{split.noun} data: {e}", e.exit_status) from e
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
      raise self.data_error(e, split.noun) from e  # filling the cache
