import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from trainer import errors
from trainer.data import generate
from trainer.data import schema
from trainer.data import manifest as manifest_lib
from trainer.data import problems
from trainer.data import vocab
from tests.helpers import ROOT, examples


def spec(out_dir, **overrides):
  fields = dict(out_dir=str(out_dir), split="train", num_shards=3,
                examples_per_shard=200, max_value=100, seed=7)
  fields.update(overrides)
  return generate.GenerateSpec(**fields)


def files_of(directory):
  return {name: open(os.path.join(directory, name), "rb").read()
          for name in sorted(os.listdir(directory))}


def parse_records(data_bytes, tmp_path):
  path = tmp_path / "records.tfrecord"
  path.write_bytes(data_bytes)
  return [tf.train.Example.FromString(r)
          for r in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()]


def feature_text(example, key):
  return vocab.decode(example.features.feature[key].int64_list.value)


def test_shard_is_pure_function_of_seed_split_index():
  first = problems.build_shard(1, "train", 2, 100, 100)
  assert problems.build_shard(1, "train", 2, 100, 100).data == first.data
  assert problems.build_shard(2, "train", 2, 100, 100).data != first.data
  assert problems.build_shard(1, "eval", 2, 100, 100).data != first.data
  assert problems.build_shard(1, "train", 3, 100, 100).data != first.data


def test_splits_and_shards_draw_from_distinct_streams():
  draws = {(split, index): problems.shard_rng(0, split, index).integers(
      0, 2**62, size=4).tolist()
           for split in ("train", "eval") for index in range(4)}
  assert len({tuple(v) for v in draws.values()}) == len(draws)


def test_records_are_tf_examples_of_the_problems(tmp_path):
  shard = problems.build_shard(3, "eval", 0, 50, 100)
  expected = problems.generate_problems(problems.shard_rng(3, "eval", 0), 50,
                                        100)
  examples = parse_records(shard.data, tmp_path)
  assert len(examples) == shard.num_examples == 50
  for example, (defs, op, res) in zip(examples, expected):
    assert set(example.features.feature) == {"defs", "op", "res"}
    assert (feature_text(example, "defs"), feature_text(example, "op"),
            feature_text(example, "res")) == (defs, op, res)
  assert shard.max_input_length == max(len(d) + 1 + len(o)
                                       for d, o, _ in expected)


def test_problems_follow_the_seed_task():
  rows = problems.generate_problems(np.random.default_rng(0), 3000, 10)
  pattern = re.compile(r"^([xy])=(-?\d+),([xy])=(-?\d+)$")
  seen_ops, seen_orders, seen_operands = set(), set(), set()
  for defs, op, res in rows:
    first, a, second, b = pattern.match(defs).groups()
    assert {first, second} == {"x", "y"}
    values = {first: int(a), second: int(b)}
    assert all(-10 < v < 10 for v in values.values())
    assert len(op) == 3 and {op[0], op[2]} == {"x", "y"}
    left, operator, right = values[op[0]], op[1], values[op[2]]
    expected = {"+": left + right, "-": left - right,
                "*": left * right}[operator]
    assert res == str(expected)
    seen_ops.add(operator)
    seen_orders.add(first)
    seen_operands.add(op[0])
  assert seen_ops == {"+", "-", "*"}
  assert seen_orders == seen_operands == {"x", "y"}


def test_same_flags_give_the_same_bytes(tmp_path):
  generate.generate(spec(tmp_path / "a"), num_processes=2,
                    show_progress=False)
  generate.generate(spec(tmp_path / "b"), num_processes=1,
                    show_progress=False)
  generate.generate(spec(tmp_path / "c", seed=8), num_processes=1,
                    show_progress=False)
  a, b, c = (files_of(tmp_path / d) for d in "abc")
  assert a == b
  assert set(a) == set(c)
  assert all(a[name] != c[name] for name in a)


@pytest.mark.parametrize("num_shards, num_processes", [(2, 2), (2, 4),
                                                       (5, 2)])
