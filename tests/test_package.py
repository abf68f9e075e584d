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
  assert_the_metadata_names_the_licence_and_pythons(wheel)
  archive = zipfile.ZipFile(wheel)
  names = set(archive.namelist())
  # The configs ship inside the package (trainer/configs links to configs/).
  sources = {os.path.relpath(p, ROOT) for p in glob.glob(
      os.path.join(ROOT, "trainer", "**", "*.py"), recursive=True)} | {
          f"trainer/configs/{os.path.basename(p)}"
          for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))}
  assert sources and sources <= names, sorted(sources - names)
  assert "trainer/configs/scaled.py" in sources
  assert "trainer/data/__main__.py" in names  # python -m trainer.data
  # One top-level package: no generic `configs` (or tests, benchmarks)
  # beside it to collide with another project's.
  assert {n.split("/")[0] for n in names
          if not n.split("/")[0].endswith(".dist-info")} == {"trainer"}
  top_level, = [n for n in names if n.endswith(".dist-info/top_level.txt")]
  assert archive.read(top_level).decode().split() == ["trainer"]
  assert_the_installed_wheel_finds_its_configs(archive, tmp_path)


def assert_the_installed_wheel_finds_its_configs(archive, tmp_path):
  # The wheel's files on the path first (a pure-Python wheel installs as its
  # unzipped files), run from a directory without configs/: --config=
  # configs/X.py is the package's own file.
  site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
  archive.extractall(site)
  elsewhere.mkdir()
  env = {**os.environ, "PYTHONPATH": str(site)}
  result = subprocess.run(
      [sys.executable, "-c", "import trainer.task; print(trainer.task.__file__)"],
      capture_output=True, text=True, cwd=elsewhere, env=env, check=True)
  assert result.stdout.strip() == str(site / "trainer" / "task.py")
  result = subprocess.run(
      [sys.executable, "-m", "trainer.task", "--config=configs/scaled.py",
       "--config.train.num_steps=321", "--print_config"],
      capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "  num_steps: 321\n" in result.stdout
  assert "  hidden_size: 24\n" in result.stdout  # scaled.py's own value


def assert_the_metadata_names_the_licence_and_pythons(wheel):
  archive = zipfile.ZipFile(wheel)
  info = {os.path.dirname(n) for n in archive.namelist()
          if n.endswith(".dist-info/METADATA")}.pop()
  metadata = email.message_from_bytes(archive.read(f"{info}/METADATA"))
  assert metadata["License"] == "Apache-2.0"
  assert "License :: OSI Approved :: Apache Software License" in (
      metadata.get_all("Classifier"))
  licence = [n for n in archive.namelist()
             if n.startswith(f"{info}/") and "LICENSE" in n]
  assert licence, archive.namelist()
  with open(os.path.join(ROOT, "LICENSE"), "rb") as f:
    assert archive.read(licence[0]) == f.read()
  assert metadata["Requires-Python"] == ">=3.10"
  pythons = [c.rsplit(" :: ", 1)[1] for c in metadata.get_all("Classifier")
             if c.startswith("Programming Language :: Python :: 3.")]
  assert pythons == ["3.10", "3.11", "3.12", "3.13"]


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
  modules = ("trainer.data.schema", "trainer.data.problems",
             "trainer.data.vocab", "trainer.data.manifest",
             "trainer.data.generate", "trainer.data.__main__",
             "trainer.training.plan", "trainer.training.schedule",
             "trainer.training.stop")
  code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
          "print(sorted(m for m in ('tensorflow', 'keras') "
          "if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, cwd=ROOT, check=True)
  assert result.stdout.strip() == "[]"
