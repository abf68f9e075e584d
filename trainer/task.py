r"""Trains the masked self-attention model: the command-line entry point.

  python -m trainer.task                                   # CPU, defaults
  python -m trainer.task --strategy=mirrored --data_dir=DATA --model_dir=RUN
  python -m trainer.task --config=configs/tpu.py --strategy=tpu --tpu=local \
      --data_dir=gs://BUCKET/arith --model_dir=gs://BUCKET/runs/1

With no --data_dir, the config's data set is generated under the user's cache
directory on first use; with no --model_dir, the run writes where Vertex AI's
AIP_MODEL_DIR, AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR say, or else in
a fresh run directory there, printed. Re-running with the same --model_dir
resumes.

Every config field is listed in docs/configuration.md; --print_config
prints the resolved config (the file and its --config.* overrides) and
exits without training.
"""

import datetime
import os
import shlex
import sys

from absl import app
from absl import flags

from trainer import cli
from trainer import errors
from trainer.data import generate
from trainer.training import plan
from trainer.training import run_dir
from trainer.training import stop

_CONFIG = cli.define_config_file(
    "config", os.path.join(cli.CONFIGS_DIR, "default.py"),
    "Config file (configs/*.py); override fields as "
    f"--config.train.num_steps=N; every field: {cli.CONFIG_DOCS}.")
_PRINT_CONFIG = flags.DEFINE_boolean(
    "print_config", False, "Print the resolved config (--config with its "
    "overrides) and exit without training.")
_STRATEGY = flags.DEFINE_enum(
    "strategy", "default", ["default", "one_device", "mirrored",
                            "multi_worker_mirrored", "tpu"],
    "tf.distribute strategy.")
_TPU = flags.DEFINE_string(
    "tpu", None, "For --strategy=tpu: 'local' on a TPU VM, the TPU name, or "
    "grpc://host:port.")
_NUM_GPUS = flags.DEFINE_integer(
    "num_gpus", 0, "For --strategy=mirrored: GPUs to use; 0 = all visible.")
_NUM_CPU_DEVICES = flags.DEFINE_integer(
    "num_cpu_devices", 0, "Split the CPU into N logical devices, e.g. to try "
    "--strategy=mirrored on a machine without GPUs; 0 = leave it whole.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Shards and manifest (local or gs://); default: the "
    "config's data set, generated in the user's cache directory.")
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "Checkpoints, TensorBoard logs, config and export "
    "(local or gs://); default: Vertex AI's AIP_* directories when set, else "
    "a new directory in the user's cache.")

_START_OVER = flags.DEFINE_boolean(
    "start_over", False, "Train from step 0 although --model_dir holds "
    "checkpoints (damaged ones, or of another model): they are moved to "
    "checkpoints/replaced-<time>/ first, not deleted. Without it such a "
    "directory is refused.")


def run_dirs(model_dir: str | None, cache_dir: str) -> run_dir.RunDirs:
  """--model_dir, else Vertex AI's AIP_* directories, else a new cache dir."""
  if model_dir:
    return run_dir.RunDirs.under(model_dir)
  return run_dir.RunDirs.from_vertex_env() or run_dir.RunDirs.under(
      os.path.join(cache_dir, "runs",
                   datetime.datetime.now().strftime("%Y%m%d-%H%M%S")))


def resume_command(args: list[str], model_dir: str | None) -> str:
  """The command line that resumes this run, shell-quoted to paste: `args`
  (the flags as given) without --start_over (it would start over again)
  and with --model_dir=`model_dir` (a default run directory is new at each
  start); `model_dir` None (Vertex AI's AIP_* directories, which the same
  job's variables name again): without --model_dir."""
  kept = [a for a in args
          if a.partition("=")[0].lstrip("-") not in (
              "model_dir", "start_over", "nostart_over")]
  return shlex.join(["python", "-m", "trainer.task", *kept] + (
      [f"--model_dir={model_dir}"] if model_dir else []))


def main(argv):
  if len(argv) > 1:
    return cli.fail(f"unexpected arguments {argv[1:]}: every option is a flag")
  try:
    status = _main()
  except KeyboardInterrupt:  # Ctrl-C before or after the training loop's
    status = cli.fail("interrupted (Ctrl-C) outside the training loop: "
                      "nothing to save", status=stop.INTERRUPTED_STATUS)
  if _STRATEGY.value in ("mirrored", "multi_worker_mirrored"):
    # Their input goes through TensorFlow's MultiDeviceIterator, whose
    # teardown waits out the tf.data autotuner's sleep (its period doubles
    # up to 60 s): a long run sat 50 s or more after its last line before
    # exiting (measured, TF 2.21). Everything is written and flushed here
    # (and loop ends a multi-worker run with a barrier), so end at once.
    cli.exit_now(status)
  return status


def _main():
  config = _CONFIG.value  # loaded and overridden by cli.parse_flags
  if _PRINT_CONFIG.value:
    print(config, end="")
    return 0
  try:
    # The config's own fields, checked before TensorFlow loads (the
    # strategy's replicas are checked again once it exists).
    plan.resolve(config)
  except errors.UserError as e:
    return cli.fail(str(e), status=e.exit_status)
  # TensorFlow loads here, not at import: --help, --print_config and every
  # flag or config error stay quick and TensorFlow-free, and a machine
  # without it gets one line (cli.import_tensorflow). loop and strategy
  # import it at their top, so they are imported after it.
  tf = cli.import_tensorflow()
  resume = "the same command"  # until the run directory is known
  from trainer.training import loop  # pylint: disable=g-import-not-at-top
  from trainer.training import runtime  # pylint: disable=g-import-not-at-top
  from trainer.training import strategy  # pylint: disable=g-import-not-at-top
  cli.log_plainly()
  try:
    runtime.configure(config)  # before the strategy's first op starts pools
    distribution = strategy.make_strategy(
        _STRATEGY.value, tpu=_TPU.value, num_gpus=_NUM_GPUS.value,
        collective=config.train.collective,
        num_cpu_devices=_NUM_CPU_DEVICES.value,
        startup_timeout_s=config.train.startup_timeout_s)
    # Workers of one run that differ in config or data refuse together.
    strategy.check_workers_agree(distribution, config, _DATA_DIR.value)
    data_dir = _DATA_DIR.value or generate.default_data_dir(config.data,
                                                            config.seed)
    # With the strategy's replicas, before any data is generated.
    run_plan = plan.for_strategy(config, distribution, data_dir)
    if not _DATA_DIR.value:
      generate.ensure_dataset(data_dir, config.data, config.seed)
    dirs = run_dirs(_MODEL_DIR.value, generate.cache_dir())
    print(f"model_dir: {dirs.files}", flush=True)
    vertex = dirs.origin and dirs.origin[0][0] != "--model_dir"
    resume = resume_command(sys.argv[1:], None if vertex else dirs.files)
    results = loop.train_and_evaluate(run_plan, distribution, dirs,
                                      start_over=_START_OVER.value,
                                      resume_command=resume)
  except errors.UserError as e:
    return cli.fail(str(e), status=e.exit_status)
  except (OSError, tf.errors.OpError) as e:
    return cli.fail(errors.describe_io_error(e, resume_command=resume),
                    status=1)
  # Ctrl-C says "interrupted" to the shell; other stops are a clean end.
  return (stop.INTERRUPTED_STATUS
          if results["stopped"] is stop.StopReason.SIGINT else 0)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
