"""A full evaluation pass (eval_steps=0) counts every example once, on one
worker and on two workers whose shares of the eval split differ in size."""

import json
import re

import pytest
import tensorflow as tf

from tests.helpers.trainer_process import run_module
from tests.helpers.eval_checks import (OPERATION_NAMES, OPERATIONS,
                                       assert_by_op_adds_up, eval_line)
from tests.helpers.workers import Workers

# 3 eval shards of 100: two workers read 2 and 1 of them (every 2nd file).
EVAL_SHARDS, EVAL_PER_SHARD = 3, 100
GLOBAL_BATCH = 8
FLAGS = ["--config.train.eval_steps=0", "--config.train.num_steps=20",
         f"--config.train.global_batch_size={GLOBAL_BATCH}",
         "--config.train.eval_every_steps=0"]


@pytest.fixture(scope="module")
def uneven_data(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("uneven")
  for split, shards, per_shard in (("train", 2, 200),
                                   ("eval", EVAL_SHARDS, EVAL_PER_SHARD)):
    result = run_module("trainer.data", "generate", f"--out_dir={data_dir}",
                 f"--split={split}", f"--num_shards={shards}",
                 f"--examples_per_shard={per_shard}", "--seed=0",
                 "--num_processes=1")
    assert result.returncode == 0, result.stderr
  return data_dir


def operations_in(paths):
  """{name: count} of the problems in TFRecord files, from their `op`
  feature (read here, not with the trainer's code)."""
  from trainer.data import vocab  # pylint: disable=g-import-not-at-top
  counts = dict.fromkeys(OPERATION_NAMES, 0)
  for path in paths:
    for record in tf.data.TFRecordDataset(str(path)):
      example = tf.train.Example.FromString(record.numpy())
      op = "".join(vocab.VOCAB[i] for i in
                   example.features.feature["op"].int64_list.value)
      operator = next(c for c in op if c in OPERATIONS)
      counts[OPERATIONS[operator]] += 1
  return counts


def final_eval_line(log):
  lines = [l for l in log.splitlines() if l.startswith("eval at step 20:")]
  assert len(lines) == 1, log[-3000:]
  assert re.match(eval_line(20), lines[0]), lines[0]
  return lines[0]


def test_one_worker_counts_all_but_the_last_partial_batch(
    uneven_data, tmp_path):
  result = run_module("trainer.task", "--config=configs/smoke.py",
               f"--data_dir={uneven_data}", f"--model_dir={tmp_path}/run",
               *FLAGS)
  assert result.returncode == 0, result.stderr[-3000:]
  total = EVAL_SHARDS * EVAL_PER_SHARD
  counted = total // GLOBAL_BATCH * GLOBAL_BATCH  # one pipeline: 296
  assert f"over {counted} of {total} examples ({total - counted} left out: " \
      "static shapes drop each input pipeline's last partial batch)" in (
          final_eval_line(result.stderr))
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert metrics["eval"]["examples"] == counted
  assert_by_op_adds_up(metrics["eval"])


def test_two_workers_with_unequal_shares_count_every_example_once(
    uneven_data, tmp_path):
  model_dir = tmp_path / "run"
  workers = Workers(2, [f"--data_dir={uneven_data}",
                        f"--model_dir={model_dir}", *FLAGS], tmp_path)
  try:
    assert workers.wait(timeout=300) == [0, 0], workers.logs_tail()
  finally:
    workers.kill()
  # Worker 0 reads 2 files (50 batches of 4), worker 1 one (25): the worker
  # that runs out first takes part in the remaining steps with empty batches.
  for index, files in ((0, 2), (1, 1)):
    assert re.search(rf"eval input pipeline {index} of 2 reads {files} "
                     "file", workers.log(index)), workers.logs_tail()
  total = EVAL_SHARDS * EVAL_PER_SHARD
  for index in range(2):
    assert f"over {total} examples;" in final_eval_line(workers.log(index))
  metrics = json.loads((model_dir / "metrics.json").read_text())
  assert metrics["eval"]["examples"] == total
  assert_by_op_adds_up(metrics["eval"])
  expected = operations_in(sorted(uneven_data.glob("eval-*.tfrecord")))
  assert {name: m["examples"] for name, m in
          metrics["eval"]["by_op"].items()} == expected
  assert metrics["trace_counts"]["forward"] == 1  # empty batches: no retrace
