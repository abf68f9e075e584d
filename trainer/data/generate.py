"""Generating the arithmetic data set as sharded TFRecords, locally or on GCS.

Shards are named `{split}-{index:05d}-of-{count:05d}.tfrecord` and built in
parallel worker processes; the parent writes each one to a temporary name and
renames it, so an interrupted run never leaves a partial shard under a final
name. Generating again skips the shards already there (each is checked byte
for byte against what the spec generates). `manifest.json` beside the shards
(trainer/data/manifest.py) records, per split, the counts, the longest
input, the generator's parameters and every shard's size and CRC32C.

The command line is trainer/data/__main__.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
from typing import Iterator

from absl import logging

from trainer import errors
from trainer import progress
from trainer.cloud import storage
from trainer.data import manifest
from trainer.data import problems
from trainer.data import schema
from trainer.data import shard_worker
from trainer.data import vocab


@dataclasses.dataclass(frozen=True)
class GenerateSpec:
  """Everything that determines the bytes of a split's shards."""
  out_dir: str
  split: str
  num_shards: int
  examples_per_shard: int
  max_value: int
  seed: int

  def validate(self) -> None:
    """Raises UserError naming the first bad argument."""
    if not self.out_dir:
      raise errors.UserError(
          "--out_dir is required (a local directory or gs:// URL)")
    split_flag(self.split)
    for name in ("num_shards", "examples_per_shard"):
      if getattr(self, name) <= 0:
        raise errors.UserError(
            f"--{name}={getattr(self, name)} must be positive")
    if self.max_value < 2:
      raise errors.UserError(
          f"--max_value={self.max_value} must be at least 2 (x and y are "
          "drawn from (-max_value, max_value))")
    if self.seed < 0:
      raise errors.UserError(f"--seed={self.seed} must be non-negative")

  def shard_path(self, index: int) -> str:
    return storage.join(
        self.out_dir,
        schema.shard_name(self.split, index, self.num_shards))

  def generator_params(self) -> dict[str, int]:
    return {"seed": self.seed, "max_value": self.max_value,
            "examples_per_shard": self.examples_per_shard,
            "num_shards": self.num_shards}


def split_flag(value: str) -> schema.Split:
  """The split a --split flag names: by its name only ("train", "eval"),
  the word of the shard files.

  Raises:
    UserError: `value` is no split's name, listing the names.
  """
  names = [split.name for split in schema.SPLITS]
  if value not in names:
    raise errors.UserError(f"--split={value!r} is not a split: use one of "
                           f"{', '.join(names)}")
  return schema.split_named(value)


# Shard names hold 5-digit indices and counts ({index:05d}-of-{count:05d}).
MAX_SHARDS = 99_999
# Memory of a process building a shard, per example of it: the problems as
# Python strings and ints, then the records. Measured (peak RSS of
# problems.build_shard, max_value 100): 583 bytes at 200,000 examples, 553 at
# 1,000,000; with a margin.
BUILD_BYTES_PER_EXAMPLE = 640


def _human(num_bytes: float) -> str:
  for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
    if num_bytes < 1000 or unit == "PB":
      return (f"{num_bytes:,.0f} {unit}" if unit == "bytes" else
              f"{num_bytes:,.1f} {unit}")
    num_bytes /= 1000
  raise AssertionError("unreachable")


