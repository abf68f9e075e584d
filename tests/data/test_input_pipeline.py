import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from trainer import errors
from trainer.data import generate
from trainer.data import input_pipeline
from trainer.data import problems
from trainer.data import vocab
from tests.helpers import examples

LEN = 20


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  """4 train shards of 60 examples, generated for real."""
  out_dir = tmp_path_factory.mktemp("shards")
  generate.generate(
      generate.GenerateSpec(str(out_dir), "train", 4, 60, 100, seed=5),
      num_processes=1, show_progress=False)
  return out_dir


def split_files(pattern, len_max_input=LEN):
  return input_pipeline.list_split_files(str(pattern), len_max_input,
                                         "training")


def expected_pairs(seed, split, num_shards, per_shard, max_value=100):
  """Counter of (input text, first result token) the shards hold."""
  pairs = collections.Counter()
  for index in range(num_shards):
    for defs, op, res in problems.generate_problems(
        problems.shard_rng(seed, split, index), per_shard, max_value):
      pairs[(f"{defs}:{op}", res[0])] += 1
  return pairs


def read_pairs(dataset):
  pairs = collections.Counter()
  for x, y in dataset.as_numpy_iterator():
    for row, label in zip(x, y):
      pairs[(vocab.decode(row), vocab.VOCAB[label])] += 1
  return pairs


def write_seed_format(directory, rows):
  """Writes rows in the seed blog's file name, without a manifest."""
  os.makedirs(directory, exist_ok=True)
  return examples.write_examples(
      os.path.join(directory, "shard_0000.tfrecords"), rows)


@pytest.mark.parametrize("training", [True, False])
def test_element_spec_is_static(shards, training):
  dataset = input_pipeline.make_dataset(
      split_files(shards / "train-*"), 16, len_max_input=LEN,
      training=training)
  assert dataset.element_spec == (
      tf.TensorSpec([16, LEN], tf.int32), tf.TensorSpec([16], tf.int32))


@pytest.mark.parametrize("training", [True, False])
def test_no_autotuning_thread_to_wait_for_at_exit(shards, training):
  # tf.data's autotuning thread made a stopped run linger up to 25 s with
  # its run.lock held (see make_dataset): both pipelines run without it.
  dataset = input_pipeline.make_dataset(
      split_files(shards / "train-*"), 16, len_max_input=LEN,
      training=training)
  assert dataset.options().autotune.enabled is False
  assert len(list(dataset.take(3))) == 3


def test_examples_decode_back_to_the_problems(shards):
  dataset = input_pipeline.make_dataset(
      split_files(shards / "train-*"), 20, len_max_input=LEN, training=False)
  x, _ = next(iter(dataset))
  # Right-padded with 0 after defs ':' op.
  for row in x.numpy():
    length = int(np.count_nonzero(row))
    assert (row[length:] == vocab.PAD_ID).all()
    assert list(row).count(vocab.SEP_ID) == 1
  # One eval pass holds exactly the generated problems (240 = 12 batches).
  assert read_pairs(dataset) == expected_pairs(5, "train", 4, 60)


def test_two_pipelines_see_every_example_exactly_once(shards):
  seen = collections.Counter()
  for pipeline_id in range(2):
    context = tf.distribute.InputContext(
        num_input_pipelines=2, input_pipeline_id=pipeline_id,
        num_replicas_in_sync=2)
    files = input_pipeline.pipeline_files(
        split_files(shards / "train-*"), training=False, seed=0,
        input_context=context)
    part = read_pairs(input_pipeline.make_dataset(
        files, 10, len_max_input=LEN, training=False))
    assert sum(part.values()) == 120  # 2 of the 4 files
    seen += part
  assert seen == expected_pairs(5, "train", 4, 60)


def test_training_pipelines_read_disjoint_files(shards):
  files = split_files(shards / "train-*")
  per_file = {}
  for index, path in enumerate(files):
    per_file[path] = read_pairs(input_pipeline.make_dataset(
        [path], 60, len_max_input=LEN, training=False))
  for pipeline_id in range(2):
    context = tf.distribute.InputContext(2, pipeline_id, 2)
    dataset = input_pipeline.make_dataset(
        input_pipeline.pipeline_files(files, training=True, seed=1,
                                      input_context=context),
        30, len_max_input=LEN, training=True, seed=1)
    pairs = read_pairs(dataset.take(8))  # two epochs of its 2 files
    sources = {path for path, held in per_file.items()
               if set(held) & set(pairs)}
    assert len(sources) == 2
    per_file = {p: h for p, h in per_file.items() if p not in sources}
  assert not per_file  # the two pipelines covered all 4 files between them


def test_training_repeats_and_shuffles_with_the_seed(shards):
  def batches(seed):
    dataset = input_pipeline.make_dataset(
        split_files(shards / "train-*"), 32, len_max_input=LEN,
        training=True, seed=seed, deterministic=True)
    return [x for x, _ in dataset.take(20).as_numpy_iterator()]

  first = batches(3)
  assert len(first) == 20  # 640 examples from 240: it repeats
  assert all((a == b).all() for a, b in zip(first, batches(3)))
  assert any((a != b).any() for a, b in zip(first, batches(4)))
  ordered = next(input_pipeline.make_dataset(
      split_files(shards / "train-*"), 32, len_max_input=LEN,
      training=False).as_numpy_iterator())[0]
  assert (first[0] != ordered).any()


