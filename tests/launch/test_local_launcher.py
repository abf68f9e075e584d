"""launch/local_multi_worker.sh: real workers, failures, Ctrl-C."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

from tests.helpers import ROOT, alive
from tests.helpers.workers import fingerprint


SMOKE = os.path.join(ROOT, "configs", "smoke.py")
LAUNCH = os.path.join(ROOT, "launch", "local_multi_worker.sh")
# A run that would not end by itself.
LONG_RUN = ("--config.train.num_steps=100000",
            "--config.train.eval_every_steps=0",
            "--config.train.steps_per_loop=10")

# PYTHON for the script: execs the real Python, after the shell lines
# `worker_1` for worker 1 (TF_CONFIG's task index 1; they may exit instead).
# Each worker first writes its pid (the trainer's, once it execs) to
# $PID_DIR/worker-<i>.pid; the port holder (no TF_CONFIG) runs unchanged.
WRAPPER = """#!/usr/bin/env bash
if [[ "${{TF_CONFIG:-}}" =~ \\"index\\":\\ ([0-9]+) ]]; then
  index=${{BASH_REMATCH[1]}}
  echo $$ >"$PID_DIR/worker-$index.pid"
  if ((index == 1)); then
{worker_1}
  fi
fi
exec {python} "$@"
"""


def write_wrapper(tmp_path, worker_1):
  path = tmp_path / "python"
  path.write_text(WRAPPER.format(worker_1=worker_1,
                                 python=shlex.quote(sys.executable)))
  path.chmod(0o755)
  (tmp_path / "pids").mkdir()
  return path


class Launch:
  """The script running in its own session, stdout and stderr in files."""

  def __init__(self, tmp_path, num_workers, *flags, python=sys.executable):
    self.tmp_path = tmp_path
    self.log_dir = tmp_path / "logs"
    self.model_dir = tmp_path / "run"
    env = {**os.environ, "PYTHON": str(python), "LOG_DIR": str(self.log_dir),
           "PID_DIR": str(tmp_path / "pids"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    self.started = time.monotonic()
    with open(tmp_path / "stdout", "w") as out, open(
        tmp_path / "stderr", "w") as err:
      # A new session (a process group to clean up), and SIGINT not ignored
      # as it may be in this process (a script can trap only a signal that
      # was not ignored when it started).
      self.process = subprocess.Popen(
          ["bash", LAUNCH, str(num_workers), f"--config={SMOKE}",
           f"--model_dir={self.model_dir}", *flags],
          cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True,
          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

  def wait(self, timeout):
    status = self.process.wait(timeout=timeout)
    self.seconds = time.monotonic() - self.started
    return status

  @property
  def stderr(self):
    return (self.tmp_path / "stderr").read_text()

  def log(self, index):
    path = self.log_dir / f"worker-{index}.log"
    return path.read_text() if path.exists() else ""

  def trainer_pid(self, index):
    return int((self.tmp_path / "pids" / f"worker-{index}.pid").read_text())

  def error_lines(self):
    return [l for l in self.stderr.splitlines() if l.startswith("error:")]

  def wait_until(self, ready, timeout=240):
    deadline = time.monotonic() + timeout
    while not ready():
      assert self.process.poll() is None, self.stderr + self.log(0)[-3000:]
      assert time.monotonic() < deadline, self.stderr + self.log(0)[-3000:]
      time.sleep(0.5)

  def kill(self):
    """Kills whatever is left of the script's session (it is its group)."""
    try:
      os.killpg(self.process.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    self.process.wait()


def test_launch_script_runs_n_workers(smoke_data, tmp_path):
  log_dir = tmp_path / "logs"
  result = subprocess.run(
      ["bash", LAUNCH, "2", f"--config={SMOKE}", f"--data_dir={smoke_data}",
       f"--model_dir={tmp_path}/run"], cwd=ROOT, capture_output=True,
      text=True, timeout=300,
      env={**os.environ, "PYTHON": sys.executable, "LOG_DIR": str(log_dir),
           "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert result.returncode == 0, result.stderr[-3000:]
  logs = [(log_dir / f"worker-{i}.log").read_text() for i in range(2)]
  assert fingerprint(logs[0]) == fingerprint(logs[1])
  assert fingerprint(result.stdout) == fingerprint(logs[0])  # chief on console
  assert (tmp_path / "run" / "export" / "saved_model.pb").exists()


def test_launch_script_dry_run_and_bad_arguments(tmp_path):
  env = {**os.environ, "PYTHON": sys.executable, "DRY_RUN": "1"}
  result = subprocess.run(
      ["bash", LAUNCH, "3", "--model_dir=/tmp/a b; rm -rf ~"], cwd=ROOT,
      capture_output=True, text=True, env=env, timeout=60)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 3
  # The command each worker runs, quoted (common.sh's `run`) so that a shell
  # reads back the same arguments.
  commands = [shlex.split(line) for line in lines]
  configs = []
  for words in commands:
    assert words[0] == "env" and words[1].startswith("TF_CONFIG=")
    configs.append(json.loads(words[1][len("TF_CONFIG="):]))
    # The trainers bind the ports the script holds (SO_REUSEPORT).
    assert words[2:7] == ["TF_GRPC_REUSE_PORT=1", sys.executable, "-m",
                          "trainer.task", "--strategy=multi_worker_mirrored"]
    assert words[-1] == "--model_dir=/tmp/a b; rm -rf ~"
  assert [c["task"]["index"] for c in configs] == [0, 1, 2]
  assert len({tuple(c["cluster"]["worker"]) for c in configs}) == 1
  assert len(set(configs[0]["cluster"]["worker"])) == 3
  for args, status in (([], 2), (["0"], 2), (["two"], 2), (["--help"], 0)):
    result = subprocess.run(["bash", LAUNCH, *args], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == status, (args, result.stderr)


def test_a_worker_failing_at_start_stops_the_others(smoke_data, tmp_path):
  # Worker 1 fails once worker 0 says it waits for it.
  python = write_wrapper(tmp_path, """\
    until grep -qs "waiting for worker 1" "$LOG_DIR/worker-0.log"; do
      sleep 0.2
    done
    echo "boom: worker 1 cannot start"
    exit 3""")
  launch = Launch(tmp_path, 2, f"--data_dir={smoke_data}", python=python)
  try:
    status = launch.wait(timeout=120)
    assert status == 3, launch.stderr
    assert launch.error_lines() == [
        "error: worker 1 exited with status 3: boom: worker 1 cannot start"]
    # Worker 0 was stopped by the SIGTERM, at once (it waits for the
    # others in Python: trainer/training/strategy.py).
    assert f"logs: {launch.log_dir}/worker-<i>.log" in launch.stderr
    assert "error: stopped by SIGTERM while waiting for worker 1 at " in (
        launch.log_dir / "worker-0.log").read_text()
    assert not alive(launch.trainer_pid(0))  # stopped, not left waiting
    assert launch.seconds < 60, launch.seconds
  finally:
    launch.kill()


def test_a_worker_failing_mid_run_stops_the_others(smoke_data, tmp_path):
  # Worker 1 trains until the first checkpoint, then its trainer is killed
  # (SIGKILL), as the kernel's OOM killer would. Worker 0 notices the lost
  # peer by itself too (exit 1), later: the first failure is reported.
  checkpoints = shlex.quote(str(tmp_path / "run" / "checkpoints"))
  python = write_wrapper(tmp_path, f"""\
    {shlex.quote(sys.executable)} "$@" &
    trainer=$!
    until compgen -G {checkpoints}"/ckpt-*.index" >/dev/null; do
      kill -0 "$trainer" || exit 1
      sleep 0.2
    done
    kill -KILL "$trainer"
    echo "test: killed worker 1's trainer"
    exit 137""")
  launch = Launch(tmp_path, 2, f"--data_dir={smoke_data}", *LONG_RUN,
                  "--config.train.checkpoint_every_steps=20", python=python)
  try:
    status = launch.wait(timeout=240)
    assert status == 137, launch.stderr
    assert launch.error_lines() == [
        "error: worker 1 exited with status 137: test: killed worker 1's "
        "trainer"], launch.stderr
    assert not alive(launch.trainer_pid(0))
    assert launch.seconds < 120, launch.seconds
  finally:
    launch.kill()


def test_ctrl_c_stops_every_worker_with_a_checkpoint(smoke_data, tmp_path):
  python = write_wrapper(tmp_path, "    :")  # worker 1 unchanged
  launch = Launch(tmp_path, 2, f"--data_dir={smoke_data}", *LONG_RUN,
                  "--config.train.checkpoint_every_steps=100000",
                  python=python)
  try:
    # Both train (they step together), worker 1 after its first host loop.
    launch.wait_until(lambda: "train:" in launch.log(1))
    os.kill(launch.process.pid, signal.SIGINT)  # the script only
    status = launch.wait(timeout=120)
    assert status == 130, launch.stderr
    assert launch.error_lines() == []
    for i in range(2):
      assert not alive(launch.trainer_pid(i))
      # "SIGTERM: saved ...", or "stopped by another worker: saved ..." if
      # the other worker's request came first.
      assert "saved a checkpoint at step" in launch.log(i), (
          launch.log(i)[-3000:])
    assert (launch.model_dir / "checkpoints" / "checkpoint").exists()
    assert "worker exit statuses: 0 0" in launch.stderr
  finally:
    launch.kill()
