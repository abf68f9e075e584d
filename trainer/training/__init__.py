"""Training: the resolved plan, the schedule of periodic actions, the outer
loop, the Trainer (model, optimizer, compiled steps), checkpoints, stops,
the run directory and its lock, strategies."""
