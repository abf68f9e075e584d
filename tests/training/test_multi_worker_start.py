"""A multi-worker run's start: workers that disagree refuse together, and a
worker 0 whose peer never comes says so, gives up, and obeys signals.

Real trainer processes with TF_CONFIG on 127.0.0.1 (tests/helpers/workers.py).
"""

import json
import signal
import threading
import time

import pytest

from tests.helpers import error_lines
from tests.helpers.trainer_process import start, trainer_command
from tests.helpers.workers import Workers, reserve_ports


@pytest.fixture(scope="module")
def other_smoke_data(tmp_path_factory):
  """The smoke data set generated with another seed: other examples, the
  same shard names and counts."""
  from configs import smoke  # pylint: disable=g-import-not-at-top
  from trainer.data import generate  # pylint: disable=g-import-not-at-top
  config = smoke.get_config()
  return generate.ensure_dataset(
      str(tmp_path_factory.mktemp("other_smoke_data")), config.data,
      config.seed + 1, num_processes=1)


# (flags of worker 1 only, the field named, worker 0's value, worker 1's).
DISAGREEMENTS = {
    "learning_rate": (["--config.train.learning_rate=0.001"],
                      "config.train.learning_rate", "0.003", "0.001"),
    # Two fields differ: the first in the config's order is named.
    "hidden_size_and_num_steps": (
        ["--config.train.num_steps=30", "--config.model.hidden_size=12"],
        "config.model.hidden_size", "8", "12"),
    "num_steps": (["--config.train.num_steps=30"],
                  "config.train.num_steps", "40", "30"),
}


@pytest.mark.parametrize("case", [*DISAGREEMENTS, "data_dir"])
def test_workers_that_disagree_both_refuse_naming_the_field(
    case, smoke_data, other_smoke_data, tmp_path):
  model_dir = tmp_path / "run"
  if case == "data_dir":
    flags = {0: [f"--data_dir={smoke_data}"],
             1: [f"--data_dir={other_smoke_data}"]}
    field = "the data set (--data_dir)"
    values = (f"worker 0: {smoke_data} with manifest.json sha256 ",
              f"worker 1: {other_smoke_data} with manifest.json sha256 ")
  else:
    extra, field, first, second = DISAGREEMENTS[case]
    flags = {0: [f"--data_dir={smoke_data}"],
             1: [f"--data_dir={smoke_data}", *extra]}
    values = (f"(worker 0: {first}, worker 1: {second})",)
  workers = Workers(2, [f"--model_dir={model_dir}"], tmp_path,
                    worker_flags=flags)
  try:
    assert workers.wait(timeout=120) == [2, 2], workers.logs_tail()
  finally:
    workers.kill()
  for index in range(2):
    log = workers.log(index)
    (line,) = error_lines(log)
    assert line.startswith(f"error: the workers disagree on {field} ("), line
    for value in values:
      assert value in line, line
    assert line.endswith("start every worker with the same config and data")
    assert "Traceback" not in log, log[-2000:]
  # Refused before the run directory was made: nothing written.
  assert not model_dir.exists()


def start_lonely_worker_0(tmp_path, *flags):
  """Worker 0 of a 2-worker TF_CONFIG whose worker 1 never starts (its
  address a held port nothing listens on). Returns (process, worker 1's
  address, held sockets, lines of stderr as they come)."""
  held = reserve_ports(2)
  addresses = [f"127.0.0.1:{s.getsockname()[1]}" for s in held]
  env = {"TF_GRPC_REUSE_PORT": "1",
         "TF_CONFIG": json.dumps({"cluster": {"worker": addresses},
                                  "task": {"type": "worker", "index": 0}})}
  process = start(
      trainer_command("--strategy=multi_worker_mirrored",
                      f"--model_dir={tmp_path / 'run'}", *flags),
      env=env,
      # As a terminal's Ctrl-C finds it (see DESIGN.md, Signals).
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  lines = []
  threading.Thread(target=lambda: lines.extend(process.stderr),
                   daemon=True).start()
  return process, addresses[1], held, lines


def wait_for_line(process, lines, phrase, timeout):
  deadline = time.monotonic() + timeout
  while not any(phrase in line for line in lines):
    assert process.poll() is None, "".join(lines)
    assert time.monotonic() < deadline, "".join(lines)
    time.sleep(0.2)


def end(process, held):
  """Kills `process` if it still runs and frees the `held` sockets."""
  if process.poll() is None:
    process.kill()
  for s in held:
    s.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT],
                         ids=lambda s: signal.Signals(s).name)
def test_worker_0_says_whom_it_waits_for_and_a_signal_ends_it(
    signum, tmp_path):
  process, missing, held, lines = start_lonely_worker_0(tmp_path)
  try:
    # Within seconds of TensorFlow's start (the import alone takes ~5 s).
    wait_for_line(process, lines, f"waiting for worker 1 at {missing}",
                  timeout=30)
    assert "config.train.startup_timeout_s" in "".join(lines)
    process.send_signal(signum)
    status = process.wait(timeout=5)
  finally:
    end(process, held)
  time.sleep(0.2)  # the reader thread's last lines
  text = "".join(lines)
  assert status == 128 + signum, text
  (line,) = error_lines(text)
  assert line == (f"error: stopped by {signal.Signals(signum).name} while "
                  f"waiting for worker 1 at {missing} to start: nothing "
                  "trained, nothing to save"), text
  assert "Traceback" not in text
  assert not (tmp_path / "run").exists()


def test_worker_0_gives_up_after_the_startup_timeout(tmp_path):
  process, missing, held, lines = start_lonely_worker_0(
      tmp_path, "--config.train.startup_timeout_s=4")
  try:
    status = process.wait(timeout=60)
  finally:
    end(process, held)
  time.sleep(0.2)
  text = "".join(lines)
  assert status == 1, text
  assert f"waiting for worker 1 at {missing}" in text  # said before giving up
  (line,) = error_lines(text)
  assert line.startswith(f"error: worker 1 at {missing} never started: "
                         "waited 4 s (config.train.startup_timeout_s)"), line
  assert "Traceback" not in text
  assert not (tmp_path / "run").exists()
