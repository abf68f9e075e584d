"""Checkpoints found by their files, verified, restored; never lost by accident.

TensorFlow names the latest checkpoint in a state file (`checkpoint`); when
that file is missing, garbled or names a checkpoint that is gone,
`tf.train.latest_checkpoint` answers None, and a run that trusted it would
start again at step 0 and overwrite the good checkpoints. Here instead:

  * a checkpoint is found by its own files, `ckpt-N.index` and
    `ckpt-N.data-*`, newest (highest N) first;
  * before it is trusted it is verified: its index reads, every tensor reads
    back with the checksum its index holds, and its `step` variable is N;
  * a damaged one is named in one line with the reason, its files are
    renamed aside (`*.damaged`: kept, never overwritten by a later save of
    the same step) and the next older one is tried;
  * the state file is rewritten to name what is left, so TensorFlow's
    CheckpointManager keeps and deletes the right ones;
  * a directory holding checkpoint files of which none restores is an error
    unless the run starts over on purpose (`--start_over`), which moves them
    into a `replaced-<time>/` subdirectory instead of deleting anything.

Only the chief repairs (renames, rewrites); other workers of a multi-worker
run verify the same files and reach the same checkpoint.

The best checkpoint (config.train.keep_best, `Best`) lives apart, in
`best/` below the checkpoints directory, with `best.json` naming its step,
metric and value: rotation (CheckpointManager deletes only the checkpoints
its state file names), the fallback past damaged checkpoints and a resume
never touch it; --start_over moves it aside with the others.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import posixpath
import re
from typing import Any, Callable, Mapping

from absl import logging
import tensorflow as tf

from trainer import errors
from trainer.cloud import storage
from trainer.training import plan as plan_lib

PREFIX = "ckpt"  # tf.train.CheckpointManager's default checkpoint_name
STATE_FILE = "checkpoint"  # TensorFlow's name for the state file
BEST_SUBDIR = "best"  # the best checkpoint's directory, in the checkpoints'
BEST_FILE = "best.json"  # in it: {"step", "metric", "value"} of that one
DAMAGED_SUFFIX = ".damaged"
_FILE = re.compile(rf"^{PREFIX}-(\d+)\.(index|data-\d+-of-\d+)$")
_STEP_KEY = "step/.ATTRIBUTES/VARIABLE_VALUE"
# Errors that say the storage failed, not the checkpoint: never a reason to
# set a checkpoint aside (the run fails with them, to be run again).
_STORAGE_ERRORS = (tf.errors.PermissionDeniedError,
                   tf.errors.UnauthenticatedError, tf.errors.UnavailableError,
                   tf.errors.DeadlineExceededError,
                   tf.errors.ResourceExhaustedError)


@dataclasses.dataclass(frozen=True)
class Found:
  """One checkpoint's files: `prefix` is DIR/ckpt-N."""
  step: int
  prefix: str
  files: tuple[str, ...]

  @property
  def name(self) -> str:
    return posixpath.basename(self.prefix)


@dataclasses.dataclass(frozen=True)
class Restored:
  """What `restore_newest` did.

  Attributes:
    found: the checkpoint restored, or None (nothing restores).
    damaged: (name, reason) of each newer checkpoint set aside.
    leftovers: files in the directory that hold no restorable checkpoint
      (damaged ones, a state file): their presence makes a start from step
      0 an error unless the run starts over on purpose.
  """
  found: Found | None
  damaged: tuple[tuple[str, str], ...]
  leftovers: tuple[str, ...]


def find(directory: str) -> list[Found]:
  """The checkpoints in `directory` by their files, newest first."""
  by_step: dict[int, list[str]] = {}
  for path in storage.glob_in(directory, f"{PREFIX}-*"):
    match = _FILE.match(posixpath.basename(path))
    if match:
      by_step.setdefault(int(match.group(1)), []).append(path)
  return [Found(step, storage.join(directory, f"{PREFIX}-{step}"),
                tuple(sorted(files)))
          for step, files in sorted(by_step.items(), reverse=True)]