def _memory_available() -> int | None:
  """MemAvailable of /proc/meminfo in bytes; None where there is none."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def check_resources(spec: GenerateSpec, num_processes: int) -> None:
  """Refuses, before any work, what the disk or the memory cannot hold.

  The bytes to write are the shards not yet in out_dir times their bound
  (`problems.max_record_bytes` per example: 3-6% over the measured
  average); the memory is BUILD_BYTES_PER_EXAMPLE per example of a shard in
  each of the min(num_processes, num_shards) builders, plus three copies of
  a shard's bytes in the parent (received, unpickled, written). gs:// out
  dirs skip the disk check.

  Raises:
    UserError: naming the figures and the flags to change.
  """
  if spec.num_shards > MAX_SHARDS:
    raise errors.UserError(
        f"--num_shards={spec.num_shards:,} is over {MAX_SHARDS:,} (shard "
        "names hold 5-digit indices): use fewer, larger shards "
        "(--examples_per_shard)")
  shard_bytes = problems.max_record_bytes(spec.max_value) * (
      spec.examples_per_shard)
  builders = min(num_processes, spec.num_shards)
  build_bytes = BUILD_BYTES_PER_EXAMPLE * spec.examples_per_shard
  available = _memory_available()
  if available is not None:
    per_builder = build_bytes + 3 * shard_bytes // builders
    if build_bytes + 3 * shard_bytes > available:
      most = available // (BUILD_BYTES_PER_EXAMPLE + 3 * (
          problems.max_record_bytes(spec.max_value)))
      raise errors.UserError(
          f"--examples_per_shard={spec.examples_per_shard:,} needs about "
          f"{_human(build_bytes + 3 * shard_bytes)} of memory to build one "
          f"shard, and this machine has {_human(available)} available: use "
          f"at most {most:,} examples per shard and more shards "
          "(--num_shards)")
    if builders * per_builder > available:
      fit = max(1, available // per_builder)
      raise errors.UserError(
          f"{builders} processes building shards of "
          f"{spec.examples_per_shard:,} examples need about "
          f"{_human(builders * per_builder)} of memory, and this machine has "
          f"{_human(available)} available: use --num_processes={fit} or "
          "fewer examples per shard (--examples_per_shard)")
  if "://" in spec.out_dir:
    return
  present = sum(os.path.getsize(p) for p in (
      spec.shard_path(i) for i in range(spec.num_shards)) if os.path.isfile(p))
  to_write = max(0, spec.num_shards * shard_bytes - present)
  directory, _ = storage.nearest_existing(spec.out_dir)
  free = shutil.disk_usage(directory).free
  if to_write > free:
    raise errors.UserError(
        f"{spec.split}: {spec.num_shards:,} shards of "
        f"{spec.examples_per_shard:,} examples need up to {_human(to_write)}"
        f" and {directory} has {_human(free)} free: lower --num_shards or "
        "--examples_per_shard, or choose another --out_dir")


def resolve_num_processes(num_processes: int | None) -> int:
  """None -> one per CPU core; raises UserError unless positive."""
  if num_processes is None:
    return os.cpu_count() or 1
  if num_processes <= 0:
    raise errors.UserError(f"--num_processes={num_processes} must be positive")
  return num_processes


def _build_shard(spec: GenerateSpec, index: int) -> problems.Shard:
  return problems.build_shard(spec.seed, spec.split, index,
                              spec.examples_per_shard, spec.max_value)


@contextlib.contextmanager
def _shard_builder(spec: GenerateSpec,
                   num_processes: int) -> Iterator[Iterator[problems.Shard]]:
  """Starts building every shard of the split at once.

  Yields:
    An iterator over the built shards, in completion order. Leaving the
    context ends the workers, with the shards not yet built.
  """
  if num_processes == 1 or spec.num_shards == 1:
    yield (_build_shard(spec, i) for i in range(spec.num_shards))
    return
  # Worker processes of their own (trainer/data/shard_worker.py says why),
  # started with SIGINT ignored (an ignored signal stays ignored across exec,
  # and Python then installs no KeyboardInterrupt handler): a Ctrl-C reaches
  # the whole foreground process group, and only the parent is to answer
  # it, by ending them.
  workers = []
  try:
    with _sigint_ignored():
      for _ in range(min(num_processes, spec.num_shards)):
        workers.append(_start_worker(spec))
    yield _results(spec, workers)
  finally:
    # Done, an error or a signal (KeyboardInterrupt, the command's SIGTERM):
    # the shards being built are not waited for, so no worker outlives this
    # process.
    _end_workers(workers)


def _start_worker(spec: GenerateSpec) -> subprocess.Popen:
  params = {"seed": spec.seed, "split": spec.split,
            "examples_per_shard": spec.examples_per_shard,
            "max_value": spec.max_value}
  # This process's import path, as multiprocessing hands it to its children:
  # a program that put the package on sys.path itself (benchmarks/) has its
  # workers import the same trainer.
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
  return subprocess.Popen(
      [sys.executable, "-m", "trainer.data.shard_worker", json.dumps(params)],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
  """SIGINT ignored in this process meanwhile (and in what it starts)."""
  try:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
  except ValueError:  # not the main thread: its signals are not ours
    yield
    return
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)


def _end_workers(workers: list[subprocess.Popen]) -> None:
  """Ends the workers (each exits at once when its stdin closes between
  shards; terminated while it builds one) and closes their pipes."""
  for worker in workers:
    _send(worker, None)
    if worker.poll() is None:
      worker.terminate()
  for worker in workers:
    try:
      worker.wait(timeout=10)
    except subprocess.TimeoutExpired:
      worker.kill()
      worker.wait()
    worker.stdout.close()


def _send(worker: subprocess.Popen, index: int | None) -> None:
  """Asks `worker` to build shard `index`; None: no more (closes its stdin)."""
  if worker.stdin.closed:
    return
  if index is None:
    worker.stdin.close()
  else:
    worker.stdin.write(b"%d\n" % index)


# Shard indices a worker holds at once: one to build and one to start next,
# so no worker waits for this process between shards.
_QUEUED_PER_WORKER = 2


def _results(spec: GenerateSpec,
             workers: list[subprocess.Popen]) -> Iterator[problems.Shard]:
  """The shards of the split as the workers complete them, each shard index
  handed to the next worker that is free.

  Raises:
    UserError: a worker ended before sending its shards (killed, or out of
      memory: its own error is above on stderr).
  """
  indices = iter(range(spec.num_shards))
  asked = {}  # worker -> the shards asked of it and not yet read

  def ask(worker: subprocess.Popen) -> None:
    index = next(indices, None)
    _send(worker, index)
    asked[worker] += index is not None

  with selectors.DefaultSelector() as selector:
    asked.update((worker, 0) for worker in workers)
    for _ in range(_QUEUED_PER_WORKER):  # round-robin: the lowest first
      for worker in workers:
        ask(worker)
    for worker in workers:
      if asked[worker]:  # (the others end at once: no shard left for them)
        selector.register(worker.stdout, selectors.EVENT_READ, worker)
    while any(asked.values()):
      for key, _ in selector.select():
        worker = key.data
        shard = shard_worker.read_shard(worker.stdout, spec.split)
        if shard is None:
          raise errors.UserError(
              f"a shard worker process (pid {worker.pid}) ended with status "
              f"{worker.wait()} before sending its shards: the complete "
              "shards are kept and the same command resumes", exit_status=1)
        asked[worker] -= 1
        ask(worker)
        if not asked[worker]:  # it ends, at the end of its stdin
          selector.unregister(worker.stdout)
        yield shard


def _check_out_dir(spec: GenerateSpec) -> manifest.Manifest | None:
  """Checks that generating `spec` into out_dir loses and mixes nothing.

  Returns:
    The existing manifest, or None.
  Raises:
    UserError: out_dir is a file; the manifest has another vocabulary or
      another generation of this split; or shards of this split from another
      generation lie there.
  """
  storage.check_bucket(spec.out_dir, "--out_dir")
  if storage.exists(spec.out_dir) and not storage.isdir(spec.out_dir):
    raise errors.UserError(
        f"--out_dir={spec.out_dir} is a file, not a directory")
  if not storage.isdir(spec.out_dir):
    return None
  existing = manifest.read(spec.out_dir)
  if existing is not None:
    if existing.vocab != list(vocab.VOCAB):
      raise errors.UserError(
          f"{storage.join(spec.out_dir, manifest.MANIFEST_NAME)} has "
          "another vocabulary: use another --out_dir")
    entry = existing.splits.get(spec.split)
    if entry is not None and entry.generator != spec.generator_params():
      raise errors.UserError(
          f"{spec.out_dir} already holds split {spec.split!r} generated with "
          f"{entry.generator}, not {spec.generator_params()}: remove those "
          "shards or use another --out_dir")
  expected = {spec.shard_path(i) for i in range(spec.num_shards)}
  strangers = [p for p in storage.glob_in(
      spec.out_dir, schema.shard_glob(spec.split)) if p not in expected]
  if strangers:
    raise errors.UserError(
        f"{spec.out_dir} holds {len(strangers)} {spec.split} shard(s) of "
        f"another generation (e.g. {os.path.basename(strangers[0])}) that a "
        "reader would mix with these: remove them or use another --out_dir")
  return existing


def _is_complete(spec: GenerateSpec,
                 existing: manifest.Manifest | None) -> bool:
  """True when the manifest records this very split and its files exist."""
  entry = existing.splits.get(spec.split) if existing else None
  if entry is None or entry.generator != spec.generator_params():
    return False
  for shard in entry.shards:
    path = storage.join(spec.out_dir, shard.file)
    if not storage.exists(path) or storage.size(path) != shard.num_bytes:
      return False
  return True


def _complete_entry(spec: GenerateSpec) -> manifest.SplitEntry | None:
  """The split's manifest entry when out_dir already holds it whole, else
  None (after the checks of `_check_out_dir`, which raise)."""
  existing = _check_out_dir(spec)
  if not _is_complete(spec, existing):
    return None
  entry = existing.splits[spec.split]
  logging.info(f"{spec.split}: already complete in {spec.out_dir} "
               f"({entry.num_shards} shards, {entry.num_examples:,} "
               "examples)")
  return entry


def _remove_stale_temporaries(spec: GenerateSpec) -> None:
  for path in storage.glob_in(spec.out_dir, f"{spec.split}-*"):
    if storage.is_temp_name(path):
      storage.remove(path)


def generate(spec: GenerateSpec, num_processes: int | None = None,
             show_progress: bool = True) -> manifest.SplitEntry:
  """Writes the shards of one split and updates the manifest.

  Args:
    spec: what to generate and where.
    num_processes: worker processes; default one per CPU core.
    show_progress: draw a progress bar on stderr.

  Returns:
    The manifest entry of the split.
  Raises:
    UserError: a bad argument or an out_dir that disagrees with it (raised
      before anything is written), or an existing shard whose bytes differ
      from what `spec` generates.
  """
  spec.validate()
  num_processes = resolve_num_processes(num_processes)
  check_resources(spec, num_processes)
  # Shards are built in memory while the parent checks out_dir (the first
  # file access imports TensorFlow, which takes seconds); nothing is written
  # before the checks pass.
  with _shard_builder(spec, num_processes) as built_shards:
    complete = _complete_entry(spec)
    if complete:
      return complete
    storage.makedirs(spec.out_dir)
    _remove_stale_temporaries(spec)

    bar = progress.Progress(
        total=spec.num_shards, unit="shards",
        desc=f"generate {spec.split}") if show_progress else None
    records: dict[int, manifest.ShardEntry] = {}
    examples_done = skipped = 0
    for shard in built_shards:
      path = spec.shard_path(shard.index)
      if storage.exists(path):
        if storage.read_bytes(path) != shard.data:
          raise errors.UserError(
              f"{path} exists but differs from the shard these flags "
              "generate: remove it or use another --out_dir")
        skipped += 1
      else:
        storage.write_atomic(path, shard.data)
      records[shard.index] = manifest.ShardEntry(
          file=os.path.basename(path), num_examples=shard.num_examples,
          max_input_length=shard.max_input_length,
          num_bytes=len(shard.data), crc32c=shard.crc32c)
      examples_done += shard.num_examples
      if bar:
        bar.update(1, extra=f"{examples_done:,}/"
                   f"{spec.num_shards * spec.examples_per_shard:,} examples")
    if bar:
      bar.close()

  entry = manifest.SplitEntry.of_shards(
      [records[i] for i in range(spec.num_shards)], spec.generator_params())
  manifest.record_split(spec.out_dir, spec.split, entry)
  logging.info(f"{spec.split}: wrote {spec.num_shards - skipped} shard(s), "
               f"skipped {skipped} already complete; "
               f"{entry.num_examples:,} examples in {spec.out_dir}")
  return entry


def cache_dir() -> str:
  """This package's directory under the user's cache ($XDG_CACHE_HOME)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(base, "masked-attention-trainer")


