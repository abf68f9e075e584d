"""The installed package: every module of the checkout is in it (the
subpackages too), its TensorFlow extras declare one range, and the
no-TensorFlow modules import without it."""

import email
import glob
import importlib.metadata
import os
import subprocess
import sys
import zipfile

from packaging import requirements
from packaging import version

from tests.helpers import ROOT


def build_wheel(out_dir):
  """The package's wheel, built from the checkout as pip builds it."""
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                  "--no-build-isolation", "-w", str(out_dir), ROOT],
                 check=True, capture_output=True, timeout=300)
  path, = glob.glob(str(out_dir / "*.whl"))
  return path


def test_the_wheel_holds_every_module_and_the_tested_tensorflow_range(
    tmp_path):
  wheel = build_wheel(tmp_path)  # once: pip wheel is the cost here
  assert_the_extras_declare_the_tested_tensorflow_range(wheel)
  names = set(zipfile.ZipFile(wheel).namelist())
  sources = {os.path.relpath(p, ROOT) for pattern in ("trainer/**/*.py",
                                                       "configs/*.py")
             for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)}
  assert sources and sources <= names, sorted(sources - names)
  assert "trainer/data/__main__.py" in names  # python -m trainer.data


def extras_tensorflow(wheel):
  """{extra: the TensorFlow requirement it declares}, from the wheel."""
  archive = zipfile.ZipFile(wheel)
  metadata, = [n for n in archive.namelist()
               if n.endswith(".dist-info/METADATA")]
  found = {}
  for line in email.message_from_bytes(archive.read(metadata)).get_all(
      "Requires-Dist"):
    requirement = requirements.Requirement(line)
    if requirement.name.startswith("tensorflow") and requirement.marker:
      extra, = [e for e in ("cpu", "gpu", "tpu")
                if requirement.marker.evaluate({"extra": e})]
      found[extra] = requirement
  return found


def assert_the_extras_declare_the_tested_tensorflow_range(wheel):
  declared = extras_tensorflow(wheel)
  assert {e: r.name for e, r in declared.items()} == {
      "cpu": "tensorflow-cpu", "gpu": "tensorflow", "tpu": "tensorflow-tpu"}
  assert declared["gpu"].extras == {"and-cuda"}
  cpu = declared["cpu"].specifier
  # The GPU build: the same releases. The TPU build has no wheel for some
  # (2.19.0, 2.21): its range lies inside the CPU one, from the same floor.
  assert declared["gpu"].specifier == cpu
  floor = {s.version for s in cpu if s.operator == ">="}
  assert floor == {s.version for s in declared["tpu"].specifier
                   if s.operator == ">="} and len(floor) == 1, declared
  # tensorflow-tpu has wheels for 2.18.0, 2.19.1, 2.20.0 (their CPU builds
  # passed) and none for 2.21.
  tpu = declared["tpu"].specifier
  assert [v for v in ("2.18.0", "2.19.1", "2.20.0", "2.21.0")
          if tpu.contains(v)] == ["2.18.0", "2.19.1", "2.20.0"], tpu
  # The TensorFlow these tests run on is one the package declares.
  builds = {r.name: r.specifier for r in declared.values()}
  installed = {}
  for name in builds:
    try:
      installed[name] = version.Version(importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
      pass
  assert installed, f"none of {sorted(builds)} is installed"
  for name, found in installed.items():
    assert builds[name].contains(found), (name, str(found), str(builds[name]))


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
