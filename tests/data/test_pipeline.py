"""trainer/data/pipeline.py: a split's share of files -> static batches
(streamed here; from memory: test_memory_cache.py), and its timer."""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from trainer.data import pipeline
from trainer.data import problems
from trainer.data import vocab
from tests.helpers import examples

from tests.data.conftest import LEN, split_files


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
  dataset = pipeline.make_dataset(
      split_files(shards / "train-*"), 16, len_max_input=LEN,
      training=training)
  assert dataset.element_spec == (
      tf.TensorSpec([16, LEN], tf.int32), tf.TensorSpec([16], tf.int32))


@pytest.mark.parametrize("training", [True, False])
def test_no_autotuning_thread_to_wait_for_at_exit(shards, training):
  # tf.data's autotuning thread made a stopped run linger up to 25 s with
  # its run.lock held (see make_dataset): both pipelines run without it.
  dataset = pipeline.make_dataset(
      split_files(shards / "train-*"), 16, len_max_input=LEN,
      training=training)
  assert dataset.options().autotune.enabled is False
  assert len(list(dataset.take(3))) == 3


def test_examples_decode_back_to_the_problems(shards):
  dataset = pipeline.make_dataset(
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
    files = pipeline.pipeline_files(
        split_files(shards / "train-*"), training=False, seed=0,
        input_context=context)
    part = read_pairs(pipeline.make_dataset(
        files, 10, len_max_input=LEN, training=False))
    assert sum(part.values()) == 120  # 2 of the 4 files
    seen += part
  assert seen == expected_pairs(5, "train", 4, 60)


def test_training_pipelines_read_disjoint_files(shards):
  files = split_files(shards / "train-*")
  per_file = {}
  for index, path in enumerate(files):
    per_file[path] = read_pairs(pipeline.make_dataset(
        [path], 60, len_max_input=LEN, training=False))
  for pipeline_id in range(2):
    context = tf.distribute.InputContext(2, pipeline_id, 2)
    dataset = pipeline.make_dataset(
        pipeline.pipeline_files(files, training=True, seed=1,
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
    dataset = pipeline.make_dataset(
        split_files(shards / "train-*"), 32, len_max_input=LEN,
        training=True, seed=seed, deterministic=True)
    return [x for x, _ in dataset.take(20).as_numpy_iterator()]

  first = batches(3)
  assert len(first) == 20  # 640 examples from 240: it repeats
  assert all((a == b).all() for a, b in zip(first, batches(3)))
  assert any((a != b).any() for a, b in zip(first, batches(4)))
  ordered = next(pipeline.make_dataset(
      split_files(shards / "train-*"), 32, len_max_input=LEN,
      training=False).as_numpy_iterator())[0]
  assert (first[0] != ordered).any()


def test_reads_the_seed_blogs_files(tmp_path):
  rows = problems.generate_problems(np.random.default_rng(1), 12, 100)
  encoded = [(vocab.encode(d), vocab.encode(o), vocab.encode(r))
             for d, o, r in rows]
  write_seed_format(tmp_path, encoded)
  dataset = pipeline.make_dataset(
      split_files(tmp_path / "shard_*.tfrecords"), 4, len_max_input=LEN,
      training=False)
  assert read_pairs(dataset) == collections.Counter(
      (f"{d}:{o}", r[0]) for d, o, r in rows)


def test_in_graph_guard_for_long_examples_without_manifest(tmp_path):
  long_row = (vocab.encode("x=123456,y=-654321"), vocab.encode("x*y"),
              vocab.encode("1"))
  write_seed_format(tmp_path, [long_row] * 4)
  dataset = pipeline.make_dataset(
      split_files(tmp_path / "*.tfrecords"), 4, len_max_input=LEN,
      training=False)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"input length[\s\S]*22[\s\S]*over len_max_input"
                     r"[\s\S]*20"):
    next(iter(dataset))


def test_token_ids_outside_vocabulary_are_an_error(tmp_path):
  write_seed_format(tmp_path, [([3, 5, 25], [3, 7, 4], [11])] * 4)
  dataset = pipeline.make_dataset(
      split_files(tmp_path / "*.tfrecords"), 4, len_max_input=LEN,
      training=False)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="outside the vocabulary"):
    next(iter(dataset))


def test_training_workers_read_each_example_once_per_pass(shards):
  # Every example is unique here (4 x 60 generated problems carry distinct
  # ids: their position); count what 2 workers read in one pass of training.
  expected = expected_pairs(5, "train", 4, 60)
  seen = collections.Counter()
  for worker in range(2):
    context = tf.distribute.InputContext(2, worker, 2)
    files = pipeline.pipeline_files(
        split_files(shards / "train-*"), training=True, seed=9,
        input_context=context)
    assert len(files) == 2
    # A buffer of one read group: one pass is exactly the first 120 records.
    dataset = pipeline.make_dataset(
        files, 12, len_max_input=LEN, training=True, seed=9,
        shuffle_buffer_size=pipeline.RECORDS_PER_READ)
    seen += read_pairs(dataset.take(10))
  assert seen == expected


def test_pipeline_files_split_the_same_permutation():
  files = [f"f{i}" for i in range(7)]
  parts = [pipeline.pipeline_files(
      files, training=True, seed=3,
      input_context=tf.distribute.InputContext(3, i, 3)) for i in range(3)]
  assert sorted(sum(parts, [])) == files
  assert [len(p) for p in parts] == [3, 2, 2]
  assert pipeline.pipeline_files(
      files, training=False, seed=3,
      input_context=tf.distribute.InputContext(3, 0, 3)) == ["f0", "f3", "f6"]
  # files.list_split refuses such a split in the user's words; here it is
  # a caller's mistake.
  with pytest.raises(ValueError, match=r"2 file\(s\) for 3 input pipelines"):
    pipeline.pipeline_files(
        files[:2], training=True, seed=0,
        input_context=tf.distribute.InputContext(3, 0, 3))



# --- time_batches: the one pipeline timer -----------------------------------


def counting_dataset(num_batches, batch_size=4):
  return tf.data.Dataset.range(num_batches * batch_size).batch(
      batch_size, drop_remainder=True)


def test_time_batches_times_the_batches_after_the_first():
  # 51 batches: the first one is not timed, 50 are (take(n), not n + 1).
  examples, seconds = pipeline.time_batches(counting_dataset(51), 4,
                                            num_batches=50)
  assert examples == 50 * 4 and seconds > 0


def test_time_batches_stops_at_the_end_of_a_pass():
  reported = []
  examples, _ = pipeline.time_batches(
      counting_dataset(40), 4, report=lambda n, s: reported.append(n))
  assert examples == 39 * 4
  assert reported[-1] == examples and reported == sorted(reported)
  # Calls grow: fewer reports than batches.
  assert len(reported) < 39


def test_time_batches_for_a_time_repeats_and_warms_up():
  examples, seconds = pipeline.time_batches(
      counting_dataset(8).repeat(), 4, seconds=0.3, warm_up_s=0.1)
  assert seconds >= 0.3 and examples > 0 and examples % 4 == 0


def test_time_batches_of_no_batch_is_an_error():
  with pytest.raises(pipeline.NoBatchError):
    pipeline.time_batches(counting_dataset(0), 4, num_batches=5)
