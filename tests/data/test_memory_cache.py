"""A split's share parsed once into memory (config.data.memory_cache_mb):
the same examples as the stream, a fresh order each epoch, exact resume,
the fallback to the files, and bad records still named by file."""

import collections
import logging
import re
import shutil
import struct

import numpy as np
import pytest
import tensorflow as tf

from configs import smoke
from trainer import errors
from trainer.data import files as files_lib
from trainer.data import manifest
from trainer.data import pipeline
from trainer.data import vocab
from trainer.training import feeds
from trainer.training import plan
from trainer.training import strategy as strategy_lib

LEN = 20


@pytest.fixture(scope="module")
def train_files(smoke_data):
  """The smoke data's 4 training shards of 500 examples."""
  return files_lib.list_split(f"{smoke_data}/train-*.tfrecord", "training",
                              len_max_input=LEN).files


@pytest.fixture(scope="module")
def cache(train_files):
  return pipeline.fill_cache(train_files, 2_000, len_max_input=LEN)


def rows(x, y):
  """(input text, label) of each example of arrays x, y."""
  return [(vocab.decode(row), int(label)) for row, label in zip(x, y)]


def batches(dataset, count):
  return list(dataset.take(count).as_numpy_iterator())


def epoch_rows(dataset_batches):
  return [r for x, y in dataset_batches for r in rows(x, y)]


def test_cache_holds_the_streamed_examples_as_uint8(cache, train_files):
  assert cache.x.dtype == cache.y.dtype == np.uint8
  assert cache.x.shape == (2_000, LEN) and cache.num_bytes == 2_000 * 21
  streamed = pipeline.make_dataset(train_files, 100, len_max_input=LEN,
                                   training=False)
  assert collections.Counter(rows(cache.x, cache.y)) == collections.Counter(
      epoch_rows(streamed.as_numpy_iterator()))


def test_each_epoch_is_a_new_permutation_of_every_example(cache):
  dataset = pipeline.cached_dataset(cache, 16, training=True, seed=3)
  assert dataset.element_spec == (tf.TensorSpec([16, LEN], tf.int32),
                                  tf.TensorSpec([16], tf.int32))
  per_epoch = 2_000 // 16  # 125 batches, 2,000 examples: none left out
  two_epochs = batches(dataset, 2 * per_epoch)
  first, second = (epoch_rows(two_epochs[:per_epoch]),
                   epoch_rows(two_epochs[per_epoch:]))
  everything = collections.Counter(rows(cache.x, cache.y))
  assert collections.Counter(first) == collections.Counter(second) == (
      everything)
  assert first != second


def test_the_remainder_left_out_differs_between_epochs(cache):
  # 2,000 examples in batches of 48: 41 batches, 32 examples left out.
  dataset = pipeline.cached_dataset(cache, 48, training=True, seed=3)
  everything = collections.Counter(rows(cache.x, cache.y))
  left_out = []
  two_epochs = batches(dataset, 82)
  for epoch in (two_epochs[:41], two_epochs[41:]):
    seen = collections.Counter(epoch_rows(epoch))
    assert sum(seen.values()) == 41 * 48 and not seen - everything
    left_out.append(everything - seen)
  assert sum(left_out[0].values()) == 32 and left_out[0] != left_out[1]


def test_the_order_is_a_function_of_the_seed(cache, train_files):
  refilled = pipeline.fill_cache(train_files, 2_000, len_max_input=LEN)

  def first_batches(seed, examples=cache):
    return batches(pipeline.cached_dataset(examples, 16, training=True,
                                           seed=seed), 3)
  same, again, other = (first_batches(7), first_batches(7, refilled),
                        first_batches(8))
  assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
             for a, b in zip(same, again))
  assert not np.array_equal(same[0][0], other[0][0])


@pytest.mark.parametrize("skip", [3, 125, 131])  # within, at, past an epoch
def test_skip_batches_resumes_where_a_longer_run_was(cache, skip):
  longer = batches(pipeline.cached_dataset(cache, 16, training=True,
                                           seed=3), skip + 4)
  resumed = batches(pipeline.cached_dataset(
      cache, 16, training=True, seed=3, skip_batches=skip), 4)
  for (x, y), (resumed_x, resumed_y) in zip(longer[skip:], resumed):
    np.testing.assert_array_equal(x, resumed_x)
    np.testing.assert_array_equal(y, resumed_y)


