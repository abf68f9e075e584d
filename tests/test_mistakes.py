"""A table of the mistakes a new user makes first: each is one `error:` line
on stderr, exit status 2, no traceback, and (where it can be) before
TensorFlow loads.

Each case runs the real entry point in a process whose `import tensorflow`
fails as on a machine without it (a sitecustomize on PYTHONPATH puts None in
sys.modules["tensorflow"]): a mistake reported before the import prints its
own line; one found after it would print the no-TensorFlow line instead.
"""

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, SMOKE

NO_TENSORFLOW = ("error: TensorFlow is not installed: install the package "
                 "with the extra for this machine, pip install "
                 "'masked-attention-trainer[cpu]'")


@pytest.fixture(scope="module")
def without_tensorflow(tmp_path_factory):
  """An environment in which `import tensorflow` fails as if not installed."""
  site = tmp_path_factory.mktemp("no_tensorflow")
  (site / "sitecustomize.py").write_text(
      "import sys\nsys.modules['tensorflow'] = None  # not installed\n")
  return {**os.environ, "PYTHONPATH": str(site)}


def run(env, module, *args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", module, *args],
                        capture_output=True, text=True, env=env, cwd=cwd,
                        timeout=120)


def assert_one_line(result, *fragments):
  lines = result.stderr.splitlines()
  assert result.returncode == 2, result.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])
  return lines[0]


BROKEN_CONFIG = "def get_config(:\n"
OWN_CONFIG = """from trainer.configs import default


def get_config():
  config = default.get_config()
  config.train.num_steps = 77
  return config
"""


@pytest.mark.parametrize("args, fragments", [
    # A misspelt field with the default config (ml_collections resolves its
    # overrides when the flag is defined) and with a named one.
    (["--config.train.num_step=5"],
     ["--config.train.num_step: no such config field in ",
      "configs/default.py (did you mean --config.train.num_steps?",
      "docs/configuration.md"]),
    ([f"--config={SMOKE}", "--config.trian.num_steps=5"],
     ["--config.trian.num_steps: no such config field in ",
      "did you mean --config.train.num_steps?"]),
    (["--config.model.hiden_size=4"],
     ["did you mean --config.model.hidden_size?"]),
    # Config files: the .py forgotten, a name that is no config.
    (["--config=configs/scaled"],
     ["--config=configs/scaled: no such file (did you mean "
      "--config=configs/scaled.py? the package's configs: configs/default.py"]),
    (["--config=configs/nope.py"], ["--config=configs/nope.py: no such file"]),
    (["--config={tmp}/broken.py"],
     ["cannot load --config=", "broken.py: SyntaxError"]),
    # Values.
    (["--config.train.num_steps=many"],
     ["flag --config.train.num_steps=many: invalid literal for int()"]),
    (["--config.model=3"], ["flag --config.model=3:"]),
    (["--config.train.num_steps=0"],
     ["config.train.num_steps=0 must be positive"]),
    (["--config.train.learning_rate=-1"], ["config.train.learning_rate=-1"]),
    (["--config.train.accumulation_steps=0"],
     ["config.train.accumulation_steps=0 must be positive"]),
    (["--config.train.ema_decay=1.0"],
     ["config.train.ema_decay=1.0 must be in [0, 1) (0: off; e.g. 0.999)"]),
    (["--config.train.inter_op_threads=-1"],
     ["config.train.inter_op_threads=-1 must be >= 0"]),
    (["--config.train.malloc_top_pad_mb=4096"],
     ["config.train.malloc_top_pad_mb=4096 must be in [0, 2047]"]),
    # Flags and arguments.
    (["--strategy=bogus"], ["flag --strategy=bogus: value should be one of"]),
    (["--num_step=5"], ["Unknown command line flag 'num_step'"]),
    (["extra"], ["unexpected arguments ['extra']"]),
    # A valid command on a machine without TensorFlow: the extras, named.
    ([f"--config={SMOKE}"], [NO_TENSORFLOW[len("error: "):], "[gpu]",
                             "[tpu]"]),
])
def test_trainer_mistakes_are_one_line_before_tensorflow(
    without_tensorflow, tmp_path, args, fragments):
  (tmp_path / "broken.py").write_text(BROKEN_CONFIG)
  args = [a.replace("{tmp}", str(tmp_path)) for a in args]
  assert_one_line(run(without_tensorflow, "trainer.task", *args), *fragments)


@pytest.mark.parametrize("module, args", [
    ("trainer.predict", ["--model_dir={tmp}", "x=3,y=4:x*y"]),
    ("trainer.data", ["verify", "--data_dir={tmp}"]),
])
def test_other_commands_without_tensorflow_name_the_extras(
    without_tensorflow, tmp_path, module, args):
  # Past their own checks, up to the import: a directory with a (stand-in)
  # SavedModel file, a data directory.
  (tmp_path / "saved_model.pb").write_bytes(b"")
  args = [a.replace("{tmp}", str(tmp_path)) for a in args]
  assert_one_line(run(without_tensorflow, module, *args),
                  NO_TENSORFLOW[len("error: "):])


def test_print_config_from_any_directory_without_tensorflow(
    without_tensorflow, tmp_path):
  # A shipped config by its checkout path, from a directory that has no
  # configs/ (as after a wheel install), overrides applied; no TensorFlow.
  result = run(without_tensorflow, "trainer.task", "--config=configs/scaled.py",
               "--config.train.num_steps=123", "--print_config", cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "  num_steps: 123\n" in result.stdout
  assert "  hidden_size: 24\n" in result.stdout  # scaled.py's, not default's
  assert result.stderr == ""
  # A user's own config imports the default from the package.
  (tmp_path / "mine.py").write_text(OWN_CONFIG)
  result = run(without_tensorflow, "trainer.task", "--config=mine.py",
               "--print_config", cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "  num_steps: 77\n" in result.stdout


def test_a_configs_package_in_the_working_directory_is_not_the_default(
    without_tensorflow, tmp_path):
  # The default config is the package's own file, not whatever `configs`
  # the working directory holds.
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "__init__.py").write_text("")
  (tmp_path / "configs" / "default.py").write_text(
      "raise SystemExit('the working directory config ran')\n")
  result = run(without_tensorflow, "trainer.task", "--print_config",
               cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "  num_steps: 15000\n" in result.stdout
