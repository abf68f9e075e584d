"""Fault suite: the real trainer, from and into gs://, over a broken network.

The GCS emulator's proxy (gcs_emulator.py, `cut_responses`) sends a
response's headers and only the start of its body, then drops the
connection. TensorFlow's gs:// filesystem sees libcurl error 18 ("Transferred
a partial file") and retries the request; these tests run the real
`trainer.task` subprocess against that.

TF's retry budget is GCS_RETRY_CONFIG_MAX_RETRIES, read when TensorFlow is
imported (TF's default: 10; the test session sets 1 so that a failure does
not look like a hang, see gcs_emulator.TF_IMPORT_TIME_ENV). Each test sets it
for its trainer subprocess to what the test is about.
"""

import os
import uuid

import pytest
import tensorflow as tf

from tests.helpers import ROOT, error_lines

SMOKE = os.path.join(ROOT, "configs", "smoke.py")
NUM_STEPS = 40  # configs/smoke.py: config.train.num_steps


@pytest.fixture
def bucket(gcs, run, smoke_data):
  """A fresh bucket holding the smoke data under data/; any cuts still armed
  at the end are disarmed (the emulator outlives the test)."""
  name = f"fault-{uuid.uuid4().hex[:12]}"
  gcs.create_bucket(name)
  upload = run("trainer.data", "upload", f"--src={smoke_data}",
               f"--dst=gs://{name}/data")
  assert upload.returncode == 0, upload.stderr[-2000:]
  yield name
  gcs.cut_responses("$never", 0, 0)


def test_a_cut_read_is_retried_and_too_many_fail(gcs, bucket):
  """The hook itself, in-process and in seconds: a cut is a partial read to
  TF, which retries it up to its budget (this process's
  GCS_RETRY_CONFIG_MAX_RETRIES, set at conftest import)."""
  path = f"gs://{bucket}/data/manifest.json"
  pattern = f"^/{bucket}/data%2Fmanifest[.]json$"
  whole = tf.io.gfile.GFile(path, "rb").read()
  retries = int(os.environ["GCS_RETRY_CONFIG_MAX_RETRIES"])
  gcs.cut_responses(pattern, count=retries, after_bytes=100)
  assert tf.io.gfile.GFile(path, "rb").read() == whole
  assert gcs.cuts_made() == [f"/{bucket}/data%2Fmanifest.json"] * retries
  gcs.cut_responses(pattern, count=retries + 1, after_bytes=100)
  with pytest.raises(tf.errors.AbortedError,
                     match="Transferred a partial file"):
    tf.io.gfile.GFile(path, "rb").read()
  assert len(gcs.cuts_made()) == retries + 1


def test_training_survives_shard_downloads_cut_mid_body(gcs, run, bucket):
  # TF reads a shard as GET storage.googleapis.com/BUCKET/data%2Ftrain-...:
  # the first 3 of those reads get 1,000 of their ~36,000 bytes.
  gcs.cut_responses(f"^/{bucket}/data%2Ftrain-[0-9]+-of-[0-9]+[.]tfrecord$",
                    count=3, after_bytes=1000)
  result = run("trainer.task", f"--config={SMOKE}",
               f"--data_dir=gs://{bucket}/data",
               f"--model_dir=gs://{bucket}/run",
               # However the 3 cuts fall (on 3 reads, or all on one read and
               # its retries), every read succeeds within 1 + 3 attempts.
               env={"GCS_RETRY_CONFIG_MAX_RETRIES": "3"})
  cuts = gcs.cuts_made()
  assert len(cuts) == 3, cuts  # the faults really happened
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"{NUM_STEPS}/{NUM_STEPS} steps" in result.stderr, result.stderr[-3000:]

  # The final checkpoint is in gs:// and every tensor in it reads back.
  latest = tf.train.latest_checkpoint(f"gs://{bucket}/run/checkpoints")
  assert latest == f"gs://{bucket}/run/checkpoints/ckpt-{NUM_STEPS}"
  reader = tf.train.load_checkpoint(latest)
  for name in reader.get_variable_to_shape_map():
    reader.get_tensor(name)
  assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == NUM_STEPS


def test_training_survives_a_checkpoint_upload_cut(gcs, run, bucket):
  # The upload's PUT reaches the emulator (the object is stored) but its
  # answer is lost: TF asks the resumable session again and carries on.
  gcs.cut_responses(f"^/upload/storage/v1/b/{bucket}/o[?].*"
                    "name=run%2Fcheckpoints%2Fckpt-.*&upload_id=",
                    count=1, after_bytes=0)
  result = run("trainer.task", f"--config={SMOKE}",
               f"--data_dir=gs://{bucket}/data",
               f"--model_dir=gs://{bucket}/run",
               env={"GCS_RETRY_CONFIG_MAX_RETRIES": "1"})
  assert len(gcs.cuts_made()) == 1
  assert result.returncode == 0, result.stderr[-3000:]
  latest = tf.train.latest_checkpoint(f"gs://{bucket}/run/checkpoints")
  assert latest == f"gs://{bucket}/run/checkpoints/ckpt-{NUM_STEPS}"
  assert tf.train.load_checkpoint(latest).get_tensor(
      "step/.ATTRIBUTES/VARIABLE_VALUE") == NUM_STEPS


def test_cuts_beyond_the_retry_budget_are_one_error_line(gcs, run, bucket):
  # The manifest is read once, first, in the main thread: the read and its
  # only retry are both cut.
  gcs.cut_responses(f"^/{bucket}/data%2Fmanifest[.]json$", count=2,
                    after_bytes=100)
  result = run("trainer.task", f"--config={SMOKE}",
               f"--data_dir=gs://{bucket}/data",
               f"--model_dir=gs://{bucket}/run",
               env={"GCS_RETRY_CONFIG_MAX_RETRIES": "1"}, timeout=120)
  assert len(gcs.cuts_made()) == 2
  assert result.returncode == 1, result.stderr[-3000:]
  (error,) = error_lines(result)
  assert f"gs://{bucket}/data/manifest.json" in error
  assert "Transferred a partial file" in error
  assert "Traceback" not in result.stderr
