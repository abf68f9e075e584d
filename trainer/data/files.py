"""A split's files, listed and checked once, before anything reads them.

  split = files.list_split(pattern, "training", len_max_input=20,
                           batching=files.Batching(128, 1, 1))

lists the split (glob, temporary names skipped), checks the entries
(readable directory, non-empty regular files), the manifests beside them
(counts, sizes, input length, vocabulary), and every size rule of a run:
each input pipeline gets at least one file and at least one batch. What it
returns, `SplitFiles`, is all the input pipeline (trainer/data/pipeline.py)
needs: the files and, from the manifests, the examples in each.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import posixpath
import stat
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from trainer import errors
from trainer.cloud import storage
from trainer.data import manifest
from trainer.data import schema

_GENERATE_HINT = (" (generate them with python -m trainer.data generate "
                  "--out_dir=DATA_DIR, or fix --data_dir / config.data)")


@dataclasses.dataclass(frozen=True)
class Batching:
  """How a run reads a split, for its size rules.

  Attributes:
    global_batch_size: config.train.global_batch_size.
    num_replicas: replicas in sync.
    num_pipelines: input pipelines (workers, or TPU hosts).
  """
  global_batch_size: int
  num_replicas: int = 1
  num_pipelines: int = 1

  @property
  def per_replica_batch_size(self) -> int:
    """Examples per batch of one input pipeline."""
    return self.global_batch_size // self.num_replicas


@dataclasses.dataclass(frozen=True)
class SplitFiles:
  """Every file of a split, sorted and checked.

  Attributes:
    noun: the split's noun ("training", "evaluation"), to name in errors.
    pattern: the pattern the files matched, to name in errors.
    files: the files, sorted.
    examples: {file: examples} from the manifests; None when a file has no
      manifest entry (the seed's files, foreign shards).
  """
  noun: str
  pattern: str
  files: list[str]
  examples: Mapping[str, int] | None

  @property
  def num_examples(self) -> int | None:
    """Examples in the whole split, from the manifests (None: unknown)."""
    return None if self.examples is None else sum(self.examples.values())

  def examples_in(self, files: Sequence[str]) -> int | None:
    """Examples in `files` (some of this split's), from the manifests."""
    if self.examples is None:
      return None
    return sum(self.examples[f] for f in files)


def list_split(file_pattern: str | Sequence[str], split: str, *,
               len_max_input: int, batching: Batching | None = None,
               source: str = "--data_dir") -> SplitFiles:
  """Lists a split and checks it, once, before anything is built.

  Args:
    file_pattern: a glob, or a list of globs and paths, local or gs://.
    split: a split's noun ("training", "evaluation"), to name in errors.
    len_max_input: the padded input length the files must fit.
    batching: how the run reads the split: then every input pipeline must
      get a file and a batch (`_check_batches`). None: no size rule (a
      benchmark, a test).
    source: the flag or config field the pattern comes from, to name a
      missing gs:// bucket.

  Returns:
    The split's files (temporary names of an interrupted write skipped) and
    their manifests' example counts.
  Raises:
    UserError: a missing bucket, a pattern matching no file, odd entries,
      files that disagree with their manifest (`manifest.check_files`), or
      a split too small for its input pipelines.
  """
  patterns = [file_pattern] if isinstance(file_pattern, str) else list(
      file_pattern)
  if not patterns:
    raise errors.UserError(f"no {split} shards: no file pattern given"
                           f"{_GENERATE_HINT}")
  found = set()
  for pattern in patterns:
    storage.check_bucket(pattern, source)
    matches = [p for p in storage.glob(pattern) if not storage.is_temp_name(p)]
    if not matches:
      _check_readable_dir(pattern, split)
      raise errors.UserError(f"no {split} shards: no file matches "
                             f"{pattern!r}{_GENERATE_HINT}")
    found.update(matches)
  files = sorted(found)
  _check_local_entries(files, split)
  manifest.check_files(files, len_max_input, whole_split=True)
  listed = SplitFiles(
      noun=split, pattern=", ".join(patterns), files=files,
      examples=manifest.example_counts(files))
  if batching is not None:
    _check_batches(listed, batching)
  return listed


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
  manifest's sizes, or without one the records counted by `_check_batches`,
  cover them.

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


def _check_batches(split: SplitFiles, batching: Batching) -> None:
  """Every size rule of a run, checked up front: each of the input
  pipelines gets at least one file and at least one batch of its share.

  Each input pipeline batches per_replica_batch_size examples of its share
  of the files (pipeline.pipeline_files): a share with fewer yields no
  batch -- in training, whose files repeat, a pipeline that waits forever;
  in evaluation, a pass of 0 examples. Training shares depend on the seed
  (and a resumed run's step), so the rule takes the smallest share any seed
  can give; evaluation shares are fixed (every num_pipelines-th file).

  The counts come from the manifests (nothing else is read). Without them,
  records are counted, up to a batch: with one input pipeline in file
  order (usually the first file alone), with several up to a batch in each
  file, which tells every share's size below a batch exactly.

  Raises:
    UserError: naming the split, its examples and files, the batch and the
      way out. A bad record met counting is left to the step that meets it
      (it names the file).
  """
  files, num_pipelines = split.files, batching.num_pipelines
  per_replica = batching.per_replica_batch_size
  if len(files) < num_pipelines:
    raise errors.UserError(
        f"{split.noun} data: {len(files)} file(s) for {num_pipelines} input "
        "pipelines (one per worker or host): each needs at least one file; "
        f"generate at least {num_pipelines} shards")
  counts = split.examples
  if counts is None and num_pipelines == 1:
    # One pipeline reading every file: read up to one batch (exact below it).
    found = _count_records(files, per_replica)
    if found is None or found >= per_replica:
      return
    _raise_split_too_small(split, batching, found, found, files)
  if counts is None:
    counted = _count_records_per_file(files, per_replica)
    if counted is None:
      return
    share = _smallest_share(split, counted, num_pipelines)
    found = sum(counted[f] for f in share)
    if found < per_replica:  # every file of the share read to its end
      _raise_share_too_small(split, batching, found, share)
    return
  share = _smallest_share(split, counts, num_pipelines)
  if sum(counts[f] for f in share) < per_replica:
    _raise_split_too_small(split, batching, split.num_examples,
                           sum(counts[f] for f in share), share)


def _smallest_share(split: SplitFiles, counts: Mapping[str, int],
                    num_pipelines: int) -> list[str]:
  """The files of the smallest share an input pipeline can get: in
  training (shares drawn with the seed) the fewest examples any
  len // num_pipelines files hold; in evaluation the smallest of the fixed
  shares."""
  if schema.split_named(split.noun) is schema.TRAIN:
    by_size = sorted(split.files, key=lambda f: counts[f])
    return by_size[:len(by_size) // num_pipelines]
  return min((split.files[i::num_pipelines] for i in range(num_pipelines)),
             key=lambda share: sum(counts[f] for f in share))


def _raise_split_too_small(split: SplitFiles, batching: Batching, total: int,
                           smallest: int, share: Sequence[str]) -> None:
  """The split's examples, or its smallest share's, are under a batch."""
  num_pipelines = batching.num_pipelines
  some = ("" if num_pipelines == 1 else
          f" (with {num_pipelines} input pipelines, one reads as few as "
          f"{smallest:,} in {len(share)} file(s))")
  raise errors.UserError(
      f"the {split.noun} split has {total:,} examples in {len(split.files)} "
      f"file(s) ({split.pattern}){some}, fewer than one batch of "
      f"{batching.per_replica_batch_size} "
      "per input pipeline (config.train.global_batch_size="
      f"{batching.global_batch_size} over {batching.num_replicas} "
      "replica(s)): lower --config.train.global_batch_size or generate more "
      f"{schema.split_named(split.noun).name} examples "
      "(python -m trainer.data generate --examples_per_shard=...)")


def _raise_share_too_small(split: SplitFiles, batching: Batching, found: int,
                           share: Sequence[str]) -> None:
  """An input pipeline's share, counted without a manifest, is under a
  batch."""
  names = " ".join(posixpath.basename(f) for f in share[:4]) + (
      f" (+{len(share) - 4} more)" if len(share) > 4 else "")
  directories = " ".join(sorted({posixpath.dirname(f) for f in share}))
  purpose = ("train on" if schema.split_named(split.noun) is schema.TRAIN
             else "evaluate")
  raise errors.UserError(
      f"{len(share)} {split.noun} file(s) of an input pipeline ({names} in "
      f"{directories}) hold {found} example(s), fewer than one batch of "
      f"{batching.per_replica_batch_size} per replica: no batch to "
      f"{purpose}; lower "
      "--config.train.global_batch_size or generate more examples (python "
      "-m trainer.data generate --examples_per_shard=...)")


def _count_records(files: Sequence[str], limit: int) -> int | None:
  """Records in `files`, read in order, counting up to `limit`; None when a
  record is bad (the step that meets it names the file)."""
  dataset = tf.data.TFRecordDataset(list(files)).take(limit)
  try:
    return int(dataset.reduce(np.int64(0), lambda count, _: count + 1))
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
    return None


def _count_records_per_file(files: Sequence[str],
                            limit: int) -> dict[str, int] | None:
  """{file: its records, counted up to `limit`}, the files read in
  parallel; None when a record is bad."""
  dataset = tf.data.Dataset.from_tensor_slices(list(files)).map(
      lambda path: tf.data.TFRecordDataset(path).take(limit).reduce(
          np.int64(0), lambda count, _: count + 1),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  try:
    return dict(zip(files, (int(n) for n in dataset.as_numpy_iterator())))
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
    return None
