"""The fault suite, data: damaged records, empty, tiny and odd data, and
absurd or interrupted generate runs, met by the real commands in real
processes.

Every case asserts the one `error:` line, the exit status, no traceback,
and what is left on disk: a bad record met while training keeps the latest
checkpoint; a refusal before training leaves no run directory; a refused
generate writes nothing. Before these checks, 0-byte training shards made
the trainer spin without a line (the training pipeline repeats its files,
and an epoch of nothing repeats forever), and an eval split smaller than a
batch reported "over 0 examples" and exit 0.
"""

import glob
import os
import shutil
import signal
import time

import pytest

from trainer.data import generate
from trainer.data import vocab

from tests.helpers import alive, error_lines, examples
from tests.helpers.damage import (flip_bytes, random_bytes, restored_step,
                                  truncate)
from tests.helpers.trainer_process import (LONG_RUN, Trainer,
                                           assert_one_error, module_command,
                                           run_module, run_trainer, start)

TRAIN = "train-*-of-*.tfrecord"
SHARD = "train-00000-of-00004.tfrecord"
# The error must come within seconds (start-up included), not as a timeout.
BOUND_S = 60


def copy_data(smoke_data, tmp_path, keep_manifest=True):
  data_dir = tmp_path / "data"
  shutil.copytree(smoke_data, data_dir)
  if not keep_manifest:
    (data_dir / "manifest.json").unlink()
  return data_dir


def refused_up_front(tmp_path, data_dir, *flags):
  """Runs the trainer on data_dir; returns (result, seconds), asserting that
  it wrote no run directory."""
  start = time.perf_counter()
  result = run_trainer(f"--data_dir={data_dir}", f"--model_dir={tmp_path}/run",
                       *flags, timeout=BOUND_S)
  seconds = time.perf_counter() - start
  assert not (tmp_path / "run").exists()  # nothing built, nothing written
  return result, seconds


# --- Bad records ---------------------------------------------------------------

def too_long(data):
  """Records 0 and 1 short, records 2.. with inputs of 40 tokens (enough of
  them that a few steps surely parse one)."""
  del data
  digit = vocab.TOKEN_IDS["1"]
  return examples.file_bytes([([digit], [digit], [digit])] * 2 +
                             [([digit] * 38, [digit], [digit])] * 300)


def damaged_copy(smoke_data, tmp_path, damage, keep_manifest, shard=SHARD):
  data_dir = copy_data(smoke_data, tmp_path, keep_manifest)
  path = data_dir / shard
  path.write_bytes(damage(path.read_bytes()))
  return data_dir


@pytest.mark.parametrize("damage, keep_manifest, shard, expected", [
    (flip_bytes, True, SHARD, f"{SHARD}: record 3: corrupted record at byte"),
    (truncate, False, SHARD,
     f"{SHARD}: record 5: truncated record at byte"),
    (random_bytes, False, SHARD, f"{SHARD}: record 0: corrupted record at "
     "byte 0 (Is this even a TFRecord file?)"),
    (flip_bytes, True, "eval-00001-of-00002.tfrecord",
     "eval-00001-of-00002.tfrecord: record 3: corrupted record at byte"),
], ids=["flipped", "truncated_no_manifest", "not_tfrecord", "flipped_eval"])
def test_a_bad_record_names_the_file_and_keeps_the_checkpoint(
    smoke_data, resumable, tmp_path, damage, keep_manifest, shard, expected):
  data_dir = damaged_copy(smoke_data, tmp_path, damage, keep_manifest, shard)
  result = run_trainer(f"--data_dir={data_dir}", f"--model_dir={resumable}")
  line = assert_one_error(result, 2, f"{data_dir}/{expected}",
                          "python -m trainer.data verify --deep --data_dir="
                          f"{data_dir}")
  assert "good record(s) before it" in line
  # A bad training shard fails a training step; a bad evaluation shard, the
  # evaluation after the last step's checkpoint.
  assert restored_step(resumable) == (40 if "eval" in shard else 20)

  # verify --deep finds the same file, and only it.
  verify = run_module("trainer.data", "verify", "--deep",
                      f"--data_dir={data_dir}", timeout=120)
  assert verify.returncode == 1, verify.stderr
  bad = [l for l in verify.stderr.splitlines() if l.startswith("bad: ")]
  assert len(bad) == 1 and f"{data_dir}/{expected}" in bad[0], verify.stderr
  assert "error: 1 bad file(s) of 6" in verify.stderr