def test_eval_from_the_cache_is_the_streamed_pass(smoke_data):
  files = files_lib.list_split(f"{smoke_data}/eval-*.tfrecord", "evaluation",
                               len_max_input=LEN).files
  # 256 examples in batches of 24: 10 batches, the last 16 left out.
  eval_cache = pipeline.fill_cache(files, 240, len_max_input=LEN,
                                   stream_batch_size=24)
  streamed = list(pipeline.make_dataset(
      files, 24, len_max_input=LEN, training=False).as_numpy_iterator())
  cached = list(pipeline.cached_dataset(
      eval_cache, 24, training=False).as_numpy_iterator())
  assert len(cached) == len(streamed) == 10
  for (x, y), (cached_x, cached_y) in zip(streamed, cached):
    np.testing.assert_array_equal(x, cached_x)
    np.testing.assert_array_equal(y, cached_y)
  taken = pipeline.cached_dataset(eval_cache, 24, training=False,
                                  take_batches=3)
  assert len(list(taken)) == 3


def test_a_count_other_than_the_manifests_is_one_line(train_files):
  with pytest.raises(errors.UserError, match=(
      r"^4 file\(s\) in .* hold more examples than their manifest.json says "
      r"\(1,999 to read\): regenerate")):
    pipeline.fill_cache(train_files, 1_999, len_max_input=LEN)


# --- through the run's Feeds ------------------------------------------------


def make_feeds(data_dir, **data):
  config = smoke.get_config()
  config.data.update(data)
  strategy = strategy_lib.make_strategy("default")
  return feeds.Feeds.of(plan.for_strategy(config, strategy, str(data_dir)),
                        strategy)


def cache_lines(caplog):
  return [r.getMessage() for r in caplog.records if " split" in
          r.getMessage() and ("cached" in r.getMessage() or "streamed" in
                              r.getMessage())]


@pytest.fixture
def log(caplog):
  # The lines come through absl's logger, whose own level another test in
  # the same process may have raised (absl's flags default to WARNING).
  caplog.set_level(logging.INFO)
  caplog.set_level(logging.INFO, logger="absl")
  return caplog


def test_the_run_caches_a_share_that_fits_and_says_so(smoke_data, log):
  run_feeds = make_feeds(smoke_data)
  x, _ = next(run_feeds.train_iterator)
  assert x.shape == (16, LEN)
  run_feeds.eval_dataset  # pylint: disable=pointless-statement
  # 256 eval examples in batches of 16: all of them.
  lines = cache_lines(log)
  assert len(lines) == 2, lines
  assert re.fullmatch(r"training split: 2,000 examples cached in memory "
                      r"\(0.042 MB\) in \d+\.\d s", lines[0]), lines
  assert re.fullmatch(r"evaluation split: 256 examples cached in memory "
                      r"\(0.0054 MB\) in \d+\.\d s", lines[1]), lines


def test_memory_cache_mb_0_streams_the_files_as_before(smoke_data,
                                                        train_files, log):
  config = smoke.get_config()
  run_feeds = make_feeds(smoke_data, memory_cache_mb=0)
  assert cache_lines(log) == [
      "training split: streamed from files: memory_cache_mb=0"]
  expected = pipeline.make_dataset(
      pipeline.pipeline_files(train_files, training=True,
                              seed=config.seed), 16,
      len_max_input=LEN, training=True, seed=config.seed,
      shuffle_buffer_size=config.data.shuffle_buffer_size)
  for x, y in batches(expected, 3):
    got_x, got_y = next(run_feeds.train_iterator)
    np.testing.assert_array_equal(x, got_x)
    np.testing.assert_array_equal(y, got_y)


def test_over_the_bound_streams_and_says_why(smoke_data, log):
  # 2,000 examples of 1,001 bytes each (len_max_input=1000): 2 MB > 1 MB.
  config = smoke.get_config()
  config.data.memory_cache_mb = 1
  config.model.len_max_input = 1_000
  strategy = strategy_lib.make_strategy("default")
  feeds.Feeds.of(plan.for_strategy(config, strategy, str(smoke_data)),
                 strategy)
  assert cache_lines(log) == [
      "training split: streamed from files: 2 MB > memory_cache_mb=1"]


def test_without_manifest_counts_streams_and_says_why(smoke_data, tmp_path,
                                                      log):
  shutil.copytree(smoke_data, tmp_path / "data")
  (tmp_path / "data" / manifest.MANIFEST_NAME).unlink()
  run_feeds = make_feeds(tmp_path / "data")
  next(run_feeds.train_iterator)
  assert cache_lines(log) == [
      "training split: streamed from files: no example counts: the files "
      "have no manifest.json entry (seed-format or foreign shards)"]


