"""trainer/data/files.py: a split listed and checked once, every size rule
in one place."""

import os
import shutil

import pytest

from trainer import errors
from trainer.data import files as files_lib
from trainer.data import generate
from trainer.data import manifest

from tests.data.conftest import LEN, split_files


def test_manifest_longer_than_len_max_input_is_an_error(shards):
  with pytest.raises(errors.UserError) as error:
    split_files(shards / "train-*", len_max_input=12)
  message = str(error.value)
  assert "input length 15" in message and "len_max_input=12" in message
  assert "train-00000-of-00004.tfrecord" in message


def test_pattern_matching_nothing_names_the_pattern(tmp_path):
  pattern = str(tmp_path / "nothing-*")
  with pytest.raises(errors.UserError) as error:
    files_lib.list_split(pattern, "evaluation", len_max_input=LEN)
  assert str(error.value) == (
      f"no evaluation shards: no file matches {pattern!r} (generate them "
      "with python -m trainer.data generate --out_dir=DATA_DIR, or fix "
      "--data_dir / config.data)")


def test_temporary_files_are_never_read(shards, tmp_path):
  # A leftover of an interrupted generator run must not match a glob.
  for name in os.listdir(shards):
    if name.endswith(".tfrecord"):
      (tmp_path / name).write_bytes((shards / name).read_bytes())
  (tmp_path / "train-00000-of-00004.tfrecord.tmp-0a1b").write_bytes(b"junk")
  files = split_files(tmp_path / "train-*")
  assert len(files) == 4 and not any(".tmp-" in f for f in files)


def test_the_split_carries_its_manifest_counts(shards):
  split = files_lib.list_split(str(shards / "train-*"), "training",
                               len_max_input=LEN)
  assert split.noun == "training" and len(split.files) == 4
  assert split.num_examples == 240
  assert split.examples_in(split.files[:2]) == 120


def test_fewer_files_than_pipelines_names_both_counts(shards):
  with pytest.raises(errors.UserError) as error:
    files_lib.list_split(str(shards / "train-*"), "training",
                         len_max_input=LEN,
                         batching=files_lib.Batching(8, 8, num_pipelines=8))
  assert str(error.value) == (
      "training data: 4 file(s) for 8 input pipelines (one per worker or "
      "host): each needs at least one file; generate at least 8 shards")


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
  """Training shards of 50, 50, 10 and 10 examples, with a manifest."""
  data_dir = tmp_path_factory.mktemp("uneven")
  for index, count in enumerate((50, 50, 10, 10)):
    part = data_dir / f"part{index}"
    generate.generate(generate.GenerateSpec(str(part), "train", 4, count,
                                            100, seed=index),
                      num_processes=1, show_progress=False)
  # One split from 4 data sets: shard i of each (manifests beside them).
  return [str(data_dir / f"part{i}" / f"train-0000{i}-of-00004.tfrecord")
          for i in range(4)]


def test_every_training_share_a_seed_can_give_holds_a_batch(uneven):
  # 2 pipelines: a seed may give one of them the two 10-example files.
  batching = files_lib.Batching(42, 2, num_pipelines=2)  # 21 per replica
  with pytest.raises(errors.UserError) as error:
    files_lib.list_split(uneven, "training", len_max_input=LEN,
                         batching=batching)
  assert "the training split has 120 examples in 4 file(s)" in str(
      error.value)
  assert ("with 2 input pipelines, one reads as few as 20 in 2 file(s)"
          in str(error.value))
  # Batches of 20 per replica fit it.
  files_lib.list_split(uneven, "training", len_max_input=LEN,
                       batching=files_lib.Batching(40, 2, num_pipelines=2))


def test_without_manifests_the_records_are_counted(uneven, tmp_path):
  copies = []
  for path in uneven:
    copy = tmp_path / f"{os.path.basename(os.path.dirname(path))}.tfrecord"
    shutil.copy(path, copy)
    copies.append(str(copy))
  assert not (tmp_path / manifest.MANIFEST_NAME).exists()
  split = files_lib.list_split(copies, "training", len_max_input=LEN)
  assert split.examples is None and split.num_examples is None
  with pytest.raises(errors.UserError) as error:
    files_lib.list_split(copies, "training", len_max_input=LEN,
                         batching=files_lib.Batching(44, 2, num_pipelines=2))
  assert str(error.value) == (
      "2 training file(s) of an input pipeline (part2.tfrecord "
      f"part3.tfrecord in {tmp_path}) hold 20 example(s), fewer than one "
      "batch of 22 per replica: no batch to train on; lower "
      "--config.train.global_batch_size or generate more examples (python "
      "-m trainer.data generate --examples_per_shard=...)")
  files_lib.list_split(copies, "training", len_max_input=LEN,
                       batching=files_lib.Batching(40, 2, num_pipelines=2))
  # One pipeline reads every file: 120 examples against a batch of 121.
  with pytest.raises(errors.UserError, match="the training split has 120 "
                     "examples in 4 file"):
    files_lib.list_split(copies, "training", len_max_input=LEN,
                         batching=files_lib.Batching(121))


def test_evaluation_shares_are_fixed(uneven):
  # Every 2nd file: (50, 10) and (50, 10): 60 examples each.
  batching = files_lib.Batching(120, 2, num_pipelines=2)
  files_lib.list_split(uneven, "evaluation", len_max_input=LEN,
                       batching=batching)
  with pytest.raises(errors.UserError, match="one reads as few as 60"):
    files_lib.list_split(uneven, "evaluation", len_max_input=LEN,
                         batching=files_lib.Batching(122, 2, num_pipelines=2))
