r"""Generates the arithmetic data set as sharded TFRecords, locally or on GCS.

  python -m trainer.data generate --out_dir=/tmp/arith --split=train \
      --num_shards=8 --examples_per_shard=10000 --seed=0
  python -m trainer.data generate --out_dir=gs://bucket/arith --split=eval \
      --num_shards=2 --examples_per_shard=5000 --seed=0
  python -m trainer.data upload --src=/tmp/arith --dst=gs://bucket/arith
  python -m trainer.data verify --data_dir=gs://bucket/arith

Shards are named `{split}-{index:05d}-of-{count:05d}.tfrecord` and built in
parallel worker processes; the parent writes each one to a temporary name and
renames it, so an interrupted run never leaves a partial shard under a final
name. Re-running the same command skips the shards already there (each is
checked byte for byte against what the flags generate). `manifest.json`
beside the shards records, per split, the counts, the longest input, the
generator's parameters and every shard's size and CRC32C.

Bad flags print one line `error: ...` and exit with status 2, before anything
is written.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import os
import sys
from typing import Any, Iterator

from absl import app
from absl import flags

from trainer import cli
from trainer import errors
from trainer import problems
from trainer import vocab
# `storage` imports TensorFlow. This module is also imported by the spawned
# generator workers (as their __main__), which need no TensorFlow: import
# `storage` inside the functions that write.

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "masked-attention-trainer/1"
COMMANDS = ("generate", "upload", "verify")

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
      raise errors.UserError("--out_dir is required (a local directory or gs:// URL)")
    if self.split not in problems.SPLITS:
      raise errors.UserError(f"--split={self.split!r} is not a split: use one of "
                      f"{', '.join(problems.SPLITS)}")
    for name in ("num_shards", "examples_per_shard"):
      if getattr(self, name) <= 0:
        raise errors.UserError(f"--{name}={getattr(self, name)} must be positive")
    if self.max_value < 2:
      raise errors.UserError(f"--max_value={self.max_value} must be at least 2 "
                      "(x and y are drawn from (-max_value, max_value))")
    if self.seed < 0:
      raise errors.UserError(f"--seed={self.seed} must be non-negative")

  def shard_path(self, index: int) -> str:
    from trainer import storage
    return storage.join(
        self.out_dir, problems.shard_name(self.split, index, self.num_shards))

  def generator_params(self) -> dict[str, int]:
    return {"seed": self.seed, "max_value": self.max_value,
            "examples_per_shard": self.examples_per_shard,
            "num_shards": self.num_shards}


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
    context cancels the shards not yet started.
  """
  if num_processes == 1 or spec.num_shards == 1:
    yield (_build_shard(spec, i) for i in range(spec.num_shards))
    return
  # spawn, not fork: the parent may have TensorFlow loaded, and forking a
  # process with TensorFlow's threads running is unsafe.
  pool = concurrent.futures.ProcessPoolExecutor(
      max_workers=min(num_processes, spec.num_shards),
      mp_context=multiprocessing.get_context("spawn"))
  try:
    futures = [pool.submit(_build_shard, spec, index)
               for index in range(spec.num_shards)]
    yield (f.result() for f in concurrent.futures.as_completed(futures))
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def read_manifest(data_dir: str) -> dict[str, Any] | None:
  """Returns the manifest in `data_dir`, or None when there is none."""
  from trainer import storage
  path = storage.join(data_dir, MANIFEST_NAME)
  if not storage.exists(path):
    return None
  manifest = storage.read_json(path)
  if manifest.get("format") != MANIFEST_FORMAT:
    raise errors.UserError(f"{path} is not a manifest of this package (format "
                    f"{manifest.get('format')!r}, expected {MANIFEST_FORMAT!r})")
  return manifest