def test_reads_the_seed_blogs_files(tmp_path):
  rows = problems.generate_problems(np.random.default_rng(1), 12, 100)
  encoded = [(vocab.encode(d), vocab.encode(o), vocab.encode(r))
             for d, o, r in rows]
  write_seed_format(tmp_path, encoded)
  dataset = input_pipeline.make_dataset(
      split_files(tmp_path / "shard_*.tfrecords"), 4, len_max_input=LEN,
      training=False)
  assert read_pairs(dataset) == collections.Counter(
      (f"{d}:{o}", r[0]) for d, o, r in rows)


def test_manifest_longer_than_len_max_input_is_an_error(shards):
  with pytest.raises(errors.UserError) as error:
    split_files(shards / "train-*", len_max_input=12)
  message = str(error.value)
  assert "input length 15" in message and "len_max_input=12" in message
  assert "train-00000-of-00004.tfrecord" in message


def test_in_graph_guard_for_long_examples_without_manifest(tmp_path):
  long_row = (vocab.encode("x=123456,y=-654321"), vocab.encode("x*y"),
              vocab.encode("1"))
  write_seed_format(tmp_path, [long_row] * 4)
  dataset = input_pipeline.make_dataset(
      split_files(tmp_path / "*.tfrecords"), 4, len_max_input=LEN,
      training=False)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"input length[\s\S]*22[\s\S]*over len_max_input"
                     r"[\s\S]*20"):
    next(iter(dataset))


def test_token_ids_outside_vocabulary_are_an_error(tmp_path):
  write_seed_format(tmp_path, [([3, 5, 25], [3, 7, 4], [11])] * 4)
  dataset = input_pipeline.make_dataset(
      split_files(tmp_path / "*.tfrecords"), 4, len_max_input=LEN,
      training=False)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="outside the vocabulary"):
    next(iter(dataset))


def test_pattern_matching_nothing_names_the_pattern(tmp_path):
  pattern = str(tmp_path / "nothing-*")
  with pytest.raises(errors.UserError) as error:
    input_pipeline.list_split_files(pattern, LEN, "evaluation")
  assert str(error.value) == (
      f"no evaluation shards: no file matches {pattern!r} (generate them "
      "with python -m trainer.data generate --out_dir=DATA_DIR, or fix "
      "--data_dir / config.data)")


def test_fewer_files_than_pipelines_names_both_counts(shards):
  context = tf.distribute.InputContext(num_input_pipelines=8,
                                       input_pipeline_id=0)
  with pytest.raises(errors.UserError, match=r"4 file\(s\) for 8 input "
                     "pipelines"):
    input_pipeline.pipeline_files(split_files(shards / "train-*"),
                                  training=True, seed=0,
                                  input_context=context)


def test_temporary_files_are_never_read(shards, tmp_path):
  # A leftover of an interrupted generator run must not match a glob.
  for name in os.listdir(shards):
    if name.endswith(".tfrecord"):
      (tmp_path / name).write_bytes((shards / name).read_bytes())
  (tmp_path / "train-00000-of-00004.tfrecord.tmp-0a1b").write_bytes(b"junk")
  files = split_files(tmp_path / "train-*")
  assert len(files) == 4 and not any(".tmp-" in f for f in files)


def test_training_workers_read_each_example_once_per_pass(shards):
  # Every example is unique here (4 x 60 generated problems carry distinct
  # ids: their position); count what 2 workers read in one pass of training.
  expected = expected_pairs(5, "train", 4, 60)
  seen = collections.Counter()
  for worker in range(2):
    context = tf.distribute.InputContext(2, worker, 2)
    files = input_pipeline.pipeline_files(
        split_files(shards / "train-*"), training=True, seed=9,
        input_context=context)
    assert len(files) == 2
    # A buffer of one read group: one pass is exactly the first 120 records.
    dataset = input_pipeline.make_dataset(
        files, 12, len_max_input=LEN, training=True, seed=9,
        shuffle_buffer_size=input_pipeline.RECORDS_PER_READ)
    seen += read_pairs(dataset.take(10))
  assert seen == expected


def test_pipeline_files_split_the_same_permutation():
  files = [f"f{i}" for i in range(7)]
  parts = [input_pipeline.pipeline_files(
      files, training=True, seed=3,
      input_context=tf.distribute.InputContext(3, i, 3)) for i in range(3)]
  assert sorted(sum(parts, [])) == files
  assert [len(p) for p in parts] == [3, 2, 2]
  assert input_pipeline.pipeline_files(
      files, training=False, seed=3,
      input_context=tf.distribute.InputContext(3, 0, 3)) == ["f0", "f3", "f6"]
  with pytest.raises(errors.UserError,
                     match=r"2 file\(s\) for 3 input pipelines"):
    input_pipeline.pipeline_files(
        files[:2], training=True, seed=0,
        input_context=tf.distribute.InputContext(3, 0, 3))