def test_an_over_long_record_says_how_far_to_raise_len_max_input(
    smoke_data, resumable, tmp_path):
  data_dir = damaged_copy(smoke_data, tmp_path, too_long, keep_manifest=False)
  result = run_trainer(f"--data_dir={data_dir}", f"--model_dir={resumable}")
  assert_one_error(
      result, 2, f"{data_dir}/{SHARD}: record 2 has input length 40",
      "over len_max_input=20", "raise --config.model.len_max_input to 40")
  assert restored_step(resumable) == 20


def test_a_truncated_shard_with_a_manifest_stops_before_training(
    smoke_data, tmp_path):
  data_dir = damaged_copy(smoke_data, tmp_path, truncate, keep_manifest=True)
  result, _ = refused_up_front(tmp_path, data_dir)
  assert_one_error(result, 2, f"{data_dir}/{SHARD} has ", "bytes but",
                   "manifest.json says")


def test_verify_deep_passes_good_data(smoke_data):
  result = run_module("trainer.data", "verify", "--deep",
                      f"--data_dir={smoke_data}", timeout=120)
  assert result.returncode == 0, result.stderr
  assert f"ok: 6 file(s), 2,256 records in {smoke_data} read and fit" in (
      result.stderr)
  assert "verify: 100%" in result.stderr  # the progress bar


# --- Empty, tiny and odd data -------------------------------------------------

def test_zero_byte_training_shards_are_an_error_within_seconds(
    smoke_data, tmp_path):
  data_dir = copy_data(smoke_data, tmp_path, keep_manifest=False)
  for path in data_dir.glob(TRAIN):
    path.write_bytes(b"")
  result, seconds = refused_up_front(tmp_path, data_dir)
  assert_one_error(
      result, 2, "4 of the 4 training files are not TFRecord shards: "
      f"{data_dir}/train-00000-of-00004.tfrecord (0 bytes), ",
      "(+1 more); remove them")
  assert seconds < BOUND_S


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  """2 training shards of 5 examples (a batch is 16) and the smoke eval
  split, with a manifest."""
  data_dir = str(tmp_path_factory.mktemp("tiny"))
  for split, num_shards, per_shard in (("train", 2, 5), ("eval", 2, 128)):
    generate.generate(generate.GenerateSpec(data_dir, split, num_shards,
                                            per_shard, 100, 0),
                      num_processes=1, show_progress=False)
  return data_dir


@pytest.mark.parametrize("keep_manifest", [True, False],
                         ids=["manifest", "no_manifest"])
def test_training_files_smaller_than_a_batch(tiny_data, tmp_path,
                                             keep_manifest):
  data_dir = copy_data(tiny_data, tmp_path, keep_manifest)
  result, _ = refused_up_front(tmp_path, data_dir)
  assert_one_error(
      result, 2, f"the training split has 10 examples in 2 file(s) "
      f"({data_dir}/{TRAIN}), fewer than one batch of 16 per input pipeline "
      "(config.train.global_batch_size=16 over 1 replica(s)): lower "
      "--config.train.global_batch_size or generate more train examples")


@pytest.mark.parametrize("case", ["empty_shards", "smaller_than_a_batch"])
def test_an_evaluation_of_no_example_is_refused_before_training(
    smoke_data, tmp_path, case):
  data_dir = copy_data(smoke_data, tmp_path, keep_manifest=False)
  if case == "empty_shards":
    for path in data_dir.glob("eval-*"):
      path.write_bytes(b"")
    result, _ = refused_up_front(tmp_path, data_dir)
    assert_one_error(
        result, 2, "2 of the 2 evaluation files are not TFRecord shards: "
        f"{data_dir}/eval-00000-of-00002.tfrecord (0 bytes), ")
    return
  # 256 eval examples; 512 per batch (the training split has 2,000).
  result, _ = refused_up_front(tmp_path, data_dir,
                               "--config.train.global_batch_size=512")
  assert_one_error(
      result, 2, "the evaluation split has 256 examples in 2 file(s) "
      f"({data_dir}/eval-*-of-*.tfrecord), fewer than one batch of 512 per "
      "input pipeline (config.train.global_batch_size=512 over 1 "
      "replica(s)): lower --config.train.global_batch_size or generate more "
      "eval examples")