def _check_out_dir(spec: GenerateSpec) -> dict[str, Any] | None:
  """Checks that generating `spec` into out_dir loses and mixes nothing.

  Returns:
    The existing manifest, or None.
  Raises:
    UserError: out_dir is a file; the manifest has another vocabulary or
      another generation of this split; or shards of this split from another
      generation lie there.
  """
  from trainer import storage
  storage.check_bucket(spec.out_dir, "--out_dir")
  if storage.exists(spec.out_dir) and not storage.isdir(spec.out_dir):
    raise errors.UserError(f"--out_dir={spec.out_dir} is a file, not a directory")
  if not storage.isdir(spec.out_dir):
    return None
  manifest = read_manifest(spec.out_dir)
  if manifest is not None:
    if manifest["vocab"] != list(vocab.VOCAB):
      raise errors.UserError(f"{storage.join(spec.out_dir, MANIFEST_NAME)} has "
                      "another vocabulary: use another --out_dir")
    entry = manifest["splits"].get(spec.split)
    if entry is not None and entry["generator"] != spec.generator_params():
      raise errors.UserError(
          f"{spec.out_dir} already holds split {spec.split!r} generated with "
          f"{entry['generator']}, not {spec.generator_params()}: remove those "
          "shards or use another --out_dir")
  expected = {spec.shard_path(i) for i in range(spec.num_shards)}
  pattern = storage.join(spec.out_dir, f"{spec.split}-*-of-*.tfrecord")
  strangers = [p for p in storage.glob(pattern) if p not in expected]
  if strangers:
    raise errors.UserError(
        f"{spec.out_dir} holds {len(strangers)} {spec.split} shard(s) of "
        f"another generation (e.g. {os.path.basename(strangers[0])}) that a "
        "reader would mix with these: remove them or use another --out_dir")
  return manifest


def _is_complete(spec: GenerateSpec, manifest: dict[str, Any] | None) -> bool:
  """True when the manifest records this very split and its files exist."""
  from trainer import storage
  entry = (manifest or {}).get("splits", {}).get(spec.split)
  if entry is None or entry["generator"] != spec.generator_params():
    return False
  for shard in entry["shards"]:
    path = storage.join(spec.out_dir, shard["file"])
    if not storage.exists(path) or storage.size(path) != shard["bytes"]:
      return False
  return True


def _remove_stale_temporaries(spec: GenerateSpec) -> None:
  from trainer import storage
  for path in storage.glob(storage.join(spec.out_dir, f"{spec.split}-*")):
    if storage.is_temp_name(path):
      storage.remove(path)


def generate(spec: GenerateSpec, num_processes: int | None = None,
             show_progress: bool = True) -> dict[str, Any]:
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
  from trainer import progress
  from trainer import storage
  spec.validate()
  num_processes = resolve_num_processes(num_processes)
  # Shards are built in memory while the parent checks out_dir (the first
  # file access imports TensorFlow, which takes seconds); nothing is written
  # before the checks pass.
  with _shard_builder(spec, num_processes) as built_shards:
    manifest = _check_out_dir(spec)
    if _is_complete(spec, manifest):
      entry = manifest["splits"][spec.split]
      print(f"{spec.split}: already complete in {spec.out_dir} "
            f"({entry['num_shards']} shards, {entry['num_examples']:,} "
            "examples)", file=sys.stderr)
      return entry
    storage.makedirs(spec.out_dir)
    _remove_stale_temporaries(spec)

    bar = progress.Progress(
        total=spec.num_shards, unit="shards",
        desc=f"generate {spec.split}") if show_progress else None
    records: dict[int, dict[str, Any]] = {}
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
      records[shard.index] = {
          "file": os.path.basename(path), "num_examples": shard.num_examples,
          "max_input_length": shard.max_input_length,
          "bytes": len(shard.data), "crc32c": shard.crc32c}
      examples_done += shard.num_examples
      if bar:
        bar.update(1, extra=f"{examples_done:,}/"
                   f"{spec.num_shards * spec.examples_per_shard:,} examples")
    if bar:
      bar.close()

  shards = [records[i] for i in range(spec.num_shards)]
  entry = {
      "num_shards": spec.num_shards,
      "num_examples": sum(s["num_examples"] for s in shards),
      "max_input_length": max(s["max_input_length"] for s in shards),
      "generator": spec.generator_params(),
      "shards": shards,
  }
  # Re-read: another split may have been generated into the same directory
  # meanwhile; only this split's entry is replaced.
  manifest = read_manifest(spec.out_dir) or {
      "format": MANIFEST_FORMAT, "vocab": list(vocab.VOCAB), "splits": {}}
  manifest["splits"][spec.split] = entry
  storage.write_json_atomic(storage.join(spec.out_dir, MANIFEST_NAME),
                            manifest)
  print(f"{spec.split}: wrote {spec.num_shards - skipped} shard(s), skipped "
        f"{skipped} already complete; {entry['num_examples']:,} examples in "
        f"{spec.out_dir}", file=sys.stderr)
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

  Returns:
    data_dir.
  """
  for split, num_shards, per_shard in (
      ("train", data_config.num_train_shards,
       data_config.train_examples_per_shard),
      ("eval", data_config.num_eval_shards,
       data_config.eval_examples_per_shard)):
    generate(GenerateSpec(data_dir, split, num_shards, per_shard,
                          data_config.max_value, seed),
             num_processes=num_processes)
  return data_dir


def default_data_dir(data_config, seed: int) -> str:
  """The cache directory of the data set a config generates by default."""
  name = (f"seed{seed}-max{data_config.max_value}-"
          f"train{data_config.num_train_shards}x"
          f"{data_config.train_examples_per_shard}-"
          f"eval{data_config.num_eval_shards}x"
          f"{data_config.eval_examples_per_shard}")
  return os.path.join(cache_dir(), "data", name)


def define_flags() -> None:
  """Defines the command's flags (not at import: trainer.task imports us)."""
  flags.DEFINE_string(
      "out_dir", None, "Directory (local or gs://) for the shards and manifest.")
  flags.DEFINE_string("split", "train", "Split to generate: train|eval.")
  flags.DEFINE_integer("num_shards", 8, "Number of shard files.")
  flags.DEFINE_integer("examples_per_shard", 10_000, "Examples in each shard.")
  flags.DEFINE_integer(
      "max_value", 100, "x and y are drawn from (-max_value, max_value).")
  flags.DEFINE_integer("seed", 0, "Seed of the whole data set.")
  flags.DEFINE_integer(
      "num_processes", None, "Worker processes (default: one per CPU core).")
  flags.DEFINE_string("src", None, "upload: local data set directory.")
  flags.DEFINE_string("dst", None, "upload: gs://bucket/path to upload to.")
  flags.DEFINE_integer("num_threads", 8, "upload: parallel uploads.")
  flags.DEFINE_string("data_dir", None,
                      "verify: data set directory (gs:// or local).")