def test_any_number_of_workers_gives_the_same_bytes(tmp_path, num_shards,
                                                     num_processes):
  # Fewer shards than the workers could queue (2 each), and more: a worker
  # given no shard, or a last one alone, ends cleanly.
  generate.generate(spec(tmp_path / "one", num_shards=num_shards),
                    num_processes=1, show_progress=False)
  generate.generate(spec(tmp_path / "many", num_shards=num_shards),
                    num_processes=num_processes, show_progress=False)
  assert files_of(tmp_path / "many") == files_of(tmp_path / "one")


def test_shard_does_not_depend_on_the_shard_count(tmp_path):
  generate.generate(spec(tmp_path / "two", num_shards=2), num_processes=1,
                    show_progress=False)
  generate.generate(spec(tmp_path / "five", num_shards=5), num_processes=1,
                    show_progress=False)
  assert ((tmp_path / "two" / "train-00001-of-00002.tfrecord").read_bytes() ==
          (tmp_path / "five" / "train-00001-of-00005.tfrecord").read_bytes())


def test_manifest_records_each_split(tmp_path):
  train = generate.generate(spec(tmp_path), num_processes=2,
                            show_progress=False)
  generate.generate(spec(tmp_path, split="eval", num_shards=2, seed=7),
                    num_processes=1, show_progress=False)
  manifest = json.loads((tmp_path / "manifest.json").read_text())
  assert manifest["format"] == manifest_lib.MANIFEST_FORMAT
  assert manifest["vocab"] == list(vocab.VOCAB)
  assert set(manifest["splits"]) == {"train", "eval"}
  assert manifest["splits"]["train"] == train.to_json()
  entry = manifest["splits"]["eval"]
  assert entry["num_shards"] == 2 and entry["num_examples"] == 400
  assert entry["generator"] == {"seed": 7, "max_value": 100,
                                "examples_per_shard": 200, "num_shards": 2}
  for shard in entry["shards"]:
    content = (tmp_path / shard["file"]).read_bytes()
    assert shard["bytes"] == len(content)
    assert shard["crc32c"] == schema.crc32c_base64(content)
    assert shard["num_examples"] == 200
    assert 10 <= shard["max_input_length"] <= 15
  assert entry["max_input_length"] == max(
      s["max_input_length"] for s in entry["shards"])


def test_rerun_skips_complete_shards_and_cleans_interrupted_ones(
    tmp_path, caplog):
  caplog.set_level("INFO", logger="absl")  # what generate logs
  generate.generate(spec(tmp_path), num_processes=1, show_progress=False)
  before = files_of(tmp_path)
  caplog.clear()
  generate.generate(spec(tmp_path), num_processes=1, show_progress=False)
  assert "already complete" in caplog.text
  assert files_of(tmp_path) == before

  # An interrupted run: no manifest, one shard missing, a temporary left.
  os.remove(tmp_path / "manifest.json")
  os.remove(tmp_path / "train-00001-of-00003.tfrecord")
  (tmp_path / "train-00001-of-00003.tfrecord.tmp-123").write_bytes(b"part")
  caplog.clear()
  generate.generate(spec(tmp_path), num_processes=1, show_progress=False)
  assert "wrote 1 shard(s), skipped 2" in caplog.text
  assert files_of(tmp_path) == before


def test_shard_that_differs_is_an_error_and_is_kept(tmp_path):
  generate.generate(spec(tmp_path), num_processes=1, show_progress=False)
  os.remove(tmp_path / "manifest.json")
  shard = tmp_path / "train-00002-of-00003.tfrecord"
  shard.write_bytes(b"not this")
  with pytest.raises(errors.UserError, match="train-00002-of-00003.tfrecord "
                     "exists but differs"):
    generate.generate(spec(tmp_path), num_processes=1, show_progress=False)
  assert shard.read_bytes() == b"not this"


def test_other_generation_in_out_dir_is_an_error_before_writing(tmp_path):
  generate.generate(spec(tmp_path), num_processes=1, show_progress=False)
  before = files_of(tmp_path)
  with pytest.raises(errors.UserError, match=r"generated with .*'seed': 7"):
    generate.generate(spec(tmp_path, seed=9), num_processes=1,
                      show_progress=False)
  os.remove(tmp_path / "manifest.json")
  del before["manifest.json"]
  with pytest.raises(errors.UserError, match=r"holds 3 train shard\(s\) of "
                     "another generation"):
    generate.generate(spec(tmp_path, num_shards=4), num_processes=1,
                      show_progress=False)
  assert files_of(tmp_path) == before


