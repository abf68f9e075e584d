"""storage's path helpers (no TensorFlow needed for them)."""

import pytest

from trainer import errors
from trainer.cloud import storage


def test_bucket_of_and_split_url():
  assert storage.bucket_of("gs://b/x/y") == "b"
  assert storage.bucket_of("/tmp/x") is None
  assert storage.split_url("gs://b/some/prefix/") == ("b", "some/prefix")
  assert storage.split_url("gs://b") == ("b", "")


@pytest.mark.parametrize("url", ["gs://", "gs:///x", "/tmp/x", "s3://b/x"])
def test_split_url_of_a_non_gcs_url_is_a_user_error(url):
  with pytest.raises(errors.UserError) as error:
    storage.split_url(url)
  assert str(error.value) == f"{url!r} is not a gs://bucket/path URL"


def test_temporary_names():
  temp = storage.temp_name("gs://b/d/train-00000-of-00002.tfrecord")
  assert temp.startswith("gs://b/d/train-00000-of-00002.tfrecord.tmp-")
  assert storage.is_temp_name(temp)
  assert not storage.is_temp_name("gs://b/d.tmp-x/train.tfrecord")


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path):
  # The rename fails (the final name is a directory holding a file), as a
  # full disk fails a write: the temporary file goes too. Before, a 0-byte
  # metrics.json.tmp-* stayed after ENOSPC.
  (tmp_path / "metrics.json").mkdir()
  (tmp_path / "metrics.json" / "x").write_text("x")
  with pytest.raises(Exception):
    storage.write_atomic(str(tmp_path / "metrics.json"), "{}\n")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
  # ... and a write that works leaves only its file.
  storage.write_atomic(str(tmp_path / "other.json"), "{}\n")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json",
                                                        "other.json"]
