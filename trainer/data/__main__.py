r"""The data set's command line: generate, upload, verify, benchmark.

  python -m trainer.data generate --out_dir=/tmp/arith --split=train \
      --num_shards=8 --examples_per_shard=10000 --seed=0
  python -m trainer.data generate --out_dir=gs://bucket/arith --split=eval \
      --num_shards=2 --examples_per_shard=5000 --seed=0
  python -m trainer.data upload --src=/tmp/arith --dst=gs://bucket/arith
  python -m trainer.data verify --data_dir=gs://bucket/arith
  python -m trainer.data verify --data_dir=gs://bucket/arith --deep
  python -m trainer.data benchmark --data_dir=gs://bucket/arith --split=train \
      --batch_size=256 --seconds=10

`generate` writes one split's shards and updates `manifest.json` beside them
(trainer/data/generate.py); re-running the same command skips the shards
already there. `upload` and `verify` move and check a data set with
google-cloud-storage (trainer/data/transfer.py): `verify` compares the files
with the manifest (count, size, CRC32C); `verify --deep` also reads every record of
every shard (trainer/data/verify.py) and names each bad file, the first bad
record and the number of good ones, so a bad shard is found before a long
job instead of in it. `benchmark` times the trainer's own input pipeline
alone (no model) and prints its examples/s, to compare with the examples/s
the trainer logs per host loop: close to it, input limits the run.

SIGTERM, SIGHUP or Ctrl-C end `generate` and its worker processes with one
line `error: interrupted (SIGTERM): ...` and the status 128 + the signal
(143, 129, 130); the complete shards stay, and the same command resumes.

Bad flags print one line `error: ...` and exit with status 2, before anything
is written.
"""

from __future__ import annotations

import contextlib
import signal
import sys

from absl import app
from absl import flags

from trainer import cli
from trainer import errors
from trainer import progress
from trainer.cloud import storage
from trainer.configs import default
from trainer.data import generate
from trainer.data import manifest
from trainer.data import schema
from trainer.data import transfer
from trainer.training import plan
# No TensorFlow at import: a bad flag or command is one line before its
# seconds-long import, and without TensorFlow installed the line that says so
# (cli.import_tensorflow). `verify`, `files` and `pipeline` import it at their
# top: the commands that use them import them after it.

COMMANDS = ("generate", "upload", "verify", "benchmark")
WARM_UP_S = 1.0  # benchmark: untimed reading first (at most a quarter of it)


def define_flags() -> None:
  """Defines the command's flags (only when run as the command)."""
  flags.DEFINE_string(
      "out_dir", None, "Directory (local or gs://) for the shards and manifest.")
  flags.DEFINE_string(
      "split", schema.TRAIN.name, "generate, benchmark: the split, "
      f"{'|'.join(split.name for split in schema.SPLITS)}.")
  flags.DEFINE_integer("num_shards", 8, "Number of shard files.")
  flags.DEFINE_integer("examples_per_shard", 10_000, "Examples in each shard.")
  flags.DEFINE_integer(
      "max_value", 100, "x and y are drawn from (-max_value, max_value).")
  flags.DEFINE_integer("seed", 0, "Seed of the whole data set.")
  flags.DEFINE_integer(
      "num_processes", None, "Worker processes (default: one per CPU core).")
  flags.DEFINE_string("src", None, "upload: local data set directory.")
  flags.DEFINE_string("dst", None, "upload: gs://bucket/path to upload to.")
  flags.DEFINE_integer("num_threads", 8, "upload: parallel uploads.")
  flags.DEFINE_string("data_dir", None, "verify, benchmark: data set "
                      "directory (gs:// or local).")
  flags.DEFINE_bool("deep", False, "verify: also read and check every record "
                    "of every *.tfrecord file.")
  flags.DEFINE_integer("len_max_input", None, "verify --deep, benchmark: the "
                       "longest input (defs + ':' + op) allowed; default: "
                       "configs/default.py's config.model.len_max_input.")
  flags.DEFINE_integer("batch_size", None, "benchmark: examples per batch; "
                       "default: configs/default.py's global_batch_size.")
  flags.DEFINE_integer("shuffle_buffer_size", None, "benchmark: default: "
                       "configs/default.py's config.data.shuffle_buffer_size.")
  flags.DEFINE_float("seconds", 10.0, "benchmark: how long to time the "
                     "pipeline, after a warm-up.")


