"""`manifest.json`: what a data set directory holds, and the checks against it.

The generator (`generate`) writes one beside the shards; the input pipeline
checks the shards it is about to read against it; `transfer.verify` compares it
with the files of a data set. The format, as JSON with sorted keys and an
indent of 2 (files already written keep their bytes when rewritten):

  {"format": "masked-attention-trainer/1",
   "vocab": [" ", ":", ...],           # the vocabulary the token ids index
   "splits": {"train": {"num_shards": 8, "num_examples": 80000,
                        "max_input_length": 15,   # over the split's shards
                        "generator": {"seed": 0, "max_value": 100,
                                      "examples_per_shard": 10000,
                                      "num_shards": 8},
                        "shards": [{"file": "train-00000-of-00008.tfrecord",
                                    "num_examples": 10000,
                                    "max_input_length": 15,
                                    "bytes": 1234567,
                                    "crc32c": "base64 of the CRC32C"},
                                   ...]},
              "eval": {...}}}

No TensorFlow at import: only `storage`'s file access imports it.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping, Sequence

from trainer import errors
from trainer.cloud import storage
from trainer.data import schema
from trainer.data import vocab

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "masked-attention-trainer/1"


@dataclasses.dataclass(frozen=True)
class ShardEntry:
  """One shard file as the manifest records it."""
  file: str  # base name, in the manifest's directory
  num_examples: int
  max_input_length: int  # longest defs + ':' + op, in tokens
  num_bytes: int  # "bytes" in the JSON
  crc32c: str  # base64 of the big-endian CRC32C, as GCS reports it

  @classmethod
  def from_json(cls, value: Mapping[str, Any]) -> ShardEntry:
    return cls(file=value["file"], num_examples=value["num_examples"],
               max_input_length=value["max_input_length"],
               num_bytes=value["bytes"], crc32c=value["crc32c"])

  def to_json(self) -> dict[str, Any]:
    return {"file": self.file, "num_examples": self.num_examples,
            "max_input_length": self.max_input_length,
            "bytes": self.num_bytes, "crc32c": self.crc32c}


@dataclasses.dataclass(frozen=True)
class SplitEntry:
  """One split: its shards and the generator parameters that made them."""
  num_shards: int
  num_examples: int
  max_input_length: int
  generator: dict[str, int]  # the parameters that determine the bytes
  shards: tuple[ShardEntry, ...]

  @classmethod
  def of_shards(cls, shards: Sequence[ShardEntry],
                generator: Mapping[str, int]) -> SplitEntry:
    """The entry of a split made of `shards`, in index order."""
    return cls(num_shards=len(shards),
               num_examples=sum(s.num_examples for s in shards),
               max_input_length=max(s.max_input_length for s in shards),
               generator=dict(generator), shards=tuple(shards))

  @classmethod
  def from_json(cls, value: Mapping[str, Any]) -> SplitEntry:
    return cls(num_shards=value["num_shards"],
               num_examples=value["num_examples"],
               max_input_length=value["max_input_length"],
               generator=dict(value["generator"]),
               shards=tuple(ShardEntry.from_json(s) for s in value["shards"]))

  def to_json(self) -> dict[str, Any]:
    return {"num_shards": self.num_shards, "num_examples": self.num_examples,
            "max_input_length": self.max_input_length,
            "generator": dict(self.generator),
            "shards": [s.to_json() for s in self.shards]}


@dataclasses.dataclass(frozen=True)
class Manifest:
  """The contents of one `manifest.json`."""
  vocab: list[str]
  splits: dict[str, SplitEntry]  # by schema.Split.name ("train", "eval")

  @classmethod
  def new(cls) -> Manifest:
    """An empty manifest for this package's vocabulary."""
    return cls(vocab=list(vocab.VOCAB), splits={})

  @classmethod
  def from_json(cls, value: Any, path: str) -> Manifest:
    """Reads the JSON value of the file at `path` (named in errors).

    Raises:
      UserError: another format, or a file missing what the format holds.
    """
    found = value.get("format") if isinstance(value, dict) else None
    if found != MANIFEST_FORMAT:
      raise errors.UserError(
          f"{path} is not a manifest of this package (format {found!r}, "
          f"expected {MANIFEST_FORMAT!r})")
    try:
      return cls(vocab=list(value["vocab"]),
                 splits={name: SplitEntry.from_json(entry)
                         for name, entry in value["splits"].items()})
    except (KeyError, TypeError, AttributeError) as e:
      raise errors.UserError(
          f"{path} is a damaged manifest ({type(e).__name__}: {e}): restore "
          "it or regenerate the data set (python -m trainer.data generate)"
      ) from e

  def to_json(self) -> dict[str, Any]:
    return {"format": MANIFEST_FORMAT, "vocab": list(self.vocab),
            "splits": {name: entry.to_json()
                       for name, entry in self.splits.items()}}


