"""The input pipeline: a split's files -> batches of static-shape (x, y).

One call per input pipeline and split, from files checked once
(trainer/data/files.py):

  dataset = input_dataset(split_files, per_replica_batch_size,
                          len_max_input=20, training=True, seed=seed, ...)

takes this pipeline's share of the files (`pipeline_files`), then decides
once (`cache_size`) whether it is parsed into memory and served from there
(`fill_cache`, `cached_dataset`: a share with manifest counts that fits
config.data.memory_cache_mb) or streamed from the files (`make_dataset`).

x = defs + [':'] + op, right-padded with 0 to `len_max_input`: int32
[batch, len_max_input]; y = the first token of res: int32 [batch]. Every
batch has the same shape (drop_remainder), so a step compiles once.

`time_batches` times a pipeline as the trainer's host loop reads it (the
`benchmark` command and benchmarks/ use it).
"""

from __future__ import annotations

import dataclasses
import posixpath
import time
from typing import Callable, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from trainer import errors
from trainer.data import files as files_lib
from trainer.data import schema
from trainer.data import vocab

RECORDS_PER_READ = 16
# Records parsed at once when a training share is parsed into memory.
FILL_BATCH = 8192
# Batches read in one call by time_batches grow until a call takes this long.
_TIMED_CALL_S = 0.1