def test_odd_entries_among_good_shards(smoke_data, tmp_path):
  # With the manifest: the extra names are not among its shards.
  data_dir = copy_data(smoke_data, tmp_path)
  (data_dir / "train-00004-of-00007.tfrecord").write_bytes(b"")
  (data_dir / "train-00005-of-00007.tfrecord").mkdir()
  os.mkfifo(data_dir / "train-00006-of-00007.tfrecord")
  # Ignored: a temporary name of an interrupted write.
  (data_dir / "train-00003-of-00004.tfrecord.tmp-0123456789ab").write_bytes(
      b"partial")
  result, _ = refused_up_front(tmp_path, data_dir)
  assert_one_error(
      result, 2, "3 of the 7 training files are not TFRecord shards: "
      f"{data_dir}/train-00004-of-00007.tfrecord (0 bytes), "
      f"{data_dir}/train-00005-of-00007.tfrecord (a directory), "
      f"{data_dir}/train-00006-of-00007.tfrecord (not a regular file); "
      "remove them")


def test_a_dangling_symlink_among_the_shards_is_named(smoke_data, tmp_path):
  # Before: `NotFoundError: Graph execution error:` naming no file.
  data_dir = copy_data(smoke_data, tmp_path)
  link = data_dir / "train-00004-of-00005.tfrecord"
  link.symlink_to(tmp_path / "gone.tfrecord")
  result, _ = refused_up_front(tmp_path, data_dir)
  assert_one_error(
      result, 2, "1 of the 5 training files are not TFRecord shards: "
      f"{link} (a symbolic link to {tmp_path}/gone.tfrecord, which does not "
      "exist); remove them")
  assert link.is_symlink()  # left as it was


def test_an_unreadable_data_dir_is_said_so(smoke_data, tmp_path):
  # Before: "no file matches ... generate them". The tests run as root,
  # whom permissions do not stop: the trainer runs without the
  # capabilities that bypass them (setpriv), as any other user would.
  if shutil.which("setpriv") is None or os.geteuid() != 0:
    pytest.skip("needs root and setpriv to drop CAP_DAC_OVERRIDE")
  data_dir = copy_data(smoke_data, tmp_path)
  data_dir.chmod(0)
  try:
    result = run_trainer(
        f"--data_dir={data_dir}", f"--model_dir={tmp_path}/run",
        prefix=["setpriv", "--bounding-set=-dac_override,-dac_read_search"],
        timeout=BOUND_S)
  finally:
    data_dir.chmod(0o755)
  assert_one_error(result, 2)
  assert error_lines(result) == [
      f"error: no training shards: cannot read {data_dir} (permission denied "
      "for user root): fix its permissions or choose another --data_dir"]
  assert not (tmp_path / "run").exists()


def test_ctrl_c_after_sigterm_ends_a_first_host_loop_at_once(smoke_data,
                                                             tmp_path):
  # A first host loop that does not end soon (a slow or stuck input would
  # look the same): SIGTERM asks for a checkpoint at its end, a second
  # SIGTERM changes nothing (launchers send it twice), Ctrl-C ends the
  # process at once.
  model_dir = tmp_path / "run"
  run = Trainer(f"--data_dir={smoke_data}", f"--model_dir={model_dir}",
                *LONG_RUN, "--config.train.steps_per_loop=50000")
  try:
    run.wait_for("data: train input pipeline")
    run.process.send_signal(signal.SIGTERM)
    run.wait_for("SIGTERM: stopping at the end of this host loop")
    run.process.send_signal(signal.SIGTERM)
    time.sleep(2)
    assert run.process.poll() is None
    start = time.perf_counter()
    run.process.send_signal(signal.SIGINT)
    code, stderr = run.finish(timeout=20)
    seconds = time.perf_counter() - start
  finally:
    run.process.kill()
  assert code == 130, stderr[-3000:]
  assert [l for l in stderr.splitlines() if l.startswith("error:")] == [
      "error: interrupted after SIGTERM: stopped at once, without saving; no "
      "checkpoint was saved yet"]
  assert "Traceback" not in stderr
  assert seconds < 10
  assert not list((model_dir / "checkpoints").glob("ckpt-*"))


def run_generate(*flags):
  return run_module("trainer.data", "generate", *flags, timeout=60)


@pytest.mark.parametrize("flags, expected", [
    (["--examples_per_shard=1000000000000"],
     "--examples_per_shard=1,000,000,000,000 needs about "),
    (["--num_shards=99999", "--examples_per_shard=1000000",
      "--num_processes=1"],
     "train: 99,999 shards of 1,000,000 examples need up to 7.6 TB and "),
    (["--num_shards=100000"], "--num_shards=100,000 is over 99,999"),
], ids=["memory", "disk", "shard_names"])
def test_generate_refuses_what_cannot_be_held(tmp_path, flags, expected):
  out_dir = tmp_path / "new" / "data"
  result = run_generate(f"--out_dir={out_dir}", *flags)
  line = assert_one_error(result, 2, expected)
  if "memory" in line:
    assert "available: use at most " in line, line
  if "7.6 TB" in line:  # more than any disk of a test machine
    assert f"and {tmp_path} has " in line and "free: lower --num_shards" in (
        line)
  assert not (tmp_path / "new").exists()