def _transfer(command: str, flag_values) -> int:
  """upload and verify (google-cloud-storage)."""
  cli.import_tensorflow()
  if command == "upload":
    for name in ("src", "dst"):
      if not flag_values[name].value:
        raise errors.UserError(f"upload needs --{name}")
    result = transfer.upload(flag_values.src, flag_values.dst,
                        num_threads=flag_values.num_threads)
    print(f"uploaded {len(result.uploaded)} file(s) "
          f"({result.bytes_uploaded:,} bytes), skipped "
          f"{len(result.skipped)} unchanged, to {flag_values.dst}",
          file=sys.stderr)
    return 0
  if not flag_values.data_dir:
    raise errors.UserError("verify needs --data_dir")
  if not flag_values.deep:
    return transfer.print_verify(flag_values.data_dir)
  return _verify_deep(flag_values.data_dir, flag_values.len_max_input)


def _verify_deep(data_dir: str, len_max_input: int | None) -> int:
  """`verify --deep`: the manifest check (if there is a manifest), then every
  record of every shard; prints each problem, returns the exit status."""
  from trainer.data import verify  # pylint: disable=g-import-not-at-top
  if len_max_input is None:
    len_max_input = default.get_config().model.len_max_input
  problems = 0
  listed = None
  try:
    listed = manifest.read(data_dir)
  except errors.UserError as e:  # unreadable or foreign: say so, go on
    print(f"mismatch: {e}", file=sys.stderr)
    problems += 1
  if listed is not None:
    mismatches, _ = transfer.verify(data_dir)
    for line in mismatches:
      print(f"mismatch: {line}", file=sys.stderr)
    problems += len(mismatches)
  suffix = schema.SHARD_SUFFIX
  files = sorted(storage.glob_in(data_dir, f"*{suffix}"))
  if not files:
    raise errors.UserError(f"no *{suffix} file in {data_dir}: nothing to "
                           "verify", exit_status=1)
  bar = progress.Progress(total=len(files), unit="files", desc="verify")
  good_records = 0
  bad_files = 0
  for path in files:
    result = verify.check_file(path, len_max_input)
    good_records += result.good_records
    if not result.ok:
      bad_files += 1
      print(f"bad: {path}: {result.problem} ({result.good_records:,} good "
            "record(s) before it)", file=sys.stderr)
    bar.update(1, extra=f"{good_records:,} good records")
  bar.close()
  problems += bad_files
  if problems:
    print(f"error: {bad_files} bad file(s) of {len(files)} and "
          f"{problems - bad_files} manifest mismatch(es) in {data_dir}: "
          "regenerate (python -m trainer.data generate) or re-copy them",
          file=sys.stderr)
    return 1
  print(f"ok: {len(files)} file(s), {good_records:,} records in {data_dir} "
        "read and fit (CRC, Example schema, vocabulary, len_max_input="
        f"{len_max_input})" + ("" if listed else "; no manifest to compare"),
        file=sys.stderr)
  return 0


def _benchmark(flag_values) -> int:
  """`benchmark`: examples/s of the trainer's input pipeline alone."""
  config = default.get_config()
  data_dir = flag_values.data_dir
  if not data_dir:
    raise errors.UserError("benchmark needs --data_dir")
  split = generate.split_flag(flag_values.split)
  batch_size = flag_values.batch_size or config.train.global_batch_size
  len_max_input = flag_values.len_max_input or config.model.len_max_input
  shuffle_buffer_size = (flag_values.shuffle_buffer_size or
                         config.data.shuffle_buffer_size)
  for name, value in (("batch_size", flag_values.batch_size),
                      ("len_max_input", flag_values.len_max_input),
                      ("shuffle_buffer_size", flag_values.shuffle_buffer_size),
                      ("seconds", flag_values.seconds)):
    if value is not None and value <= 0:
      raise errors.UserError(f"--{name}={value} must be positive")
  tf = cli.import_tensorflow()
  from trainer.data import files as files_lib  # pylint: disable=g-import-not-at-top
  from trainer.data import pipeline  # pylint: disable=g-import-not-at-top
  from trainer.data import verify  # pylint: disable=g-import-not-at-top
  training = split is schema.TRAIN
  pattern = plan.resolve(config, data_dir=data_dir).patterns[split.noun]
  files = []
  bars = []  # the progress line, from the first timed call on

  def report(examples: int, elapsed: float) -> None:
    if not bars:
      bars.append(progress.Progress(total=max(1, round(flag_values.seconds)),
                                    unit="s", desc=f"benchmark {split.name}"))
    bar = bars[0]
    shown = min(int(elapsed), bar.total)  # whole seconds
    if shown > bar.done:
      bar.update(shown - bar.done,
                 extra=f"{examples / elapsed:,.0f} examples/s")

  try:
    # The trainer's path, for one input pipeline (trainer/training/feeds.py).
    split_files = files_lib.list_split(pattern, split.noun,
                                       len_max_input=len_max_input)
    files = split_files.files
    dataset = pipeline.make_dataset(
        pipeline.pipeline_files(files, training=training, seed=config.seed),
        batch_size, len_max_input=len_max_input, training=training,
        seed=config.seed, shuffle_buffer_size=shuffle_buffer_size)
    if not training:
      dataset = dataset.repeat()  # pass after pass until the time is spent
    examples, seconds = pipeline.time_batches(
        dataset, batch_size, seconds=flag_values.seconds,
        warm_up_s=min(WARM_UP_S, flag_values.seconds / 4), report=report)
    for bar in bars:
      bar.close()
  except pipeline.NoBatchError:
    raise errors.UserError(
        f"the {split.name} split has fewer examples than --batch_size="
        f"{batch_size}: not one batch") from None
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
    raise verify.describe_data_error(e, files, len_max_input,
                                      split.noun) from e
  except (OSError, tf.errors.OpError) as e:
    raise errors.UserError(errors.describe_io_error(e), exit_status=1) from e
  print(f"{split.name} pipeline: {examples / seconds:,.0f} examples/s (batch "
        f"{batch_size}, {seconds:.1f} s, {examples:,} examples) from "
        f"{data_dir}")
  return 0


