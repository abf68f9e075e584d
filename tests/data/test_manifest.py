"""manifest.json: its format, the checks of shards against it, verify."""

import json
import os
import shutil

import pytest

from trainer import errors
from trainer.data import generate
from trainer.data import manifest
from trainer.data import transfer

from tests.helpers import crc32c_base64


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """Two splits of small shards, generated for real."""
  out_dir = str(tmp_path_factory.mktemp("manifest_data"))
  for split, num_shards in (("train", 3), ("eval", 2)):
    generate.generate(
        generate.GenerateSpec(out_dir, split, num_shards, 40, 100, seed=2),
        num_processes=1, show_progress=False)
  return out_dir


@pytest.fixture
def copy(data_dir, tmp_path):
  target = tmp_path / "copy"
  shutil.copytree(data_dir, target)
  return target


def shard_paths(directory, split):
  return sorted(str(directory / n) for n in os.listdir(directory)
                if n.startswith(f"{split}-"))


def test_rewriting_keeps_the_bytes(data_dir, tmp_path):
  with open(os.path.join(data_dir, manifest.MANIFEST_NAME), "rb") as f:
    written = f.read()
  manifest.write(str(tmp_path), manifest.read(data_dir))
  assert (tmp_path / manifest.MANIFEST_NAME).read_bytes() == written


def test_read_gives_the_recorded_shards(data_dir):
  found = manifest.read(data_dir)
  assert set(found.splits) == {"train", "eval"}
  train = found.splits["train"]
  assert train.num_shards == len(train.shards) == 3
  assert train.num_examples == 120
  first = train.shards[0]
  with open(os.path.join(data_dir, first.file), "rb") as f:
    content = f.read()
  assert first.file == "train-00000-of-00003.tfrecord"
  assert first.num_bytes == len(content)
  assert first.crc32c == crc32c_base64(content)
  assert manifest.read(os.path.dirname(data_dir)) is None


def test_another_format_or_a_damaged_file_is_one_line(tmp_path):
  path = tmp_path / manifest.MANIFEST_NAME
  path.write_text(json.dumps({"format": "other/2"}))
  with pytest.raises(errors.UserError) as error:
    manifest.read(str(tmp_path))
  assert str(error.value) == (
      f"{path} is not a manifest of this package (format 'other/2', "
      "expected 'masked-attention-trainer/1')")
  path.write_text(json.dumps({"format": manifest.MANIFEST_FORMAT}))
  with pytest.raises(errors.UserError, match="is a damaged manifest"):
    manifest.read(str(tmp_path))
  path.write_text("{")
  with pytest.raises(errors.UserError, match="is not JSON"):
    manifest.read(str(tmp_path))


def test_check_files_accepts_the_whole_split_or_a_subset(copy):
  files = shard_paths(copy, "train")
  manifest.check_files(files, 20, whole_split=True)
  manifest.check_files(files[:1], 20, whole_split=True)  # the rest is there


def test_check_files_finds_missing_and_short_shards(copy):
  shard = copy / "train-00001-of-00003.tfrecord"
  shard.write_bytes(shard.read_bytes()[:100])
  with pytest.raises(errors.UserError, match=(
      r"train-00001-of-00003.tfrecord has 100 bytes but .*manifest.json says "
      r"\d+: a partial")):
    manifest.check_files(shard_paths(copy, "train"), 20, whole_split=True)
  manifest.check_files([str(shard)], 20)  # one pipeline's share: no check
  shard.unlink()
  with pytest.raises(errors.UserError, match=(
      r"train-00001-of-00003.tfrecord is listed in .*manifest.json but "
      "missing")):
    manifest.check_files(shard_paths(copy, "train"), 20, whole_split=True)


def test_check_files_another_vocabulary(copy):
  path = copy / manifest.MANIFEST_NAME
  value = json.loads(path.read_text())
  value["vocab"] = value["vocab"][::-1]
  path.write_text(json.dumps(value))
  with pytest.raises(errors.UserError, match="has another vocabulary"):
    manifest.check_files(shard_paths(copy, "eval"), 20)


def test_verify_reports_each_disagreement(copy):
  assert transfer.verify(str(copy)) == ([], 5)
  (copy / "eval-00001-of-00002.tfrecord").write_bytes(b"short")
  (copy / "train-00007-of-00009.tfrecord").write_bytes(b"stray")
  (copy / "train-00002-of-00003.tfrecord").unlink()
  found, checked = transfer.verify(str(copy))
  assert checked == 5
  assert found == [
      f"{copy}/eval-00001-of-00002.tfrecord: 5 bytes, manifest says "
      f"{manifest.read(str(copy)).splits['eval'].shards[1].num_bytes}",
      f"{copy}/eval-00001-of-00002.tfrecord: CRC32C "
      f"{crc32c_base64(b'short')}, manifest says "
      f"{manifest.read(str(copy)).splits['eval'].shards[1].crc32c} "
      "(corrupted or from another generation)",
      f"{copy}/train-00002-of-00003.tfrecord: missing (manifest: "
      f"{manifest.read(str(copy)).splits['train'].shards[2].num_bytes} bytes)",
      f"{copy}/train-00007-of-00009.tfrecord: a train shard the manifest "
      "does not list (a glob would read it)",
  ]


def test_verify_without_a_manifest(tmp_path):
  with pytest.raises(errors.UserError) as error:
    transfer.verify(str(tmp_path))
  assert str(error.value) == (
      f"{tmp_path} has no manifest.json: nothing to verify against (generate "
      "the data with python -m trainer.data generate)")
  assert error.value.exit_status == 1


def test_count_examples_from_the_manifest(copy):
  train, evaluation = shard_paths(copy, "train"), shard_paths(copy, "eval")
  assert manifest.count_examples(train) == 3 * 40
  assert manifest.count_examples(train[:1] + evaluation) == 40 + 2 * 40
  # A file the manifest does not list: the count is unknown.
  foreign = copy / "other.tfrecord"
  shutil.copy(train[0], foreign)
  assert manifest.count_examples([*train, str(foreign)]) is None
  os.remove(copy / manifest.MANIFEST_NAME)
  assert manifest.count_examples(train) is None
