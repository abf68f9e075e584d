"""Checks of the per-operation eval metrics, shared by the smoke tests, and
the eval line's reader (benchmarks/time_to_accuracy.py's too)."""

from __future__ import annotations

import re

import pytest

# The names the README gives evaluation's operations ("What a run does":
# `+ - *`, named `add`, `sub`, `mul`; metrics.json's by_op and the eval/
# loss_<name>, accuracy_<name> scalars), in the eval line's order. A
# documented fact, not trainer.training.train.OPERATION_NAMES:
# tests/training/test_train.py holds the product to it.
OPERATIONS = {"+": "add", "-": "sub", "*": "mul"}
OPERATION_NAMES = tuple(OPERATIONS.values())


# The trainer's eval line, as every version of it prints it (an absl prefix
# allowed): the step and the accuracy.
EVAL_LINE = re.compile(r"eval(?: \(EMA weights\))? at step (\d+): loss [^,]+, "
                       r"accuracy (\d+\.\d+)")


def parse_eval_line(line: str) -> tuple[int, float] | None:
  """(step, accuracy) of a trainer eval line, else None."""
  found = EVAL_LINE.search(line)
  return (int(found.group(1)), float(found.group(2))) if found else None


def eval_line(step):
  """A regex of the whole eval line at `step`: the totals, then the accuracy
  per operation."""
  return (rf"^eval at step {step}: loss \d+\.\d{{4}}, accuracy \d\.\d{{4}} "
          r"over [\d,]+ (?:of [\d,]+ )?examples(?: \([\d,]+ left out: "
          r"[^)]*\))?; \+ \d\.\d{4}, - \d\.\d{4}, \* \d\.\d{4}$")


def assert_by_op_adds_up(eval_metrics):
  """The per-operation examples, loss and correct counts sum to the totals."""
  by_op = eval_metrics["by_op"]
  assert sorted(by_op) == sorted(OPERATION_NAMES)
  assert sum(m["examples"] for m in by_op.values()) == eval_metrics["examples"]
  assert all(m["examples"] > 0 for m in by_op.values()), by_op
  total = eval_metrics["examples"]
  assert sum(m["loss"] * m["examples"] for m in by_op.values()) == (
      pytest.approx(eval_metrics["loss"] * total, rel=1e-5))
  assert sum(round(m["accuracy"] * m["examples"]) for m in by_op.values()) == (
      round(eval_metrics["accuracy"] * total))
