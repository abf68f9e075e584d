"""The GCS emulator harness itself (tests/helpers/gcs_emulator.py), in-process.

tests/cloud/test_gcs.py covers the same paths through the product's subprocesses;
these few checks say in seconds, and without the product's error wording in
between, whether the harness works: TF's gs:// through the TLS tunnel (an
in-process TFRecordWriter.close() is the upload that deadlocks if the proxy
ever runs inside the test process), google-cloud-storage through the plain
side, and the two fault hooks the product tests use.
"""

import uuid

import pytest
import tensorflow as tf
from google.api_core import exceptions
from google.cloud import storage


@pytest.fixture
def bucket(gcs):
  name = f"t-{uuid.uuid4().hex[:12]}"
  gcs.create_bucket(name)
  return name


def test_tf_and_google_cloud_storage_share_objects(bucket):
  root = f"gs://{bucket}/d"
  records = [b"first", b"x" * 100_000]
  with tf.io.TFRecordWriter(f"{root}/a.tfrecord") as writer:
    for record in records:
      writer.write(record)
  assert tf.io.gfile.glob(f"{root}/*.tfrecord") == [f"{root}/a.tfrecord"]
  assert list(tf.data.TFRecordDataset(f"{root}/a.tfrecord").as_numpy_iterator()) == records
  tf.io.gfile.rename(f"{root}/a.tfrecord", f"{root}/b.tfrecord")  # copy + delete

  client = storage.Client()
  (blob,) = client.list_blobs(bucket)
  assert blob.name == "d/b.tfrecord"
  # A listed blob downloads from its mediaLink, which must lead back here.
  assert blob.download_as_bytes() == tf.io.gfile.GFile(f"{root}/b.tfrecord", "rb").read()
  client.bucket(bucket).blob("d/c.txt").upload_from_string(b"from the client")
  assert tf.io.gfile.GFile(f"{root}/c.txt", "rb").read() == b"from the client"


def test_denied_bucket_is_403_for_both_clients(gcs, bucket):
  storage.Client().bucket(bucket).blob("a.txt").upload_from_string(b"secret")
  gcs.deny_buckets.add(bucket)
  try:
    with pytest.raises(tf.errors.PermissionDeniedError, match="storage.objects.get"):
      tf.io.gfile.GFile(f"gs://{bucket}/a.txt", "rb").read()
    with pytest.raises(tf.errors.PermissionDeniedError):
      tf.io.gfile.glob(f"gs://{bucket}/*")
    with pytest.raises(exceptions.Forbidden, match="does not have storage.objects.get"):
      storage.Client().bucket(bucket).blob("a.txt").download_as_bytes()
  finally:
    gcs.deny_buckets.discard(bucket)
  assert tf.io.gfile.GFile(f"gs://{bucket}/a.txt", "rb").read() == b"secret"


def test_corrupt_object_is_seen_by_both_clients(gcs, bucket):
  path = f"gs://{bucket}/shard.tfrecord"
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(b"payload-" * 100)
  bad = bytearray(tf.io.gfile.GFile(path, "rb").read())
  bad[len(bad) // 2] ^= 0xFF  # a byte inside the record's data
  gcs.corrupt_object(bucket, "shard.tfrecord", bytes(bad))
  with pytest.raises(tf.errors.DataLossError):
    list(tf.data.TFRecordDataset(path))
  assert storage.Client().bucket(bucket).blob("shard.tfrecord").download_as_bytes() == bad