def latest(directory: str) -> str | None:
  """The prefix (DIR/ckpt-N) of the newest checkpoint in `directory` by its
  files, or None. Not tf.train.latest_checkpoint: that looks the prefix up
  as a glob, so a directory named with `[`, `*` or `?` would have none."""
  found = find(directory)
  return found[0].prefix if found else None


def verify(found: Found) -> str | None:
  """Why `found` cannot be restored, or None when it can.

  Reads the index and every tensor (TensorFlow checks each one's CRC32C
  against the index) and compares the step variable with the name.

  Raises:
    tf.errors.OpError: the storage failed (permission, unavailable): a
      reason to fail the run, not to set the checkpoint aside.
  """
  names = {posixpath.basename(f) for f in found.files}
  if f"{found.name}.index" not in names:
    return f"its index file {found.name}.index is missing"
  try:
    reader = tf.train.load_checkpoint(found.prefix)
    for key in reader.get_variable_to_shape_map():
      reader.get_tensor(key)
    step = int(reader.get_tensor(_STEP_KEY)) if reader.has_tensor(
        _STEP_KEY) else None
  except _STORAGE_ERRORS:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # Damage comes as OpError, ValueError or IndexError ("Read less bytes
    # than requested": a truncated data file), among others.
    return f"{type(e).__name__}: {errors.first_line(e)}"
  if step != found.step:
    return (f"it holds step {step}, not {found.step}" if step is not None
            else "it holds no step counter: not a checkpoint of this trainer")
  return None


def restore_newest(checkpoint: tf.train.Checkpoint | Callable[
    [str], tf.train.Checkpoint], directory: str, *, repair: bool) -> Restored:
  """Restores the newest checkpoint of `directory` that verifies.

  Args:
    checkpoint: what to restore into (every existing object must match), or
      a function of the checkpoint's prefix that returns it (what a
      checkpoint holds may decide: train.Trainer.checkpoint_for).
    directory: the checkpoints directory.
    repair: rename damaged files aside and rewrite the state file (the
      chief); False: only read (other workers).

  Raises:
    UserError: a checkpoint that verifies but does not fit this model.
  """
  damaged = []
  restored = None
  for found in find(directory):
    reason = verify(found)
    if reason is None:
      restored = found
      break
    damaged.append((found, reason))
  for found, reason in damaged:
    where = (f"renamed aside as {found.name}.*{DAMAGED_SUFFIX}" if repair
             else "left for the chief to rename")
    logging.warning("checkpoint %s is damaged (%s): %s; %s", found.prefix,
                    reason, where, f"falling back to {restored.name}"
                    if restored else "no older checkpoint restores")
    if repair:
      for path in found.files:
        storage.rename(path, path + DAMAGED_SUFFIX)
  if restored:
    try:
      into = (checkpoint(restored.prefix) if callable(checkpoint)
              else checkpoint)
      into.restore(restored.prefix).assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:  # unmatched objects, shapes
      raise errors.UserError(
          f"checkpoint {restored.prefix} does not fit this model "
          f"({errors.first_line(e)[:200]}): use another --model_dir, the "
          "checkpoint's config, or --start_over") from e
    if repair:
      _rewrite_state(directory)
  leftovers = () if restored else tuple(_checkpoint_files(directory))
  return Restored(restored, tuple((f.name, r) for f, r in damaged), leftovers)


def restore_or_refuse(checkpoint: tf.train.Checkpoint | Callable[
    [str], tf.train.Checkpoint], directory: str, *,
                      repair: bool) -> Found | None:
  """The newest checkpoint of `directory` that restores, restored (with
  `repair`, the chief's, damaged ones are set aside); None in a directory
  without checkpoints.

  Raises:
    UserError: checkpoint files of which none restores: the run would
      start at step 0 and overwrite them.
  """
  restored = restore_newest(checkpoint, directory, repair=repair)
  if restored.found is None and restored.leftovers:
    why = "; ".join(f"{name}: {reason}" for name, reason in restored.damaged
                    ) or "holding only " + ", ".join(
                        posixpath.basename(p) for p in restored.leftovers[:4]
                    ) + (", ..." if len(restored.leftovers) > 4 else "")
    raise errors.UserError(
        f"{directory} holds checkpoint files but no checkpoint that restores "
        f"({why}): nothing was trained or overwritten; to train from step 0 "
        "anyway, add --start_over (they are moved to a replaced-<time>/ "
        "directory beside them, not deleted)")
  return restored.found


