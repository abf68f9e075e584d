"""TensorFlow's runtime options (trainer/training/runtime.py): the inter-op
pool gets config.train.inter_op_threads threads, or one line when it is too
late to size it. In a fresh interpreter: pytest's own may have run ops."""

import subprocess
import sys

from tests.helpers import ROOT

SCRIPT = """
import sys
import tensorflow as tf
from configs import default
from trainer import errors
from trainer.training import runtime
config = default.get_config()
config.train.inter_op_threads = int(sys.argv[1])
runtime.configure(config)
print(tf.config.threading.get_inter_op_parallelism_threads())
tf.constant(1.0) + 1.0  # the pools start
config.train.inter_op_threads += 1  # the same size again is no change
try:
  runtime.configure(config)
except errors.UserError as e:
  print(e)
"""


def configured(threads: int) -> list[str]:
  result = subprocess.run([sys.executable, "-c", SCRIPT, str(threads)],
                          cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=True)
  return result.stdout.splitlines()


def test_the_inter_op_pool_gets_the_configured_threads():
  size, late = configured(1)
  assert size == "1"
  assert late.startswith("config.train.inter_op_threads=2: TensorFlow has "
                         "already started its thread pools")


def test_zero_leaves_tensorflow_its_default():
  assert configured(0)[0] == "0"  # 0: TensorFlow picks (one a core)
