"""trainer/training/plan.py: one check of the config, one place for what
follows from it."""

import ast
import os

import pytest

from configs import smoke
from trainer import errors
from trainer.training import plan

from tests.helpers import ROOT


def test_patterns_resolve_against_data_dir_unless_absolute_or_a_url():
  config = smoke.get_config()
  config.data.eval_files = "gs://b/eval-*"
  run_plan = plan.resolve(config, data_dir="/data/arith")
  assert run_plan.patterns == {
      "training": f"/data/arith/{config.data.train_files}",
      "evaluation": "gs://b/eval-*"}
  assert run_plan.pattern_sources == {"training": "--data_dir",
                                      "evaluation": "config.data.eval_files"}
  without = plan.resolve(config)
  assert without.patterns["training"] == config.data.train_files
  assert without.pattern_sources["training"] == "config.data.train_files"


@pytest.mark.parametrize("exact", [False, True])
def test_seeds_and_batch_counts_of_a_resumed_run(exact):
  config = smoke.get_config()
  config.seed = 7
  config.train.exact_resume = exact
  config.train.eval_steps = 3
  run_plan = plan.resolve(config, num_replicas=4, num_input_pipelines=2)
  assert run_plan.per_replica_batch_size == config.train.global_batch_size // 4
  assert run_plan.replicas_per_pipeline == 2
  # Each pipeline feeds 2 replicas: a batch per replica per step.
  assert run_plan.take_batches == 3 * 2
  assert run_plan.seed(training=False, start_step=50) == 7
  if exact:  # the same order, the first 50 steps skipped
    assert run_plan.seed(training=True, start_step=50) == 7
    assert run_plan.skip_batches(50) == 50 * 2
  else:  # a new order, nothing skipped
    assert run_plan.seed(training=True, start_step=50) == 57
    assert run_plan.skip_batches(50) == 0
  config.train.eval_steps = 0
  assert plan.resolve(config).take_batches is None
  # Accumulating 3 batches a step: a step read 3 batches per replica.
  config.train.accumulation_steps = 3
  run_plan = plan.resolve(config, num_replicas=4, num_input_pipelines=2)
  assert run_plan.skip_batches(50) == (50 * 3 * 2 if exact else 0)


def test_a_plan_is_frozen():
  run_plan = plan.resolve(smoke.get_config())
  with pytest.raises(AttributeError):
    run_plan.num_replicas = 2
  with pytest.raises(TypeError):
    run_plan.patterns["training"] = "elsewhere"


@pytest.mark.parametrize("field", ["steps_per_loop", "steps_per_call",
                                   "accumulation_steps"])
def test_each_bad_field_is_named_once_by_resolve(field):
  config = smoke.get_config()
  config.train[field] = 0
  with pytest.raises(errors.UserError,
                     match=rf"^config\.train\.{field}=0 must be positive$"):
    plan.resolve(config)


# Config fields holding strings or paths that need parsing or resolving.
_PARSED_FIELDS = ("profile_steps", "train_files", "eval_files")


def test_no_module_but_the_plan_reads_the_parsed_fields():
  readers = {}
  for directory, _, names in os.walk(os.path.join(ROOT, "trainer")):
    for name in names:
      if not name.endswith(".py"):
        continue
      path = os.path.join(directory, name)
      with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
      for node in ast.walk(tree):  # x.field and x["field"], not prose
        field = (node.attr if isinstance(node, ast.Attribute) else
                 node.slice.value if isinstance(node, ast.Subscript) and
                 isinstance(node.slice, ast.Constant) else None)
        if field in _PARSED_FIELDS:
          readers.setdefault(field, set()).add(os.path.relpath(path, ROOT))
  assert readers == {field: {"trainer/training/plan.py"}
                     for field in _PARSED_FIELDS}


def test_a_negative_eval_start_step_is_one_error():
  config = smoke.get_config()
  config.train.eval_start_step = -1
  with pytest.raises(
      errors.UserError,
      match=r"^config\.train\.eval_start_step=-1 must be >= 0$"):
    plan.resolve(config)