def input_dataset(
    split: files_lib.SplitFiles,
    per_replica_batch_size: int,
    *,
    len_max_input: int,
    training: bool,
    seed: int,
    shuffle_buffer_size: int,
    memory_cache_mb: int,
    skip_batches: int = 0,
    take_batches: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
  """One input pipeline's batches of `split`, from memory or from files.

  Args:
    split: the split's files, listed and checked (files.list_split).
    per_replica_batch_size: examples per batch of this input pipeline.
    len_max_input: the padded input length.
    training: shuffle and repeat forever; otherwise one ordered pass.
    seed: seeds the file shuffle and the example order.
    shuffle_buffer_size: examples in the streamed shuffle buffer.
    memory_cache_mb: config.data.memory_cache_mb (see `cache_size`).
    skip_batches: batches to leave out first (a resumed run's).
    take_batches: stop after this many batches (None: no limit).
    input_context: which input pipeline this is (None: the only one).

  Returns:
    (x int32 [batch, len_max_input], y int32 [batch]).
  Raises:
    DataLossError, InvalidArgumentError: a bad record met filling the cache.
    UserError: the files hold another number of examples than their
      manifests say (filling the cache).
  """
  files = pipeline_files(split.files, training=training, seed=seed,
                         input_context=input_context)
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  num_pipelines = input_context.num_input_pipelines if input_context else 1
  names = [posixpath.basename(f) for f in files]
  name = schema.split_named(split.noun).name
  logging.info(
      f"data: {name} input pipeline {pipeline_id} of {num_pipelines} "
      f"reads {len(files)} file(s): {' '.join(names[:8])}"
      f"{f' (+{len(names) - 8} more)' if len(names) > 8 else ''}")
  which = ("" if num_pipelines == 1 else
           f" (input pipeline {pipeline_id} of {num_pipelines})")
  num_examples, why_not = cache_size(
      split.examples_in(files), per_replica_batch_size,
      training=training, len_max_input=len_max_input,
      memory_cache_mb=memory_cache_mb)
  if num_examples is None:
    logging.info(f"{split.noun} split{which}: streamed from files: "
                 f"{why_not}")
    return make_dataset(
        files, per_replica_batch_size, len_max_input=len_max_input,
        training=training, seed=seed,
        shuffle_buffer_size=shuffle_buffer_size, skip_batches=skip_batches,
        take_batches=take_batches)
  cache = fill_cache(files, num_examples, len_max_input=len_max_input,
                     stream_batch_size=None if training else (
                         per_replica_batch_size))
  logging.info(f"{split.noun} split{which}: {num_examples:,} examples "
               f"cached in memory ({megabytes(cache.num_bytes)} MB) in "
               f"{cache.seconds:.1f} s")
  return cached_dataset(cache, per_replica_batch_size, training=training,
                        seed=seed, skip_batches=skip_batches,
                        take_batches=take_batches)


def pipeline_files(
    files: Sequence[str], *, training: bool, seed: int,
    input_context: tf.distribute.InputContext | None = None) -> list[str]:
  """The files one input pipeline reads: every num_pipelines-th of the list.

  The sorted list is first shuffled with the seed in training (the same
  permutation on every worker), then split, so that pipelines read disjoint
  files and together every file once per pass.

  Raises:
    ValueError: fewer files than input pipelines (files.list_split refuses
      such a split up front, in the user's words).
  """
  files = sorted(files)
  if training:
    files = [str(f) for f in np.random.default_rng(seed).permutation(files)]
  num_pipelines = input_context.num_input_pipelines if input_context else 1
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  if len(files) < num_pipelines:
    raise ValueError(f"{len(files)} file(s) for {num_pipelines} input "
                     "pipelines: each needs at least one")
  return files[pipeline_id::num_pipelines]


# Not converted by autograph (it has no Python control flow to convert):
# tf.data would convert it and every function it calls, the record format's
# included, which cost a default run ~0.3 s of start-up (measured).
@tf.autograph.experimental.do_not_convert
def _parse_batch(serialized: tf.Tensor, batch_size: int | None,
                 len_max_input: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Parses a batch of serialized Examples into (x, y) int32, after
  asserting the format's record checks (their failures carry its marker).
  The batch dimension is `batch_size`, static; None: as many as given."""
  parsed = tf.io.parse_example(serialized, schema.parse_features())
  checks = schema.record_assertions(parsed, len_max_input)
  defs, op, res = (tf.cast(parsed[key], tf.int32)
                   for key in schema.FEATURES)
  rows = tf.shape(serialized)[0] if batch_size is None else batch_size
  separator = tf.RaggedTensor.from_tensor(
      tf.fill([rows, 1], vocab.SEP_ID), row_splits_dtype=tf.int32)
  x = tf.concat([defs, separator, op], axis=1)  # ragged [batch, (length)]
  with tf.control_dependencies(checks):
    x = x.to_tensor(default_value=vocab.PAD_ID,
                    shape=[batch_size, len_max_input])
    y = res.to_tensor(shape=[batch_size, 1])[:, 0]
  return x, y


def make_dataset(
    files: Sequence[str],
    per_replica_batch_size: int,
    *,
    len_max_input: int,
    training: bool,
    seed: int = 0,
    shuffle_buffer_size: int = 16_384,
    cycle_length: int = 8,
    deterministic: bool = True,
    skip_batches: int = 0,
    take_batches: int | None = None,
) -> tf.data.Dataset:
  """Returns a dataset of (x int32 [batch, len_max_input], y int32 [batch]).

  Args:
    files: the files this input pipeline reads, in this order (from
      `pipeline_files`): no glob, no manifest check, no sharding here.
    per_replica_batch_size: examples per batch of this input pipeline.
    len_max_input: the padded input length.
    training: shuffle and repeat forever; otherwise one ordered pass.
    seed: seeds the file shuffle and the example shuffle.
    shuffle_buffer_size: examples in the shuffle buffer (training); they are
      shuffled in groups of RECORDS_PER_READ consecutive records.
    cycle_length: files read in parallel.
    deterministic: keep the order of interleaved reads. Measured here, the
      ordered interleave also reads gs:// about 2x faster in training than
      deterministic=False (~250k vs ~130k examples/s from the emulator),
      and is as fast on local disk, so it is the default.
    skip_batches: batches to drop first (unparsed): a resumed deterministic
      run repositions itself with this.
    take_batches: stop after this many batches (None: no limit).

  Raises:
    TypeError: `files` is one string (a pattern: use files.list_split).
    ValueError: no files, or a batch size that is not positive.
  """
  if isinstance(files, str):
    raise TypeError(f"make_dataset takes a list of files, not {files!r}: "
                    "expand patterns with files.list_split")
  files = list(files)
  if not files:
    raise ValueError("make_dataset needs at least one file")
  if per_replica_batch_size <= 0:
    raise ValueError(f"per_replica_batch_size={per_replica_batch_size} must "
                     "be positive")

  dataset = tf.data.Dataset.from_tensor_slices(files)
  if training:
    # Reshuffle the files each epoch; repeat here so reads stream on across
    # epoch boundaries.
    dataset = dataset.shuffle(len(files), seed=seed,
                              reshuffle_each_iteration=True)
    dataset = dataset.repeat()
  # Files are read in parallel, RECORDS_PER_READ consecutive records at a
  # time: every later per-element cost (interleave hand-off, shuffle) is
  # paid per group, which halves the pipeline's CPU time per example.
  dataset = dataset.interleave(
      lambda path: tf.data.TFRecordDataset(path).batch(RECORDS_PER_READ),
      cycle_length=min(cycle_length, len(files)),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=deterministic)
  if training:
    # Shuffle groups, not records: a shard holds independent random
    # problems, so 16 consecutive records are as random a group as any.
    dataset = dataset.shuffle(
        max(shuffle_buffer_size // RECORDS_PER_READ, 1), seed=seed)
  dataset = dataset.unbatch()
  # Batch before parsing: one vectorized parse per batch. drop_remainder
  # keeps the batch dimension static.
  dataset = dataset.batch(per_replica_batch_size, drop_remainder=True)
  if skip_batches:
    dataset = dataset.skip(skip_batches)  # before parsing: cheaper
  if take_batches is not None:
    dataset = dataset.take(take_batches)
  dataset = dataset.map(
      lambda serialized: _parse_batch(serialized, per_replica_batch_size,
                                      len_max_input),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=deterministic)
  dataset = dataset.prefetch(tf.data.AUTOTUNE)
  # No autotuning thread. Its wait between optimizations doubles up to a
  # minute, and an iterator's destructor waits it out: a run stopped by
  # SIGTERM sat 18-25 s after its last line in 2 of 4 runs (TF 2.21, 2
  # cores, another process busy), still holding its run.lock, so "run the
  # same command to resume" was refused meanwhile; 0 of 4 without it. The
  # parallel steps then use as many calls as cores, prefetch keeps its own
  # buffer tuning, and steady state was the same (0.86x and 0.89x of the
  # compute bound without, 0.85x and 0.82x with; bench_steady_state.py).
  return _no_autotuning(dataset)


def _no_autotuning(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Without tf.data's autotuning thread (why: the end of make_dataset)."""
  options = tf.data.Options()
  options.autotune.enabled = False
  return dataset.with_options(options)


def cached_bytes_per_example(len_max_input: int) -> int:
  """Memory one cached example takes: its token ids as uint8 (every id is
  below vocab.VOCAB_SIZE) and its label."""
  return len_max_input + 1


def cache_size(num_examples: int | None, per_replica_batch_size: int, *,
               training: bool, len_max_input: int,
               memory_cache_mb: int) -> tuple[int | None, str]:
  """Whether one input pipeline's share of a split is served from memory:
  the one place that decides it.

  Args:
    num_examples: the share's examples, from its manifests (None: unknown).
    per_replica_batch_size: examples per batch of this input pipeline.
    training: the training split (all its examples are cached); otherwise
      the one-pass stream's examples, its last partial batch left out.
    len_max_input: the padded input length.
    memory_cache_mb: the bound, in MB (10^6 bytes), per input pipeline and
      split (config.data.memory_cache_mb); 0: never cache.

  Returns:
    (the examples to cache, "") when they fit; else (None, why they are
    streamed from the files instead).
  """
  if memory_cache_mb <= 0:
    return None, "memory_cache_mb=0"
  if num_examples is None:
    return None, ("no example counts: the files have no manifest.json entry "
                  "(seed-format or foreign shards)")
  size = num_examples * cached_bytes_per_example(len_max_input)
  if size > memory_cache_mb * 1e6:
    return None, (f"{megabytes(size)} MB > memory_cache_mb="
                  f"{memory_cache_mb}")
  if not training:  # the streamed pass's examples
    num_examples = num_examples // per_replica_batch_size * (
        per_replica_batch_size)
  return num_examples, ""


def megabytes(num_bytes: int) -> str:
  """MB (10^6 bytes), for a log line: "17", "2", "0.042"."""
  size = num_bytes / 1e6
  return f"{size:,.0f}" if size >= 10 else f"{size:.2g}"


@dataclasses.dataclass(frozen=True)
class CachedExamples:
  """One input pipeline's examples, parsed and checked once.

  Attributes:
    x: uint8 [examples, len_max_input], token ids right-padded with 0.
    y: uint8 [examples], the labels.
    seconds: how long reading and parsing them took.
  """
  x: np.ndarray
  y: np.ndarray
  seconds: float

  @property
  def num_bytes(self) -> int:
    return self.x.nbytes + self.y.nbytes


def fill_cache(files: Sequence[str], num_examples: int, *, len_max_input: int,
               stream_batch_size: int | None = None) -> CachedExamples:
  """Reads and parses `files` once, with the stream's record checks, into
  arrays of exactly `num_examples` rows (allocated up front).

  Args:
    files: one input pipeline's files.
    num_examples: the examples they yield (from their manifests).
    len_max_input: the padded input length.
    stream_batch_size: None: every record, the files read in parallel in
      a fixed interleaved order (training permutes the rows, so its order
      is a function of the files and the seed alone). A batch
      size: the examples of the streamed one-pass pipeline
      (`make_dataset(training=False)`), in its order, its last partial batch
      left out as there (evaluation); `num_examples` must count those.

  Raises:
    DataLossError, InvalidArgumentError: a bad record (as the stream would
      raise them; `verify.describe_data_error` names the file).
    UserError: the files hold another number of examples than expected.
  """
  start = time.perf_counter()
  if stream_batch_size is None:
    dataset = tf.data.Dataset.from_tensor_slices(list(files))
    # Big batches, parsed in parallel: the per-batch cost is paid 100 times
    # per 800k examples, not 6,000 times.
    dataset = dataset.interleave(
        lambda path: tf.data.TFRecordDataset(path).batch(FILL_BATCH),
        cycle_length=min(8, len(files)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.map(
        lambda serialized: _parse_batch(serialized, None, len_max_input),
        num_parallel_calls=tf.data.AUTOTUNE)
    dataset = _no_autotuning(dataset.prefetch(2))
  else:
    dataset = make_dataset(files, stream_batch_size,
                           len_max_input=len_max_input, training=False)
  x = np.empty([num_examples, len_max_input], np.uint8)
  y = np.empty([num_examples], np.uint8)
  filled, more = 0, False
  for batch_x, batch_y in dataset.as_numpy_iterator():
    end = filled + len(batch_y)
    if end > num_examples:
      more = True
      break
    x[filled:end] = batch_x  # ids < VOCAB_SIZE: checked by the parse
    y[filled:end] = batch_y
    filled = end
  if not more and filled == num_examples:
    return CachedExamples(x, y, time.perf_counter() - start)
  directories = " ".join(sorted({posixpath.dirname(f) for f in files}))
  raise errors.UserError(
      f"{len(files)} file(s) in {directories} hold "
      f"{'more' if more else 'fewer'} examples than "
      f"their manifest.json says ({num_examples:,} to read): regenerate "
      "the data (python -m trainer.data generate), or set "
      "--config.data.memory_cache_mb=0 to stream them")


def cached_dataset(cache: CachedExamples, per_replica_batch_size: int, *,
                   training: bool, seed: int = 0, skip_batches: int = 0,
                   take_batches: int | None = None) -> tf.data.Dataset:
  """Returns the batches of make_dataset, (x int32 [batch, len_max_input],
  y int32 [batch]), from memory.

  Training: each epoch is a fresh permutation of all the cached examples,
  drawn from (seed, epoch) alone, cut into batches; the last partial batch
  of each epoch is left out (other examples each epoch). So batch b of a
  run is batch b % per_epoch of epoch b // per_epoch, and skip_batches
  starts there without producing the batches before it. Evaluation: the
  batches in the cache's order (the stream's, see fill_cache).

  Only index batches flow through the pipeline: the arrays enter once, as
  one element repeated, and each batch is one gather (no per-example op).
  """
  num_examples = len(cache.y)
  per_epoch = num_examples // per_replica_batch_size
  if per_epoch == 0:
    raise ValueError(f"{num_examples} cached examples hold no batch of "
                     f"{per_replica_batch_size}")
  used = per_epoch * per_replica_batch_size
  if training:
    first_epoch, offset = divmod(skip_batches, per_epoch)

    def epoch_batches(epoch):
      order = tf.random.experimental.stateless_shuffle(
          tf.range(num_examples, dtype=tf.int32),
          seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
      batches = tf.reshape(order[:used], [per_epoch, per_replica_batch_size])
      return tf.data.Dataset.from_tensor_slices(batches).skip(
          tf.where(epoch == first_epoch, tf.constant(offset, tf.int64),
                   tf.constant(0, tf.int64)))

    indices = tf.data.Dataset.counter(first_epoch).flat_map(epoch_batches)
  else:
    indices = tf.data.Dataset.from_tensor_slices(np.arange(
        used, dtype=np.int32).reshape(per_epoch, per_replica_batch_size))
  if take_batches is not None:
    indices = indices.take(take_batches)
  arrays = tf.data.Dataset.from_tensors((cache.x, cache.y)).repeat()
  dataset = tf.data.Dataset.zip((indices, arrays))
  dataset = dataset.map(lambda index, xy: (
      tf.cast(tf.gather(xy[0], index), tf.int32),
      tf.cast(tf.gather(xy[1], index), tf.int32)))
  return _no_autotuning(dataset.prefetch(tf.data.AUTOTUNE))


class NoBatchError(ValueError):
  """A dataset timed by `time_batches` ends before its first batch."""


def time_batches(
    dataset: tf.data.Dataset, batch_size: int, *,
    num_batches: int | None = None, seconds: float | None = None,
    warm_up_s: float = 0.0,
    report: Callable[[int, float], None] | None = None) -> tuple[int, float]:
  """Times how fast `dataset` yields batches, as the trainer reads them.

  Batches are taken inside one tf.function call of n batches at a time, as
  the trainer's host loop takes them, so no Python runs per batch; n
  doubles while a call takes under 0.1 s. The first batch (opening the
  files, filling the buffers, tracing) and then `warm_up_s` of reading are
  not timed. The timing stops after `num_batches` batches, after
  `seconds`, or at the end of the dataset, whichever comes first (neither
  given: the end, e.g. one evaluation pass).

  Args:
    dataset: the batches to time.
    batch_size: examples per batch.
    num_batches: timed batches at most.
    seconds: timed seconds at least (a call started is finished).
    warm_up_s: untimed reading after the first batch.
    report: called after each timed call with (examples, seconds) so far.

  Returns:
    (examples, seconds) of the timed reading.
  Raises:
    NoBatchError: the dataset holds no batch.
  """
  iterator = iter(dataset)

  @tf.function
  def take(limit):
    taken = tf.constant(0, tf.int64)
    for _ in tf.range(limit):
      if not iterator.get_next_as_optional().has_value():
        break
      taken += 1
    return taken

  def call(limit: int) -> tuple[int, float]:
    start = time.perf_counter()
    taken = int(take(tf.constant(limit, tf.int64)))
    return taken, time.perf_counter() - start

  if call(1)[0] == 0:
    raise NoBatchError("the dataset holds no batch")
  per_call = 1
  start = time.perf_counter()
  while time.perf_counter() - start < warm_up_s:
    taken, call_s = call(per_call)
    if taken < per_call:
      break  # the end, warming up: nothing left to time
    if call_s < _TIMED_CALL_S:
      per_call *= 2
  batches, elapsed = 0, 0.0
  start = time.perf_counter()
  while seconds is None or elapsed < seconds:
    limit = per_call if num_batches is None else min(per_call,
                                                     num_batches - batches)
    if limit <= 0:
      break
    taken, call_s = call(limit)
    batches += taken
    elapsed = time.perf_counter() - start
    if report is not None:
      report(batches * batch_size, elapsed)
    if taken < limit:
      break  # the end of the dataset
    if call_s < _TIMED_CALL_S:
      per_call *= 2
  return batches * batch_size, elapsed