def _transfer(command: str, flag_values) -> int:
  """upload and verify (google-cloud-storage)."""
  cli.import_tensorflow()
  from trainer import gcs  # pylint: disable=g-import-not-at-top
  if command == "upload":
    for name in ("src", "dst"):
      if not flag_values[name].value:
        raise errors.UserError(f"upload needs --{name}")
    result = gcs.upload(flag_values.src, flag_values.dst,
                        num_threads=flag_values.num_threads)
    print(f"uploaded {len(result.uploaded)} file(s) "
          f"({result.bytes_uploaded:,} bytes), skipped "
          f"{len(result.skipped)} unchanged, to {flag_values.dst}",
          file=sys.stderr)
    return 0
  if not flag_values.data_dir:
    raise errors.UserError("verify needs --data_dir")
  return gcs.print_verify(flag_values.data_dir)


def _generate(flag_values) -> int:
  spec = GenerateSpec(
      out_dir=flag_values.out_dir, split=flag_values.split,
      num_shards=flag_values.num_shards,
      examples_per_shard=flag_values.examples_per_shard,
      max_value=flag_values.max_value, seed=flag_values.seed)
  # Argument errors first, before the slow TensorFlow import.
  spec.validate()
  resolve_num_processes(flag_values.num_processes)
  tf = cli.import_tensorflow()
  try:
    generate(spec, num_processes=flag_values.num_processes)
  except (OSError, tf.errors.OpError) as e:
    # File system errors (permissions, a missing bucket) end in one line too.
    raise errors.UserError(errors.describe_io_error(e), exit_status=1) from e
  return 0


def main(argv: list[str]) -> int:
  command = argv[1] if len(argv) > 1 else None
  try:
    if command not in COMMANDS or len(argv) > 2:
      raise errors.UserError(
          f"usage: python -m trainer.data {{{'|'.join(COMMANDS)}}} [--flags]; "
          f"got {' '.join(argv[1:]) or 'no command'}")
    if command == "generate":
      return _generate(flags.FLAGS)
    return _transfer(command, flags.FLAGS)
  except errors.UserError as e:
    return cli.fail(str(e), status=e.exit_status)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
