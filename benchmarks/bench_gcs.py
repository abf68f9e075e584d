"""Prints input-pipeline examples/s from GCS (the emulator) and local disk.

  python benchmarks/bench_gcs.py [--examples_per_shard=50000] [--repeats=5]

The same 8 shards, at batch 256, iterating the dataset only: from a local
directory and from gs:// through TensorFlow's GCS filesystem talking to
fake-gcs-server behind the test proxy (tests/helpers/gcs_emulator.py), all on
127.0.0.1. Each repeat measures both back to back, in alternating order,
and the ratio of that pair is reported (median and range: common.py): on a
shared 2-core machine single figures drift by +-40%. Also printed: the CPU time
the proxy and emulator processes used, the share of the machine the gs://
reads take away from the pipeline. Target: gs:// within 0.8x of local.
"""

import argparse
import os
import shutil
import statistics
import tempfile

import common  # first: the checkout on sys.path

from tests.helpers.gcs_emulator import GcsEmulator, TF_IMPORT_TIME_ENV  # pylint: disable=wrong-import-order

# TensorFlow reads its GCS retry settings at import.
for key, value in TF_IMPORT_TIME_ENV.items():
  os.environ.setdefault(key, value)

from trainer.data import generate  # pylint: disable=g-import-not-at-top,wrong-import-position


def examples_per_second(pattern, training, num_batches, batch_size):
  from trainer.data import files as files_lib  # pylint: disable=g-import-not-at-top
  from trainer.data import pipeline  # pylint: disable=g-import-not-at-top
  files = pipeline.pipeline_files(
      files_lib.list_split(pattern, "training", len_max_input=20).files,
      training=training, seed=0)
  dataset = pipeline.make_dataset(files, batch_size, len_max_input=20,
                                  training=training)
  examples, seconds = pipeline.time_batches(dataset, batch_size,
                                            num_batches=num_batches)
  return examples / seconds


def _cpu_seconds(pid):
  """User + system CPU time of a process and its children (Linux /proc)."""
  def own(p):
    fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
  children = open(f"/proc/{pid}/task/{pid}/children").read().split()
  return own(pid) + sum(own(int(c)) for c in children)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples_per_shard", type=int, default=50_000)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--train_batches", type=int, default=3_000)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  work_dir = tempfile.mkdtemp(prefix="bench_gcs_")
  emulator = GcsEmulator(os.path.join(work_dir, "emulator"))
  try:
    emulator.start()
    os.environ.update(emulator.env)
    local = os.path.join(work_dir, "data")
    generate.generate(generate.GenerateSpec(local, "train", 8,
                                            args.examples_per_shard, 100, 0),
                      show_progress=False)
    emulator.create_bucket("bench")
    from trainer.data import transfer  # pylint: disable=g-import-not-at-top
    transfer.upload(local, "gs://bench/data", show_progress=False)
    proxy_pid = emulator._proxy.pid  # pylint: disable=protected-access
    for training, label, batches in ((True, "training", args.train_batches),
                                     (False, "eval pass", None)):
      pairs = []
      proxy_cpu = 0.0
      for _, order in common.alternate(("local", "gs"), args.repeats):
        rates = {}
        for where in order:
          pattern = (os.path.join(local, "train-*") if where == "local" else
                     "gs://bench/data/train-*")
          cpu_before = _cpu_seconds(proxy_pid)
          rates[where] = examples_per_second(pattern, training, batches,
                                             args.batch_size)
          if where == "gs":
            proxy_cpu += _cpu_seconds(proxy_pid) - cpu_before
        pairs.append((rates["local"], rates["gs"]))
      ratios = [gs / local for local, gs in pairs]
      print(f"{label}: local "
            f"{statistics.median([l for l, _ in pairs]):,.0f} examples/s, "
            f"gs:// (emulator) {statistics.median([g for _, g in pairs]):,.0f}"
            f" examples/s (medians of {args.repeats}): gs:// / local "
            f"{common.ratio(ratios)}; target >= 0.8; proxy + emulator CPU "
            f"{proxy_cpu / args.repeats:.2f} s per gs:// pass")
  finally:
    emulator.stop()
    shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
  main()