def _generate(flag_values) -> int:
  spec = generate.GenerateSpec(
      out_dir=flag_values.out_dir, split=flag_values.split,
      num_shards=flag_values.num_shards,
      examples_per_shard=flag_values.examples_per_shard,
      max_value=flag_values.max_value, seed=flag_values.seed)
  # Argument errors first, before the slow TensorFlow import.
  spec.validate()
  generate.check_resources(
      spec, generate.resolve_num_processes(flag_values.num_processes))
  with _interrupts_raise():
    try:
      tf = cli.import_tensorflow()
      try:
        generate.generate(spec, num_processes=flag_values.num_processes)
      except (OSError, tf.errors.OpError) as e:
        # File system errors (permissions, a missing bucket) end in one line.
        raise errors.UserError(
            errors.describe_io_error(e, full_disk_remedy=(
                "free some space or choose another --out_dir; the complete "
                "shards are kept and the same command resumes")),
            exit_status=1) from e
    except _Interrupted as e:
      # The workers are ended (generate._shard_builder); each shard on disk
      # is whole (written to a temporary name, then renamed), and the next
      # run checks and keeps them, and removes the temporaries.
      raise errors.UserError(
          f"interrupted ({e.signal_name}): generation stopped; the complete "
          "shards are kept and the same command resumes",
          exit_status=128 + e.signal_number) from None
  return 0


class _Interrupted(BaseException):
  """A stop signal (SIGTERM, SIGINT, SIGHUP) while generating."""

  def __init__(self, signal_number: int):
    super().__init__(signal_number)
    self.signal_number = signal_number
    self.signal_name = signal.Signals(signal_number).name


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextlib.contextmanager
def _interrupts_raise():
  """The first stop signal raises _Interrupted in the main thread (so the
  generator's workers are ended on the way out); later ones are ignored, so
  that nothing interrupts the ending. A signal already ignored (SIGINT in a
  job started with `&`, SIGHUP under nohup) stays ignored."""

  def interrupted(signal_number, frame):
    del frame
    for number in _STOP_SIGNALS:
      signal.signal(number, signal.SIG_IGN)
    raise _Interrupted(signal_number)

  previous = {number: signal.getsignal(number) for number in _STOP_SIGNALS}
  for number, handler in previous.items():
    if handler != signal.SIG_IGN:
      signal.signal(number, interrupted)
  try:
    yield
  finally:
    for number, handler in previous.items():
      signal.signal(number, handler)


def main(argv: list[str]) -> int:
  cli.log_plainly()
  command = argv[1] if len(argv) > 1 else None
  try:
    if command not in COMMANDS or len(argv) > 2:
      raise errors.UserError(
          f"usage: python -m trainer.data {{{'|'.join(COMMANDS)}}} [--flags]; "
          f"got {' '.join(argv[1:]) or 'no command'}")
    if command == "generate":
      return _generate(flags.FLAGS)
    if command == "benchmark":
      return _benchmark(flags.FLAGS)
    return _transfer(command, flags.FLAGS)
  except errors.UserError as e:
    return cli.fail(str(e), status=e.exit_status)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