def ensure_dataset(data_dir: str, data_config, seed: int,
                   num_processes: int | None = None) -> str:
  """Generates the train and eval splits of `data_config` unless present.

  Args:
    data_dir: where the data set lives (local or gs://).
    data_config: a config's `data` section (shard counts, max_value).
    seed: the data set's seed.
    num_processes: worker processes; default one per CPU core.

  Returns:
    data_dir.
  """
  for split, num_shards, per_shard in (
      (schema.TRAIN, data_config.num_train_shards,
       data_config.train_examples_per_shard),
      (schema.EVAL, data_config.num_eval_shards,
       data_config.eval_examples_per_shard)):
    spec = GenerateSpec(data_dir, split.name, num_shards, per_shard,
                        data_config.max_value, seed)
    # Checked first: `generate` starts its worker processes before it checks
    # (to overlap them with TensorFlow's import), which cost a trainer whose
    # data is there 1-3 s of start-up (measured), building shards to discard.
    if _complete_entry(spec) is None:
      generate(spec, num_processes=num_processes)
  return data_dir


def default_data_dir(data_config, seed: int) -> str:
  """The cache directory of the data set a config generates by default."""
  name = (f"seed{seed}-max{data_config.max_value}-"
          f"train{data_config.num_train_shards}x"
          f"{data_config.train_examples_per_shard}-"
          f"eval{data_config.num_eval_shards}x"
          f"{data_config.eval_examples_per_shard}")
  return os.path.join(cache_dir(), "data", name)
