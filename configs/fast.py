"""Fast config: configs/scaled.py's recipe at half the step cost, to 0.99.

  python -m trainer.task --config=configs/fast.py   # stops at 0.99
  python benchmarks/time_to_accuracy.py --config=configs/fast.py \
      --target=0.99 --repeats=3 --seeds --vs_config=configs/scaled.py

Hardware: a 2-core CPU (AVX-512, no accelerator, TF 2.21), shared.
Time and result there: 0.99 eval accuracy at step 12,000 (scaled: 11,500)
in 161 s from process start (scaled: 248 s in the same pair, load average
~10): 0.65x the time, 0.60x the CPU seconds (2 pairs), ~11 ms of CPU a step. From 1 of 3 initial
weights only: seeds 1 and 2 peak at 0.9838 and 0.9843 (0.9855 and 0.9873
with 16,000 steps; scaled from seed 1 reaches 0.99 at 12,000); subtraction
is what stays behind. Not the 90 s goal:
docs/measurements.md ("Time to 0.99") has the limit, the curve, the seeds
and the time split.

One residual block instead of scaled's two: a step costs about half as much
(the blocks' attention holds the step's time) and the eval curve stays
within 0.004 of scaled's to step 10,000 (0.9404 vs 0.9403 at 6,000), then
falls 500 steps behind. Evaluation starts at step 8,000 (every 500): the 15
passes before it are time on the clock, and accuracy is below 0.97 there.
"""

from trainer.configs import scaled


def get_config():
  config = scaled.get_config()
  # One block: half the step cost; the same eval accuracy at 6,000 steps.
  config.model.num_layers = 1
  # End at the first whole-split evaluation >= 0.99 (MLPerf-style).
  config.train.target_accuracy = 0.99
  # No evaluation before step 8,000 (0.96 there): each costs a pass of the
  # 10,000 eval examples on the clock and cannot reach the target.
  config.train.eval_start_step = 8_000
  config.train.eval_every_steps = 500
  return config
