"""What the tests of a split's files and its pipeline share: a few real
shards, generated once."""

import pytest

from trainer.data import files as files_lib
from trainer.data import generate

LEN = 20  # len_max_input of the shards' checks


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
  """4 train shards of 60 examples, generated for real (read only)."""
  out_dir = tmp_path_factory.mktemp("shards")
  generate.generate(
      generate.GenerateSpec(str(out_dir), "train", 4, 60, 100, seed=5),
      num_processes=1, show_progress=False)
  return out_dir


def split_files(pattern, len_max_input=LEN):
  """The training files `files.list_split` lists and checks for `pattern`."""
  return files_lib.list_split(str(pattern), "training",
                              len_max_input=len_max_input).files
