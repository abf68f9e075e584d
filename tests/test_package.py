"""The installed package: every module of the checkout is in it (the
subpackages too), and the no-TensorFlow modules import without it."""

import glob
import os
import subprocess
import sys
import zipfile

from tests.helpers import ROOT


def test_the_wheel_holds_every_module_and_config(tmp_path):
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                  "--no-build-isolation", "-w", str(tmp_path), ROOT],
                 check=True, capture_output=True, timeout=300)
  wheel, = glob.glob(str(tmp_path / "*.whl"))
  names = set(zipfile.ZipFile(wheel).namelist())
  sources = {os.path.relpath(p, ROOT) for pattern in ("trainer/**/*.py",
                                                       "configs/*.py")
             for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)}
  assert sources and sources <= names, sorted(sources - names)
  assert "trainer/data/__main__.py" in names  # python -m trainer.data


def test_the_data_core_imports_without_tensorflow():
  modules = ("trainer.data.format", "trainer.data.problems",
             "trainer.data.vocab", "trainer.data.manifest",
             "trainer.data.datasets", "trainer.data.__main__",
             "trainer.training.plan", "trainer.training.schedule",
             "trainer.training.stop")
  code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
          "print(sorted(m for m in ('tensorflow', 'keras') "
          "if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, cwd=ROOT, check=True)
  assert result.stdout.strip() == "[]"