def parse(text: str | bytes, path: str) -> Manifest:
  """The manifest in `text`, the contents of the file at `path`.

  Raises:
    UserError: not JSON, or not a manifest of this package.
  """
  try:
    value = json.loads(text)
  except ValueError as e:
    raise errors.UserError(
        f"{path} is not JSON ({e}): restore it or regenerate the data set "
        "(python -m trainer.data generate)") from e
  return Manifest.from_json(value, path)


def sha256(data_dir: str) -> str | None:
  """The SHA-256 (hex) of the manifest.json in `data_dir`, the data set's
  identity, or None without one."""
  path = storage.join(data_dir, MANIFEST_NAME)
  if not storage.exists(path):
    return None
  return hashlib.sha256(storage.read_bytes(path)).hexdigest()


def read(data_dir: str) -> Manifest | None:
  """Returns the manifest in `data_dir` (local or gs://), or None.

  Raises:
    UserError: a manifest.json that is not one of this package.
  """
  path = storage.join(data_dir, MANIFEST_NAME)
  if not storage.exists(path):
    return None
  return parse(storage.read_bytes(path), path)


def write(data_dir: str, manifest: Manifest) -> None:
  """Writes `manifest` into `data_dir`, atomically (temporary + rename)."""
  storage.write_json_atomic(storage.join(data_dir, MANIFEST_NAME),
                            manifest.to_json())


def record_split(data_dir: str, split: str, entry: SplitEntry) -> Manifest:
  """Sets the entry of `split` in the manifest of `data_dir`; returns it.

  The manifest is read again first: another split may have been generated
  into the same directory meanwhile, and only this split's entry changes.
  """
  current = read(data_dir) or Manifest.new()
  updated = Manifest(vocab=current.vocab,
                     splits={**current.splits, split: entry})
  write(data_dir, updated)
  return updated


def check_files(files: Sequence[str], len_max_input: int,
                whole_split: bool = False) -> None:
  """Checks the manifest beside each file, where there is one.

  Args:
    files: the files to be read.
    len_max_input: the padded input length.
    whole_split: `files` are every file to be read of their splits (not one
      pipeline's share): then every shard the manifest lists for a split
      that `files` touch must also be there, with the recorded size, so a
      stale or half-copied data set is caught before training instead of as
      a short epoch or a parse error.

  Raises:
    UserError: a file whose examples are longer than `len_max_input`, a
      manifest with another vocabulary, or (whole_split) a listed shard that
      is missing or of another size, or a matching file it does not list;
      naming the object and what to do.
  """
  for directory, names in sorted(_by_directory(files).items()):
    manifest = read(directory)
    if manifest is None:
      continue  # e.g. the seed's files: the in-graph guard checks them
    if manifest.vocab != list(vocab.VOCAB):
      raise errors.UserError(
          f"the manifest in {directory} has another vocabulary "
          f"{manifest.vocab}, expected {list(vocab.VOCAB)}")
    every_listed = {shard.file for entry in manifest.splits.values()
                    for shard in entry.shards}
    strangers = sorted(names - every_listed)
    if whole_split and strangers and names & every_listed:
      # Refused, not skipped: the manifest is the data set's identity (its
      # hash is recorded with the run), and `verify` calls such a file a
      # problem; `generate` never leaves one.
      raise errors.UserError(
          f"{storage.join(directory, strangers[0])} matches config.data's "
          f"pattern but {directory}/{MANIFEST_NAME} does not list it"
          + (f" (nor {len(strangers) - 1} other file(s))"
             if len(strangers) > 1 else "")
          + ": a file from another data set or generation would be trained "
          "on; remove it (python -m trainer.data verify lists every such "
          "file) or regenerate the data set")
    for entry in manifest.splits.values():
      listed = {shard.file: shard for shard in entry.shards}
      for name in sorted(names & set(listed)):
        if listed[name].max_input_length > len_max_input:
          raise errors.UserError(
              f"{storage.join(directory, name)} has examples of input length "
              f"{listed[name].max_input_length} (defs + ':' + op), over "
              f"len_max_input={len_max_input}: raise len_max_input or "
              "generate with a smaller max_value")
      if whole_split and names & set(listed):
        _check_split_present(directory, names, listed)