class Saver:
  """Saves numbered checkpoints of `checkpoint` in `directory`, keeping the
  newest `max_to_keep` (tf.train.CheckpointManager), never the same step
  twice."""

  def __init__(self, checkpoint: tf.train.Checkpoint, directory: str,
               max_to_keep: int):
    self._manager = tf.train.CheckpointManager(checkpoint, directory,
                                               max_to_keep=max_to_keep)

  @property
  def latest(self) -> str | None:
    return self._manager.latest_checkpoint

  def save(self, step: int) -> None:
    """A checkpoint of `step`, unless the latest one already is: TF
    rewrites an existing checkpoint's index file in place, so a kill -9
    during a second save of one step could leave it unrestorable (new
    numbers are written under temporary names, and `checkpoint` names them
    only once they are whole)."""
    latest = self.latest
    if not (latest and latest.endswith(f"-{step}")):
      self._manager.save(checkpoint_number=step)


class Best:
  """The checkpoint of the best evaluation so far (config.train.keep_best),
  in `best/` below the checkpoints directory, and `best.json` beside it
  saying its step, metric and value, so a resumed run knows the best so far.

  Every worker offers every evaluation (the eval metrics are all-reduced,
  so all decide alike) and takes part in each save; the chief's `write` is
  the run's directory, another worker's a temporary one (as for `Saver`).
  A save writes the new checkpoint, then best.json, then deletes the older
  one: a kill at any point leaves best.json naming a whole checkpoint.
  """

  def __init__(self, checkpoint: tf.train.Checkpoint, metric: str,
               read: str, write: str):
    """`metric`: "accuracy" or "loss"; `read`, `write`: the checkpoints
    directories to read the best so far from (the chief's) and to save to
    (this worker's)."""
    self._checkpoint = checkpoint
    self.metric = metric
    self._write = storage.join(write, BEST_SUBDIR)
    # {"step", "metric", "value"} of the best so far, or None; and where this
    # process reads its checkpoint (a worker's own copy once it saved one).
    self.record: dict[str, Any] | None = None
    self.prefix: str | None = None
    self._load(storage.join(read, BEST_SUBDIR))

  def _load(self, directory: str) -> None:
    """The best so far of an earlier process, if best.json names a
    checkpoint of `directory` that verifies and is of this metric."""
    path = storage.join(directory, BEST_FILE)
    if not storage.exists(path):
      return
    try:
      saved = storage.read_json(path)
      record = {"step": int(saved["step"]), "metric": str(saved["metric"]),
                "value": float(saved["value"])}
    except (ValueError, KeyError, TypeError) as e:
      logging.warning("%s is not a best.json this trainer wrote (%s): the "
                      "next evaluation's checkpoint becomes the best", path,
                      errors.first_line(e))
      return
    if record["metric"] != self.metric:
      logging.warning("the best checkpoint in %s is the best eval %s, not %s"
                      " (config.train.keep_best changed): the next "
                      "evaluation's checkpoint replaces it", directory,
                      record["metric"], self.metric)
      return
    found = [f for f in find(directory) if f.step == record["step"]]
    reason = verify(found[0]) if found else "its files are missing"
    if reason:
      logging.warning("the best checkpoint %s/%s-%d cannot be restored (%s): "
                      "the next evaluation's checkpoint becomes the best",
                      directory, PREFIX, record["step"], reason)
      return
    self.record, self.prefix = record, found[0].prefix

  def better(self, step: int, value: float) -> bool:
    """Whether `value` (of an evaluation at `step`) beats the best so far:
    strictly (a tie keeps the earlier one), and finite."""
    if not math.isfinite(value):
      return False
    if self.record is None:
      return True
    best = self.record["value"]
    return value != best and plan_lib.at_least(self.metric, value, best)

  def offer(self, step: int, metrics: Mapping[str, Any]) -> bool:
    """Keeps the checkpoint of this step (the current weights) if its eval
    `metrics` are the best so far; returns whether it did."""
    value = float(metrics[self.metric])
    if not self.better(step, value):
      return False
    storage.makedirs(self._write)
    prefix = storage.join(self._write, f"{PREFIX}-{step}")
    older = find(self._write)
    for found in older:
      if found.step == step:  # another timeline's (a fallback): not in place
        for path in found.files:
          storage.remove(path)
    self._checkpoint.write(prefix)
    record = {"step": step, "metric": self.metric, "value": value}
    storage.write_json_atomic(storage.join(self._write, BEST_FILE), record)
    for found in older:
      if found.step != step:
        for path in found.files:
          storage.remove(path)
    self.record, self.prefix = record, prefix
    return True

  def restore(self, **objects) -> None:
    """Loads the best checkpoint's `objects` (the trainer's checkpoint's
    names: model=, ema=); the optimizer and step are left as they are."""
    tf.train.Checkpoint(**objects).read(self.prefix).expect_partial()


