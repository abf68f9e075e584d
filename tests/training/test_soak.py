"""Soak: 2 MultiWorkerMirrored workers for thousands of steps keep their
threads, memory and open files flat (tests/helpers/soak.py samples them, as
benchmarks/bench_soak.py does from the command line).

Each collective op once ran with a timeout that held a thread for 300 s:
~13 threads a step, 15,696 by step 1,150, then a worker aborted. A test of 40
steps never sees that; this one fits a slope over the ~3,000 steps
after warm-up.
"""

import statistics

from tests.helpers import SMOKE
from tests.helpers import soak


STEPS = 6000
# The slopes start after the first 25 % of the steps: past the first host
# loops (tf.data threads, XLA code) and the first evaluation and checkpoint
# at step 500, which raise RSS once by ~20-30 MB (later ones do not).
WARMUP = 0.25
# Per 1,000 steps. Measured on 2 cores (smoke config, 100 steps per host
# loop, eval and a checkpoint every 500): threads 150-166 (eval and
# checkpoints start short-lived threads), slopes 0 to +1.2 threads per 1,000
# steps; RSS flat within 1 MB from step 600 to 2,100, and once 47 MB lower
# after it (memory handed back); 20-22 open files. With the first eval
# inside the window (one run), RSS +9.5 MB per 1,000 steps: hence WARMUP.
# The leak this guards against was +13,000 threads per 1,000 steps.
MAX_SLOPES = {"threads": 2.0, "rss_mb": 5.0, "open_files": 1.0}
MAX_RISE = {"threads": 10, "rss_mb": 20.0, "open_files": 4}


def test_two_workers_stay_flat_for_thousands_of_steps(smoke_data, tmp_path):
  flags = [f"--data_dir={smoke_data}", f"--model_dir={tmp_path}/run",
           f"--config.train.num_steps={STEPS}",
           "--config.train.steps_per_loop=100",
           "--config.train.eval_every_steps=500",
           "--config.train.checkpoint_every_steps=500"]
  with open(tmp_path / "samples.txt", "w") as out:
    result = soak.run_soak(2, SMOKE, flags, str(tmp_path), interval=1.0,
                           timeout=900, out=out)
    soak.summarize(result, warmup=WARMUP, out=out)
  report = (tmp_path / "samples.txt").read_text()
  print(report)
  assert result.codes == [0, 0], report
  for worker in range(2):
    steady = result.steady(worker, warmup=WARMUP)
    assert len(steady) >= 5, report  # enough samples to fit a slope
    # The progress line moves in jumps of up to ~1,000 steps (one all-reduce
    # a step: ~225 steps/s here), so the window is ~half of the steps.
    assert steady[-1].step - steady[0].step >= STEPS // 3, report
    slopes = result.slopes(worker, warmup=WARMUP)
    third = len(steady) // 3
    for figure, limit in MAX_SLOPES.items():
      assert slopes[figure] < limit, (worker, figure, report)
      # Medians of the first and last thirds: eval and checkpoints start
      # short-lived threads (a sample may see +15), a leak stays.
      first, last = (statistics.median(getattr(s, figure) for s in part)
                     for part in (steady[:third], steady[-third:]))
      assert last - first <= MAX_RISE[figure], (worker, figure, report)


def test_the_slope_is_per_1000_steps():
  samples = [soak.Sample(seconds=i, step=1000 * i, threads=150 + 13 * i,
                         rss_mb=700.0, open_files=20)
             for i in range(1, 6)]
  assert soak.slope_per_1000_steps(samples, "threads") == 13
  assert soak.slope_per_1000_steps(samples, "rss_mb") == 0