def count_examples(files: Sequence[str]) -> int | None:
  """Examples in `files` as their manifests record them; None when a file
  has no manifest entry (the seed's files, a foreign copy)."""
  counts = example_counts(files)
  return None if counts is None else sum(counts.values())


def example_counts(files: Sequence[str]) -> dict[str, int] | None:
  """{file: examples} as the manifests beside `files` record them; None when
  a file has no manifest entry (the seed's files, a foreign copy)."""
  counts = {}
  for directory, names in _by_directory(files).items():
    manifest = read(directory)
    listed = {} if manifest is None else {
        shard.file: shard.num_examples
        for entry in manifest.splits.values() for shard in entry.shards}
    if not names <= set(listed):
      return None
    counts.update({storage.join(directory, name): listed[name]
                   for name in names})
  return counts


def _by_directory(files: Sequence[str]) -> dict[str, set[str]]:
  """{directory: base names} of `files`."""
  by_dir = collections.defaultdict(set)
  for path in files:
    by_dir[os.path.dirname(path)].add(os.path.basename(path))
  return by_dir


def _check_split_present(directory: str, names: set[str],
                         listed: Mapping[str, ShardEntry]) -> None:
  """Every shard in `listed` exists with its recorded size."""
  for name, shard in sorted(listed.items()):
    path = storage.join(directory, name)
    if name not in names:
      if storage.exists(path):
        continue  # there, but not selected: a deliberate subset
      raise errors.UserError(
          f"{path} is listed in {directory}/{MANIFEST_NAME} but missing: "
          "re-upload the data set (python -m trainer.data upload) or "
          "check it with python -m trainer.data verify")
    size = storage.size(path)
    if size != shard.num_bytes:
      raise errors.UserError(
          f"{path} has {size} bytes but {directory}/{MANIFEST_NAME} says "
          f"{shard.num_bytes}: a partial or foreign copy; re-upload it or "
          "check the data set with python -m trainer.data verify")


@dataclasses.dataclass(frozen=True)
class FileInfo:
  """What a listing says of one file of a data set directory."""
  size: int
  crc32c: str  # as `ShardEntry.crc32c`


def compare(manifest: Manifest, files: Mapping[str, FileInfo],
            data_dir: str) -> tuple[list[str], int]:
  """Compares the shards `manifest` lists with the files of its directory.

  Args:
    manifest: the directory's manifest.
    files: every file of the directory, by base name.
    data_dir: the directory (local or gs://), to name files in the lines.

  Returns:
    One line per problem (empty: everything matches) -- a shard missing, of
    another size or CRC32C, or a shard file of a split that the manifest
    does not list (a glob would read it) -- and the number of shards checked.
  """
  problems = []
  checked = 0
  for split, entry in sorted(manifest.splits.items()):
    listed = set()
    for shard in entry.shards:
      name = shard.file
      listed.add(name)
      checked += 1
      found = files.get(name)
      if found is None:
        problems.append(f"{data_dir}/{name}: missing (manifest: "
                        f"{shard.num_bytes} bytes)")
        continue
      if found.size != shard.num_bytes:
        problems.append(f"{data_dir}/{name}: {found.size} bytes, "
                        f"manifest says {shard.num_bytes}")
      if found.crc32c != shard.crc32c:
        problems.append(f"{data_dir}/{name}: CRC32C {found.crc32c}, "
                        f"manifest says {shard.crc32c} (corrupted "
                        "or from another generation)")
    for name in sorted(files):
      if name.startswith(f"{split}-") and name.endswith(
          schema.SHARD_SUFFIX) and name not in listed:
        problems.append(f"{data_dir}/{name}: a {split} shard the "
                        "manifest does not list (a glob would read it)")
    if len(entry.shards) != entry.num_shards:
      problems.append(f"manifest: split {split} lists {len(entry.shards)} "
                      f"shards but says num_shards={entry.num_shards}")
  return problems, checked