def _rewrite_state(directory: str) -> None:
  """The state file naming the checkpoints that are there, oldest first,
  with their files' times (CheckpointManager deletes by them)."""
  found = find(directory)[::-1]
  try:
    state = tf.train.get_checkpoint_state(directory)
  except (tf.errors.OpError, ValueError):  # garbled: rewritten below
    state = None
  names = [f.name for f in found]
  if state and [posixpath.basename(p) for p in
                state.all_model_checkpoint_paths] == names and (
                    posixpath.basename(state.model_checkpoint_path)
                    == names[-1]):
    return  # already right
  times = [storage.mtime(f.prefix + ".index") for f in found]
  tf.compat.v1.train.update_checkpoint_state(
      directory, names[-1], all_model_checkpoint_paths=names,
      all_model_checkpoint_timestamps=times)
  logging.warning("the state file %s did not name the checkpoints there: "
                  "rewritten (newest %s)",
                  storage.join(directory, STATE_FILE), names[-1])


def move_aside(directory: str) -> str | None:
  """Moves every checkpoint file and the state file of `directory`, and the
  best checkpoint's files (best/), into a new `replaced-<UTC time>/` below
  it (for --start_over); returns that directory, or None when there was
  nothing to move."""
  paths = _checkpoint_files(directory)
  best = storage.join(directory, BEST_SUBDIR)
  best_paths = storage.glob_in(best, "*") if storage.isdir(best) else []
  if not paths and not best_paths:
    return None
  time = datetime.datetime.now(datetime.timezone.utc).strftime(
      "%Y%m%dT%H%M%SZ")
  target = storage.join(directory, f"replaced-{time}")
  storage.makedirs(target)
  for path in paths:
    storage.rename(path, storage.join(target, posixpath.basename(path)))
  if best_paths:  # file by file: GCS has no directory to rename
    storage.makedirs(storage.join(target, BEST_SUBDIR))
    for path in best_paths:
      storage.rename(path, storage.join(target, BEST_SUBDIR,
                                        posixpath.basename(path)))
  return target


def _checkpoint_files(directory: str) -> list[str]:
  """Every file of `directory` a checkpoint left: the state file and
  ckpt-* files, damaged ones included (not the replaced-*/ directories)."""
  return [p for p in storage.glob_in(directory, "*")
          if (posixpath.basename(p) == STATE_FILE or
              posixpath.basename(p).startswith(f"{PREFIX}-"))
          and not storage.isdir(p)]


def any_in(directory: str) -> bool:
  """Whether `directory` holds any checkpoint's files."""
  return bool(find(directory))