def flip_record_3(path):
  """Bytes flipped inside record 3's data: its CRC fails, the size holds."""
  data = path.read_bytes()
  start = 0
  for _ in range(3):
    (length,) = struct.unpack("<Q", data[start:start + 8])
    start += 8 + 4 + length + 4  # length, its CRC, data, data CRC
  middle = start + 12 + 2
  path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[
      middle:middle + 4]) + data[middle + 4:])


@pytest.mark.parametrize("split", ["train", "eval"])
def test_a_bad_record_in_a_cached_share_names_the_file(smoke_data, tmp_path,
                                                       split):
  data_dir = tmp_path / "data"
  shutil.copytree(smoke_data, data_dir)
  bad = data_dir / f"{split}-00001-of-0000{4 if split == 'train' else 2}" \
      ".tfrecord"
  flip_record_3(bad)
  expected = (rf"^{bad}: record 3: corrupted record at byte \d+ \(3 good "
              r"record\(s\) before it\): regenerate or re-copy the file")
  if split == "train":  # filled when the feeds are built
    with pytest.raises(errors.UserError, match=expected) as raised:
      make_feeds(data_dir)
  else:  # filled at the first evaluation, as a stream would fail there
    run_feeds = make_feeds(data_dir)
    with pytest.raises(errors.UserError, match=expected) as raised:
      run_feeds.eval_dataset  # pylint: disable=pointless-statement
  assert "\n" not in str(raised.value)


# --- exact resume when streaming, and a count below the manifest's ----------


def make_stream_feeds(data_dir, start_step):
  """The run's training feed from files (memory_cache_mb=0), resumed
  exactly (exact_resume) at `start_step`."""
  config = smoke.get_config()
  config.data.memory_cache_mb = 0
  config.train.exact_resume = True
  strategy = strategy_lib.make_strategy("default")
  return feeds.Feeds.of(plan.for_strategy(config, strategy, str(data_dir)),
                        strategy, start_step=start_step)


@pytest.fixture(scope="module")
def uninterrupted_stream(smoke_data):
  """The first 134 batches an unresumed streaming run trains on (2,000
  examples: 125 batches of 16 per pass over the files)."""
  iterator = make_stream_feeds(smoke_data, 0).train_iterator
  return [tuple(t.numpy() for t in next(iterator)) for _ in range(134)]


# 0: a fresh start; 1: one batch in; 130: past the first pass over the files.
@pytest.mark.parametrize("start_step", [0, 1, 7, 130])
def test_a_streamed_run_resumes_on_the_batches_it_had_not_trained_on(
    smoke_data, uninterrupted_stream, log, start_step):
  resumed = make_stream_feeds(smoke_data, start_step).train_iterator
  assert "training split: streamed from files: memory_cache_mb=0" in (
      cache_lines(log))
  for offset in range(4):
    x, y = next(resumed)
    expected_x, expected_y = uninterrupted_stream[start_step + offset]
    np.testing.assert_array_equal(x.numpy(), expected_x,
                                  err_msg=f"step {start_step + offset}")
    np.testing.assert_array_equal(y.numpy(), expected_y)
  # The stream is not one batch repeated (the comparison has power).
  assert not np.array_equal(uninterrupted_stream[start_step][0],
                            uninterrupted_stream[start_step + 1][0])


def test_a_count_below_the_manifests_is_one_line(train_files):
  with pytest.raises(errors.UserError, match=(
      r"^4 file\(s\) in .* hold fewer examples than their manifest.json says "
      r"\(2,001 to read\): regenerate")):
    pipeline.fill_cache(train_files, 2_001, len_max_input=LEN)


def test_a_shard_with_fewer_examples_than_its_manifest_entry_is_refused(
    smoke_data, tmp_path):
  """The manifest says shard 0 holds 501 examples, it holds 500 (its size
  as the manifest says): the run refuses before its first step."""
  import json  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path / "data"
  shutil.copytree(smoke_data, data_dir)
  path = data_dir / manifest.MANIFEST_NAME
  recorded = json.loads(path.read_text())
  train_split = recorded["splits"]["train"]
  assert train_split["shards"][0]["num_examples"] == 500
  train_split["shards"][0]["num_examples"] += 1
  train_split["num_examples"] += 1
  path.write_text(json.dumps(recorded))
  with pytest.raises(errors.UserError, match=(
      r"training data: 4 file\(s\) in .* hold fewer examples than their "
      r"manifest.json says \(2,001 to read\)")):
    next(make_feeds(data_dir).train_iterator)
