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


# The main arena's size (mallinfo2's `arena`: bytes glibc took with sbrk)
# after 20 MB of 100 KB blocks (below the mmap threshold: from the heap).
MALLOC_SCRIPT = """
import ctypes
import sys
from configs import default
from trainer.training import runtime


class MallInfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in (
      "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
      "fsmblks", "uordblks", "fordblks", "keepcost")]


libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.mallinfo2.restype = MallInfo2
config = default.get_config()
config.train.inter_op_threads = 0
config.train.malloc_top_pad_mb = int(sys.argv[1])
runtime.configure(config)
before = libc.mallinfo2().arena
blocks = [libc.malloc(100_000) for _ in range(200)]
print((libc.mallinfo2().arena - before) >> 20)
"""


def heap_growth_mib(pad_mb: int) -> int:
  result = subprocess.run([sys.executable, "-c", MALLOC_SCRIPT, str(pad_mb)],
                          cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=True)
  return int(result.stdout)


def test_the_malloc_top_pad_grows_the_heap_by_the_pad_at_once():
  # 20 MB asked: with a 64 MiB pad the first growth takes the pad as well.
  assert heap_growth_mib(64) >= 64
  assert heap_growth_mib(0) < 40  # glibc's own pad: about what was asked
