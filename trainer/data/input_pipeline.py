"""The input pipeline: TFRecord shards -> batches of static-shape (x, y).

Files take one path, each step once per split:

  files = list_split_files(pattern, len_max_input, "training")  # glob, check
  share = pipeline_files(files, training=True, seed=seed,
                         input_context=context)  # this pipeline's files
  dataset = make_dataset(share, per_replica_batch_size, ...)  # read them

x = defs + [':'] + op, right-padded with 0 to `len_max_input`: int32
[batch, len_max_input]; y = the first token of res: int32 [batch]. Every
batch has the same shape (drop_remainder), so a step compiles once.

A pipeline whose share fits config.data.memory_cache_mb is parsed once
instead (`fill_cache`, with the same record checks) and every batch then
comes from memory (`cached_dataset`); a share without manifest counts, or
over the bound, streams from the files (`make_dataset`).
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import stat
import time
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from trainer import errors
from trainer.cloud import storage
from trainer.data import schema
from trainer.data import manifest
from trainer.data import vocab

RECORDS_PER_READ = 16
# Records parsed at once when a training share is parsed into memory.
FILL_BATCH = 8192
_GENERATE_HINT = (" (generate them with python -m trainer.data generate "
                  "--out_dir=DATA_DIR, or fix --data_dir / config.data)")


def list_split_files(file_pattern: str | Sequence[str], len_max_input: int,
                     split: str) -> list[str]:
  """Every file of a split, sorted, checked against the manifests beside them.

  Args:
    file_pattern: a glob, or a list of globs and paths, local or gs://.
    len_max_input: the padded input length the files must fit.
    split: a split's noun ("training", "evaluation"), to name in errors.

  Returns:
    The matching files (temporary names of an interrupted write skipped).
  Raises:
    UserError: a pattern matching no file, or files that disagree with
      their manifest (see `manifest.check_files`).
  """
  patterns = [file_pattern] if isinstance(file_pattern, str) else list(
      file_pattern)
  if not patterns:
    raise errors.UserError(f"no {split} shards: no file pattern given"
                           f"{_GENERATE_HINT}")
  files = set()
  for pattern in patterns:
    matches = [p for p in storage.glob(pattern) if not storage.is_temp_name(p)]
    if not matches:
      _check_readable_dir(pattern, split)
      raise errors.UserError(f"no {split} shards: no file matches "
                             f"{pattern!r}{_GENERATE_HINT}")
    files.update(matches)
  files = sorted(files)
  _check_local_entries(files, split)
  manifest.check_files(files, len_max_input, whole_split=True)
  return files


def _check_readable_dir(pattern: str, split: str) -> None:
  """A local pattern matching nothing because its directory cannot be read
  (a glob of an unreadable directory is empty) is said so.

  Raises:
    UserError: naming the directory and the user.
  """
  if storage.bucket_of(pattern) is not None:
    return
  directory = os.path.dirname(pattern) or "."
  try:
    os.listdir(directory)
  except PermissionError:
    import getpass  # pylint: disable=g-import-not-at-top
    raise errors.UserError(
        f"no {split} shards: cannot read {directory} (permission denied for "
        f"user {getpass.getuser()}): fix its permissions or choose another "
        "--data_dir") from None
  except OSError:
    pass  # missing, or a pattern in the directory part: "no file matches"


def _check_local_entries(files: Sequence[str], split: str) -> None:
  """Local matches must be non-empty regular files this process can read
  (both splits, before the first step).

  A directory or a FIFO named like a shard would fail or block the reader,
  and a 0-byte file (a failed write or copy: the generator never writes
  one) holds no example: all of them empty, the training pipeline, which
  repeats its files, would spin forever without a batch. gs:// objects are
  not checked here (a stat each would cost a request per shard); the
  input pipeline's first read (`check_holds_a_batch`) covers them.

  Raises:
    UserError: naming the odd entries, how many, and what to do.
  """
  odd = []  # "path (what)"
  for path in files:
    if storage.bucket_of(path) is not None:
      continue
    try:
      mode = os.stat(path)
    except OSError:
      if os.path.islink(path):  # a link to nothing: the reader names no file
        odd.append(f"{path} (a symbolic link to {os.readlink(path)}, which "
                   "does not exist)")
      continue  # else gone meanwhile: the reader says so
    if stat.S_ISDIR(mode.st_mode):
      odd.append(f"{path} (a directory)")
    elif not stat.S_ISREG(mode.st_mode):
      odd.append(f"{path} (not a regular file)")
    elif mode.st_size == 0:
      odd.append(f"{path} (0 bytes)")
    else:  # opened now, not at the first step or evaluation that reads it
      try:
        with open(path, "rb") as f:
          f.read(1)
      except OSError as e:
        odd.append(f"{path} (unreadable: {e.strerror})")
  if odd:
    shown = ", ".join(odd[:3]) + (
        f" (+{len(odd) - 3} more)" if len(odd) > 3 else "")
    raise errors.UserError(
        f"{len(odd)} of the {len(files)} {split} files are not TFRecord "
        f"shards: {shown}; remove them (a failed write or copy) or narrow "
        "--data_dir / config.data, and regenerate the data if need be "
        "(python -m trainer.data generate)")


def check_split_sizes(files: Mapping[str, Sequence[str]],
                      patterns: Mapping[str, str], global_batch_size: int,
                      num_replicas: int, num_pipelines: int) -> None:
  """Checks up front, from the manifests, that every input pipeline of each
  split gets at least one batch (nothing is read but manifest.json).

  Each of the `num_pipelines` input pipelines batches
  global_batch_size // num_replicas examples of its share of the files
  (`pipeline_files`): a share with fewer yields no batch -- in training,
  whose files repeat, a pipeline that waits forever; in evaluation, a pass
  of 0 examples. Training shares depend on the seed (and a resumed run's
  step), so the check takes the smallest share any seed can give.

  Args:
    files: {split noun: files} ({"training": ..., "evaluation": ...}), from
      `list_split_files`.
    patterns: the same splits' patterns, to name in errors.
    global_batch_size: config.train.global_batch_size.
    num_replicas: replicas in sync.
    num_pipelines: input pipelines (workers, or TPU hosts).
  Raises:
    UserError: naming the split, its examples and files, the batch and the
      way out. Splits without a manifest entry are left to
      `check_holds_a_batch`.
  """
  per_replica = global_batch_size // num_replicas
  for split, split_files in files.items():
    if len(split_files) < num_pipelines:
      continue  # pipeline_files' error
    counts = manifest.example_counts(split_files)
    if counts is not None:
      ordered = [counts[f] for f in sorted(split_files)]
      if schema.split_named(split) is schema.TRAIN:
        share = sorted(ordered)[:len(ordered) // num_pipelines]
      else:  # evaluation shares are fixed: every num_pipelines-th file
        share = min((ordered[i::num_pipelines]
                     for i in range(num_pipelines)), key=sum)
      total, smallest = sum(ordered), sum(share)
    elif num_pipelines == 1:
      # No manifest, one pipeline reading every file: read up to one batch
      # (exact below it).
      total = smallest = _count_records(split_files, per_replica)
      if total is None:
        continue  # a bad record: the step that meets it names the file
    else:
      continue  # left to check_holds_a_batch, per pipeline
    if smallest >= per_replica:
      continue
    some = ("" if num_pipelines == 1 else
            f" (with {num_pipelines} input pipelines, one reads as few as "
            f"{smallest:,} in {len(share)} file(s))")
    raise errors.UserError(
        f"the {split} split has {total:,} examples in {len(split_files)} "
        f"file(s) ({patterns[split]}){some}, fewer than one batch of "
        f"{per_replica} "
        "per input pipeline (config.train.global_batch_size="
        f"{global_batch_size} over {num_replicas} replica(s)): lower "
        "--config.train.global_batch_size or generate more "
        f"{schema.split_named(split).name} examples "
        "(python -m trainer.data generate --examples_per_shard=...)")


def check_holds_a_batch(files: Sequence[str], per_replica_batch_size: int,
                        split: str) -> None:
  """Checks that one input pipeline's files hold at least one batch.

  Where the manifests give the counts, `check_split_sizes` checked them;
  otherwise the first per_replica_batch_size records are read (usually from
  the first file alone). Without this, training files that hold less than a
  batch (0-byte objects on gs://, tiny files) make the repeating training
  pipeline spin forever, and evaluation count 0 examples.

  Args:
    files: the files of one input pipeline (from `pipeline_files`).
    per_replica_batch_size: examples per batch of this input pipeline.
    split: a split's noun ("training", "evaluation"), to name in errors.
  Raises:
    UserError: fewer records than one batch, naming the files.
  """
  if manifest.example_counts(files) is not None:
    return
  found = _count_records(files, per_replica_batch_size)
  if found is None or found >= per_replica_batch_size:
    return
  names = " ".join(posixpath.basename(f) for f in files[:4]) + (
      f" (+{len(files) - 4} more)" if len(files) > 4 else "")
  directories = " ".join(sorted({posixpath.dirname(f) for f in files}))
  raise errors.UserError(
      f"{len(files)} {split} file(s) of an input pipeline ({names} in "
      f"{directories}) hold {found} example(s), fewer than one batch of "
      f"{per_replica_batch_size} per replica: no batch to "
      f"{_purpose(split)}; lower "
      "--config.train.global_batch_size or generate more examples (python "
      "-m trainer.data generate --examples_per_shard=...)")


def _purpose(split: str) -> str:
  """What a batch of the split with noun `split` is for, in a message."""
  return ("train on" if schema.split_named(split) is schema.TRAIN
          else "evaluate")


def _count_records(files: Sequence[str], limit: int) -> int | None:
  """Records in `files`, read in order, counting up to `limit`; None when a
  record is bad (the step that meets it names the file)."""
  dataset = tf.data.TFRecordDataset(list(files)).take(limit)
  try:
    return int(dataset.reduce(np.int64(0), lambda count, _: count + 1))
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
    return None


def pipeline_files(
    files: Sequence[str], *, training: bool, seed: int,
    input_context: tf.distribute.InputContext | None = None) -> list[str]:
  """The files one input pipeline reads: every num_pipelines-th of the list.

  The sorted list is first shuffled with the seed in training (the same
  permutation on every worker), then split, so that pipelines read disjoint
  files and together every file once per pass.

  Raises:
    UserError: fewer files than input pipelines, naming both counts.
  """
  files = sorted(files)
  if training:
    files = [str(f) for f in np.random.default_rng(seed).permutation(files)]
  num_pipelines = input_context.num_input_pipelines if input_context else 1
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  if len(files) < num_pipelines:
    raise errors.UserError(
        f"{len(files)} file(s) for {num_pipelines} input pipelines (one per "
        "worker or host): each needs at least one file; generate at least "
        f"{num_pipelines} shards")
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
    TypeError: `files` is one string (a pattern: use `list_split_files`).
    ValueError: no files, or a batch size that is not positive.
  """
  if isinstance(files, str):
    raise TypeError(f"make_dataset takes a list of files, not {files!r}: "
                    "expand patterns with list_split_files")
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


def cache_size(files: Sequence[str], len_max_input: int,
               memory_cache_mb: int) -> tuple[int | None, str]:
  """Whether one input pipeline's share of a split fits in memory.

  Args:
    files: the pipeline's files (from `pipeline_files`).
    len_max_input: the padded input length.
    memory_cache_mb: the bound, in MB (10^6 bytes), per input pipeline and
      split (config.data.memory_cache_mb); 0: never cache.

  Returns:
    (the examples to cache, "") when they fit; else (None, why they are
    streamed from the files instead).
  """
  if memory_cache_mb <= 0:
    return None, "memory_cache_mb=0"
  num_examples = manifest.count_examples(files)
  if num_examples is None:
    return None, ("no example counts: the files have no manifest.json entry "
                  "(seed-format or foreign shards)")
  size = num_examples * cached_bytes_per_example(len_max_input)
  if size > memory_cache_mb * 1e6:
    return None, (f"{megabytes(size)} MB > memory_cache_mb="
                  f"{memory_cache_mb}")
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
      raise them; `records.describe_data_error` names the file).
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