def test_cli_generates_with_progress(run, tmp_path):
  out_dir = tmp_path / "out"
  result = run("trainer.data", "generate", f"--out_dir={out_dir}",
               "--split=eval", "--num_shards=4", "--examples_per_shard=300",
               "--seed=3", "--num_processes=2")
  assert result.returncode == 0, result.stderr
  assert "generate eval: 100%" in result.stderr
  assert "4/4 shards" in result.stderr
  assert "1,200/1,200 examples" in result.stderr
  names = sorted(os.listdir(out_dir))
  assert names == ["eval-0000%d-of-00004.tfrecord" % i for i in range(4)] + [
      "manifest.json"]
  expected = problems.build_shard(3, "eval", 2, 300, 100).data
  assert (out_dir / "eval-00002-of-00004.tfrecord").read_bytes() == expected


@pytest.mark.parametrize("args, message", [
    (["--num_shards=0"], "--num_shards=0 must be positive"),
    (["--examples_per_shard=-5"], "--examples_per_shard=-5 must be positive"),
    (["--num_processes=0"], "--num_processes=0 must be positive"),
    (["--max_value=1"], "--max_value=1 must be at least 2"),
    (["--split=test"], "--split='test' is not a split"),
    (["--num_shards=many"], "num_shards"),
])
def test_cli_bad_input_is_one_line_exit_2_nothing_written(
    run, tmp_path, args, message):
  out_dir = tmp_path / "out"
  result = run("trainer.data", "generate", f"--out_dir={out_dir}", *args)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  assert message in lines[0]
  assert not out_dir.exists()


def test_cli_out_dir_that_is_a_file(run, tmp_path):
  target = tmp_path / "file"
  target.write_text("keep me")
  result = run("trainer.data", "generate", f"--out_dir={target}")
  assert result.returncode == 2
  # TensorFlow's own start-up log lines may come first; ours is one line.
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert errors == [f"error: --out_dir={target} is a file, not a directory"]
  assert "Traceback" not in result.stderr
  assert target.read_text() == "keep me"


@pytest.mark.parametrize("args", [[], ["generate", "more"], ["destroy"]])
def test_cli_unknown_command(run, tmp_path, args):
  result = run("trainer.data", *args, f"--out_dir={tmp_path}/x")
  assert result.returncode == 2
  assert result.stderr.strip().startswith("error: usage: python -m trainer.data")
  assert not (tmp_path / "x").exists()


def test_generator_modules_import_no_tensorflow():
  # The shard workers (python -m trainer.data.shard_worker) import only what
  # builds a shard: TensorFlow there would cost seconds per worker, file
  # access has no use there. The command and the generator load TensorFlow
  # only when they touch files. schema, problems, vocab and manifest are the
  # data package's no-TensorFlow core.
  for modules, absent in (
      ("trainer.data.shard_worker", ("tensorflow", "trainer.cloud.storage",
                                     "trainer.data.manifest", "absl")),
      ("trainer.data.__main__, trainer.data.generate", ("tensorflow",)),
      ("trainer.data.schema", ("tensorflow", "keras")),
      ("trainer.data.problems, trainer.data.vocab, trainer.data.manifest, "
       "trainer.data.schema", ("tensorflow", "keras"))):
    code = (f"import sys, {modules}; print(sorted(m for m in {absent!r} "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]", modules


@pytest.mark.parametrize("lengths", [(9, 3, 2), (40, 20, 28), (40, 20, 29),
                                     (130, 3, 200)])
def test_serialized_examples_parse_as_tensorflows_own(lengths):
  # Covers the one-format fast path (all lengths < 89) and the general one.
  rng = np.random.default_rng(sum(lengths))
  defs, op, res = (bytes(rng.integers(0, 20, n).tolist()) for n in lengths)
  reference = examples.example(defs, op, res)
  assert tf.train.Example.FromString(
      schema.serialize_example(defs, op, res)) == reference