def test_generate_on_a_full_disk_names_its_own_flag(tiny_disk):
  # A full disk met while writing shards (the up-front check counts the
  # bytes of the shards already there: here a stray 1.6 MB file under the
  # last shard's name fools it). Before, the line advised another
  # --model_dir, a flag generate does not have, and a 0-byte temporary
  # shard stayed.
  out_dir = tiny_disk / "data"
  out_dir.mkdir()
  (out_dir / "train-00003-of-00004.tfrecord").write_bytes(b"\0" * 1_600_000)
  result = run_module(
      "trainer.data", "generate", f"--out_dir={out_dir}", "--split=train",
      "--num_shards=4", "--examples_per_shard=3000", "--num_processes=1",
      timeout=120)
  assert_one_error(result, 1, f"no space left on device writing {out_dir}/",
                   ": free some space or choose another --out_dir; the "
                   "complete shards are kept and the same command resumes")
  assert "--model_dir" not in result.stderr
  left = sorted(p.name for p in out_dir.iterdir())
  assert not [name for name in left if ".tmp-" in name], left
  assert "train-00000-of-00004.tfrecord" in left  # the complete shard kept


def _children(pid):
  """The pids of a process's children (every thread's), from /proc."""
  pids = set()
  for path in glob.glob(f"/proc/{pid}/task/*/children"):
    with open(path) as f:
      pids.update(int(p) for p in f.read().split())
  return pids


def _command(pid):
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      return f.read().replace(b"\0", b" ").decode()
  except FileNotFoundError:
    return ""


# Big enough that the shards take seconds to build on two workers.
SLOW_GENERATE = ["--split=train", "--num_shards=4",
                 "--examples_per_shard=100000", "--num_processes=2"]


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143),
                                            (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_stopped_generate_ends_its_workers_and_resumes(tmp_path, signum,
                                                         status):
  # Before: SIGTERM left the two (then multiprocessing) workers and the
  # resource tracker alive (for an hour); Ctrl-C printed a KeyboardInterrupt traceback from
  # the parent and one per worker. SIGINT is restored for the child: a
  # process started in the background of a shell starts with it ignored.
  out_dir = tmp_path / "data"
  process = start(
      module_command("trainer.data", "generate", f"--out_dir={out_dir}",
                     *SLOW_GENERATE),
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  children = set()
  try:
    lines = []
    for line in process.stderr:  # the first progress line: workers busy
      lines.append(line)
      if "generate train:" in line:
        break
    children = _children(process.pid)
    assert len(children) >= 2, "".join(lines)  # the 2 shard workers
    process.send_signal(signum)
    # (An orphaned worker would hold stderr open: a timeout, not a hang.)
    stderr = "".join(lines) + process.communicate(timeout=30)[1]
    code = process.returncode
    deadline = time.monotonic() + 5
    while any(map(alive, children)) and time.monotonic() < deadline:
      time.sleep(0.1)
    still_alive = {pid: _command(pid) for pid in children if alive(pid)}
  finally:
    process.kill()
    for pid in children:  # never leave one behind, even when failing
      if alive(pid):
        os.kill(pid, signal.SIGKILL)
  assert code == status, stderr[-3000:]
  assert [l for l in stderr.splitlines() if l.startswith("error:")] == [
      f"error: interrupted ({signal.Signals(signum).name}): generation "
      "stopped; the complete shards are kept and the same command resumes"]
  assert "Traceback" not in stderr, stderr[-3000:]
  assert not still_alive, still_alive
  # Only whole shards under their final names (none is complete at the
  # first line, or one or two are), no manifest yet.
  assert len(list(out_dir.glob(TRAIN))) < 4
  assert not (out_dir / "manifest.json").exists()
  if signum != signal.SIGTERM:
    return  # the resume is the same after either signal: checked once
  # The same command keeps what is there and completes; the data verifies.
  result = run_generate(f"--out_dir={out_dir}", *SLOW_GENERATE)
  assert result.returncode == 0, result.stderr[-3000:]
  assert len(list(out_dir.glob(TRAIN))) == 4
  assert sorted(p.name for p in out_dir.iterdir()) == sorted(
      [p.name for p in out_dir.glob(TRAIN)] + ["manifest.json"])
  verify = run_module("trainer.data", "verify", f"--data_dir={out_dir}",
                      timeout=60)
  assert verify.returncode == 0, verify.stderr[-3000:]
