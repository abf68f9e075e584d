"""`python -m trainer.data benchmark`: the input pipeline's examples/s."""

import re

import pytest

from tests.helpers import error_lines

LINE = re.compile(r"(train|eval) pipeline: ([\d,]+) examples/s \(batch (\d+), "
                  r"([\d.]+) s, ([\d,]+) examples\) from (.+)")


def benchmark(run, *flags):
  return run("trainer.data", "benchmark", *flags)



@pytest.mark.parametrize("split, batch_size", [("train", None), ("eval", 32)])
def test_benchmark_prints_examples_per_second(run, smoke_data, split,
                                              batch_size):
  flags = [f"--data_dir={smoke_data}", f"--split={split}", "--seconds=1"]
  if batch_size:
    flags.append(f"--batch_size={batch_size}")
  result = benchmark(run, *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert len(lines) == 1, result.stdout
  match = LINE.fullmatch(lines[0])
  assert match, lines[0]
  rate, batch, seconds, examples = (
      int(match[2].replace(",", "")), int(match[3]), float(match[4]),
      int(match[5].replace(",", "")))
  assert match[1] == split and match[6] == str(smoke_data)
  assert batch == (batch_size or 128)  # default: configs/default.py's
  assert seconds >= 1.0 and examples % batch == 0 and examples > 0
  # The eval split is 256 examples: more read means passes were repeated.
  assert rate == pytest.approx(examples / seconds, rel=0.06)
  assert split == "train" or examples > 256
  assert f"benchmark {split}: 100%" in result.stderr  # the progress line
  assert not error_lines(result)


@pytest.mark.parametrize("flags, message", [
    ([], "benchmark needs --data_dir"),
    (["--data_dir=DIR", "--split=test"],
     "--split='test' is not a split: use one of train, eval"),
    (["--data_dir=DIR", "--batch_size=0"], "--batch_size=0 must be positive"),
    (["--data_dir=DIR", "--seconds=-1"], "--seconds=-1.0 must be positive"),
    (["--data_dir=DIR", "--split=eval", "--batch_size=1000"],
     "the eval split has fewer examples than --batch_size=1000: not one batch"),
])
def test_bad_flags_are_one_error_line(run, smoke_data, flags, message):
  flags = [f.replace("DIR", str(smoke_data)) for f in flags]
  result = benchmark(run, *flags)
  assert result.returncode == 2, result.stderr[-3000:]
  assert error_lines(result) == [f"error: {message}"]
  assert not result.stdout


def test_no_shards_is_one_error_line(run, tmp_path):
  result = benchmark(run, f"--data_dir={tmp_path}", "--seconds=1")
  assert result.returncode == 2, result.stderr[-3000:]
  assert error_lines(result) == [
      f"error: no training shards: no file matches "
      f"'{tmp_path}/train-*-of-*.tfrecord' (generate them with python -m "
      "trainer.data generate --out_dir=DATA_DIR, or fix --data_dir / "
      "config.data)"]


def test_benchmark_reads_gcs(gcs, run, smoke_data):
  gcs.create_bucket("bench")
  assert run("trainer.data", "upload", f"--src={smoke_data}",
             "--dst=gs://bench/data").returncode == 0
  result = benchmark(run, "--data_dir=gs://bench/data", "--seconds=1")
  assert result.returncode == 0, result.stderr[-3000:]
  match = LINE.fullmatch(result.stdout.strip())
  assert match and match[6] == "gs://bench/data", result.stdout
