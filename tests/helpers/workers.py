"""Trainer worker processes of one MultiWorkerMirrored run on 127.0.0.1."""

import json
import re
import socket
import subprocess
import time

import pytest

from tests.helpers import SMOKE
from tests.helpers.trainer_process import module_command, start


def reserve_ports(count: int) -> list[socket.socket]:
  """`count` localhost ports, each held by a bound socket until closed.

  SO_REUSEPORT: a worker started with TF_GRPC_REUSE_PORT=1 (TensorFlow's
  gRPC server then binds with SO_REUSEPORT too) listens on a held port while
  any other process gets "address in use" for it: no window between finding
  a free port and the worker binding it. The sockets never listen, so every
  connection goes to the worker.
  """
  sockets = []
  for _ in range(count):
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind(("127.0.0.1", 0))
    sockets.append(held)
  return sockets


class Workers:
  """N trainer processes with TF_CONFIG; logs under log_dir."""

  def __init__(self, count, flags, log_dir, with_chief=False, env=None,
               worker_flags=None, config=SMOKE, chief_type="chief"):
    """with_chief: the first process is a `chief` task and the others
    `worker` 0..count-2, as Vertex AI sets TF_CONFIG; else all are workers.
    chief_type: that first task's job name (`master`: the legacy AI
    Platform Training service's).
    worker_flags: {process index: flags after `flags`} for some of them.
    config: the --config file of every process (log_dir: a pathlib.Path)."""
    # Held until kill() (see reserve_ports): no race for them.
    self.held_ports = reserve_ports(count)
    self.ports = [s.getsockname()[1] for s in self.held_ports]
    addresses = [f"127.0.0.1:{p}" for p in self.ports]
    tasks = [("worker", i) for i in range(count)]
    cluster = {"worker": addresses}
    if with_chief:
      cluster = {chief_type: addresses[:1], "worker": addresses[1:]}
      tasks = [(chief_type, 0)] + [("worker", i) for i in range(count - 1)]
    self.log_dir = log_dir
    self.tmp_dir = log_dir / "tmp"  # TMPDIR: where non-chiefs write
    self.tmp_dir.mkdir(parents=True, exist_ok=True)
    self.processes = []
    for index, (task_type, task_index) in enumerate(tasks):
      worker_env = {
          **(env or {}),
          "TMPDIR": str(self.tmp_dir), "TF_GRPC_REUSE_PORT": "1",
          "TF_CONFIG": json.dumps({"cluster": cluster, "task": {
              "type": task_type, "index": task_index}})}
      log = open(log_dir / f"worker-{index}.log", "w")
      self.processes.append(start(
          module_command("trainer.task", f"--config={config}",
                         "--strategy=multi_worker_mirrored", *flags,
                         *(worker_flags or {}).get(index, [])),
          env=worker_env, stdout=log, stderr=subprocess.STDOUT))

  def wait(self, timeout):
    deadline = time.monotonic() + timeout
    codes = []
    for process in self.processes:
      try:
        codes.append(process.wait(timeout=max(deadline - time.monotonic(),
                                              1)))
      except subprocess.TimeoutExpired:
        self.kill()
        pytest.fail(f"workers still running after {timeout} s:\n"
                    + self.logs_tail())
    return codes

  def wait_until(self, ready, timeout=180):
    """Polls `ready()` until it is true; fails if a worker ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
      assert all(p.poll() is None for p in self.processes), self.logs_tail()
      assert time.monotonic() < deadline, self.logs_tail()
      time.sleep(0.2)

  def kill(self):
    """Ends every worker still running (a stopped one too), frees the ports."""
    for process in self.processes:
      if process.poll() is None:
        process.kill()
        process.wait()
    for held in self.held_ports:
      held.close()

  def log(self, index):
    return (self.log_dir / f"worker-{index}.log").read_text()

  def logs_tail(self):
    return "\n".join(f"--- worker {i}\n" + self.log(i)[-2000:]
                     for i in range(len(self.processes)))


def fingerprint(log):
  found = re.findall(r"final weights sha256: (\w+)", log)
  assert len(found) == 1, log[-2000:]
  return found[0]
