"""Prints the generator's and the input pipeline's throughput.

  python benchmarks/bench_data.py [--examples_per_shard=250000]

1. Generator: 8 shards written by 2 worker processes to a temporary local
   directory, timed from the call to the manifest (process start-up
   included); target >= 150,000 examples/s on a 2-core machine.
2. Input pipeline: the same 8 shards at batch 256, iterating the dataset only
   (no model), in training mode (shuffle, repeat) and in eval mode (one pass).
"""

import argparse
import os
import shutil
import tempfile
import time

import common  # pylint: disable=unused-import  # the checkout on sys.path

# No TensorFlow import at the top: the generator's workers are spawned and
# re-import this script as their __main__.
from trainer.data import generate  # pylint: disable=wrong-import-order


def bench_generator(out_dir, num_shards, examples_per_shard, num_processes):
  spec = generate.GenerateSpec(out_dir, "train", num_shards,
                               examples_per_shard, max_value=100, seed=0)
  start = time.perf_counter()
  generate.generate(spec, num_processes=num_processes, show_progress=False)
  seconds = time.perf_counter() - start
  return num_shards * examples_per_shard / seconds, seconds


def bench_pipeline(pattern, batch_size, training, num_batches):
  from trainer.data import files as files_lib  # pylint: disable=g-import-not-at-top
  from trainer.data import pipeline  # pylint: disable=g-import-not-at-top
  files = pipeline.pipeline_files(
      files_lib.list_split(pattern, "training", len_max_input=20).files,
      training=training, seed=0)
  dataset = pipeline.make_dataset(
      files, batch_size, len_max_input=20, training=training, seed=0)
  examples, seconds = pipeline.time_batches(dataset, batch_size,
                                            num_batches=num_batches)
  return examples / seconds, examples // batch_size


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_shards", type=int, default=8)
  parser.add_argument("--examples_per_shard", type=int, default=250_000)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--train_batches", type=int, default=2_000)
  args = parser.parse_args()

  out_dir = tempfile.mkdtemp(prefix="bench_data_")
  try:
    rate, seconds = bench_generator(out_dir, args.num_shards,
                                    args.examples_per_shard,
                                    args.num_processes)
    total = args.num_shards * args.examples_per_shard
    print(f"generator: {rate:,.0f} examples/s ({total:,} examples, "
          f"{args.num_shards} shards, {args.num_processes} processes, "
          f"{seconds:.2f} s incl. start-up)")
    pattern = os.path.join(out_dir, "train-*")
    rate, batches = bench_pipeline(pattern, args.batch_size, True,
                                   args.train_batches)
    print(f"input pipeline, training: {rate:,.0f} examples/s "
          f"({batches} batches of {args.batch_size})")
    rate, batches = bench_pipeline(pattern, args.batch_size, False, None)
    print(f"input pipeline, eval (one pass): {rate:,.0f} examples/s "
          f"({batches} batches of {args.batch_size})")
  finally:
    shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
  main()
