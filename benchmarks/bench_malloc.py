"""Prints what glibc malloc's top pad (config.train.malloc_top_pad_mb) does
to the trainer's speed and CPU per example, default strategy and Mirrored.

  python benchmarks/bench_malloc.py [--pads 0 256] [--repeats=4] [--loops=4]

malloc's settings hold for a whole process and stay once set, so each side
is a process of its own: `benchmarks/bench_replicas.py --no-workers
--repeats=1 --json --malloc_top_pad_mb=PAD` (the default strategy and
MirroredStrategy over 2 logical CPUs, in-memory batches, seed dims, batch
256), the sides alternating in pairs (common.alternate). Printed per side:
examples/s and CPU microseconds per example of each strategy, then the
ratios of each other side to the first within each round (CPU per example;
mirrored / default examples/s). A process's figures are bimodal at the
glibc default (some processes settle into growing and trimming a heap
every step): the ratios are medians over rounds for that reason.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

import common  # first: the checkout on sys.path

_STRATEGIES = ("default", "mirrored")


def run_side(pad, args):
  """{"rates": {strategy: [examples/s]}, "cpu_us": {...}} of one process."""
  command = [sys.executable,
             os.path.join(os.path.dirname(__file__), "bench_replicas.py"),
             "--no-workers", "--repeats=1", "--json",
             f"--loops={args.loops}", f"--batch_size={args.batch_size}",
             f"--malloc_top_pad_mb={pad}"]
  result = subprocess.run(command, capture_output=True, text=True,
                          timeout=1_800, check=False)
  if result.returncode:
    sys.exit(f"bench_replicas.py (pad {pad} MiB) exited "
             f"{result.returncode}: {result.stderr.strip()[-500:]}")
  return json.loads(next(line for line in result.stdout.splitlines()
                          if line.startswith("{")))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pads", type=int, nargs="+", default=[0, 256],
                      help="top pads in MiB, one side each (0: glibc's "
                      "own); ratios are to the first")
  parser.add_argument("--repeats", type=int, default=4, help="rounds")
  parser.add_argument("--loops", type=int, default=4,
                      help="timed host loops per strategy and process")
  parser.add_argument("--batch_size", type=int, default=256)
  args = parser.parse_args()
  if len(args.pads) < 2:
    parser.error("--pads needs two sides or more")
  print(f"batch {args.batch_size}, {args.loops} timed host loops per "
        f"strategy, one process a side and round; {os.cpu_count()} cores; "
        f"load {os.getloadavg()[0]:.1f} at start", flush=True)
  cpu = {pad: {s: [] for s in _STRATEGIES} for pad in args.pads}
  rate = {pad: {s: [] for s in _STRATEGIES} for pad in args.pads}
  for i, order in common.alternate(args.pads, args.repeats):
    for pad in order:
      figures = run_side(pad, args)
      for strategy in _STRATEGIES:
        cpu[pad][strategy].append(figures["cpu_us"][strategy][0])
        rate[pad][strategy].append(figures["rates"][strategy][0])
    print(f"round {i + 1}/{args.repeats}: " + "; ".join(
        f"pad {pad} MiB: " + ", ".join(
            f"{s} {rate[pad][s][-1]:,.0f} examples/s {cpu[pad][s][-1]:.2f} "
            f"us CPU/example" for s in _STRATEGIES)
        for pad in args.pads), flush=True)
  for pad in args.pads:
    for strategy in _STRATEGIES:
      print(f"pad {pad} MiB, {strategy}: "
            f"{statistics.median(rate[pad][strategy]):,.0f} examples/s "
            f"({common.spread(rate[pad][strategy], 'rounds', '{:,.0f}')}); "
            f"{statistics.median(cpu[pad][strategy]):.2f} us CPU/example "
            f"({common.spread(cpu[pad][strategy], 'rounds')})")
    ratios = [m / d for m, d in zip(rate[pad]["mirrored"],
                                    rate[pad]["default"])]
    print(f"pad {pad} MiB: mirrored / default examples/s = "
          f"{common.ratio(ratios, 'rounds')}")
  first = args.pads[0]
  for pad in args.pads[1:]:
    for strategy in _STRATEGIES:
      ratios = [b / a for a, b in zip(cpu[first][strategy],
                                      cpu[pad][strategy])]
      print(f"CPU/example, {strategy}, pad {pad} MiB / pad {first} MiB: "
            f"{common.ratio(ratios, 'rounds')}")
  print(f"load {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
  main()
