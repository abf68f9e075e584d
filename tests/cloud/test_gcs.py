"""The product against a real GCS API emulator (see gcs_emulator.py)."""

import json
import os

import pytest
from google.cloud import storage as gcs_client

from trainer.data import problems

from tests.helpers import ROOT, crc32c_base64, error_lines

SMOKE = os.path.join(ROOT, "configs", "smoke.py")


def objects(bucket, prefix=""):
  client = gcs_client.Client()
  return {b.name: b for b in client.list_blobs(bucket, prefix=prefix)}


@pytest.fixture
def local_data(smoke_data):
  return smoke_data


def test_generate_writes_shards_and_manifest_to_gcs(gcs, run):
  gcs.create_bucket("gen")
  result = run("trainer.data", "generate", "--out_dir=gs://gen/arith",
               "--split=eval", "--num_shards=3", "--examples_per_shard=100",
               "--seed=4", "--num_processes=2")
  assert result.returncode == 0, result.stderr[-2000:]
  found = objects("gen", "arith/")
  names = sorted(n for n in found if n.endswith(".tfrecord"))
  assert names == [f"arith/eval-0000{i}-of-00003.tfrecord" for i in range(3)]
  expected = problems.build_shard(4, "eval", 1, 100, 100).data
  assert found["arith/eval-00001-of-00003.tfrecord"].download_as_bytes() == (
      expected)
  manifest = json.loads(found["arith/manifest.json"].download_as_bytes())
  assert manifest["splits"]["eval"]["num_examples"] == 300
  # Re-running skips every shard, checking each against GCS.
  again = run("trainer.data", "generate", "--out_dir=gs://gen/arith",
              "--split=eval", "--num_shards=3", "--examples_per_shard=100",
              "--seed=4", "--num_processes=1")
  assert again.returncode == 0 and "already complete" in again.stderr
  verify = run("trainer.data", "verify", "--data_dir=gs://gen/arith")
  assert verify.returncode == 0, verify.stderr
  assert "ok: 3 shard(s) in gs://gen/arith match" in verify.stderr


def test_upload_skips_unchanged_and_verify_finds_corruption(gcs, run,
                                                            local_data):
  gcs.create_bucket("up")
  first = run("trainer.data", "upload", f"--src={local_data}",
              "--dst=gs://up/smoke", "--num_threads=4")
  assert first.returncode == 0, first.stderr[-2000:]
  assert "uploaded 7 file(s)" in first.stderr  # 6 shards + manifest
  assert "upload to gs://up/smoke: 100%" in first.stderr
  found = objects("up", "smoke/")
  for name in os.listdir(local_data):
    with open(os.path.join(local_data, name), "rb") as f:
      local = f.read()
    assert found[f"smoke/{name}"].crc32c == crc32c_base64(local)

  again = run("trainer.data", "upload", f"--src={local_data}",
              "--dst=gs://up/smoke")
  assert "uploaded 0 file(s) (0 bytes), skipped 7 unchanged" in again.stderr

  ok = run("trainer.data", "verify", "--data_dir=gs://up/smoke")
  assert ok.returncode == 0, ok.stderr
  gcs.corrupt_object("up", "smoke/train-00001-of-00004.tfrecord",
                     b"not a shard")
  bad = run("trainer.data", "verify", "--data_dir=gs://up/smoke")
  assert bad.returncode == 1
  mismatches = [l for l in bad.stderr.splitlines()
                if l.startswith("mismatch:")]
  assert len(mismatches) == 2  # size and checksum, both reported
  assert all("gs://up/smoke/train-00001-of-00004.tfrecord" in m
             for m in mismatches)
  assert error_lines(bad) == ["error: 2 problem(s) in gs://up/smoke"]
  deep = run("trainer.data", "verify", "--data_dir=gs://up/smoke", "--deep")
  assert deep.returncode == 1, deep.stderr
  assert [l for l in deep.stderr.splitlines() if l.startswith("bad:")] == [
      "bad: gs://up/smoke/train-00001-of-00004.tfrecord: record 0: the file "
      "ends inside its 12-byte header (11 byte(s) after the last whole "
      "record) (0 good record(s) before it)"]
  assert error_lines(deep)[0].startswith(
      "error: 1 bad file(s) of 6 and 2 manifest mismatch(es) in gs://up/smoke")

  repaired = run("trainer.data", "upload", f"--src={local_data}",
                 "--dst=gs://up/smoke")
  assert "uploaded 1 file(s)" in repaired.stderr
  assert "skipped 6 unchanged" in repaired.stderr
  assert run("trainer.data", "verify",
             "--data_dir=gs://up/smoke").returncode == 0
  deep = run("trainer.data", "verify", "--data_dir=gs://up/smoke", "--deep")
  assert deep.returncode == 0, deep.stderr
  assert "ok: 6 file(s), 2,256 records in gs://up/smoke read and fit" in (
      deep.stderr)


def test_train_from_gcs_into_gcs_and_resume(gcs, run, local_data):
  # Directory names with glob characters are paths, not patterns: the data
  # directory's `[x]` is escaped in the shard pattern, and the run directory
  # (a lone `]`, which TensorFlow's checkpoint code reads literally) resumes.
  gcs.create_bucket("train")
  assert run("trainer.data", "upload", f"--src={local_data}",
             "--dst=gs://train/data[x]").returncode == 0
  flags = [f"--config={SMOKE}", "--data_dir=gs://train/data[x]",
           "--model_dir=gs://train/runs/1]"]
  result = run("trainer.task", *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  found = objects("train", "runs/1]/")
  names = set(found)
  assert "runs/1]/config.json" in names and "runs/1]/metrics.json" in names
  assert "runs/1]/export/saved_model.pb" in names
  assert "runs/1]/checkpoints/ckpt-40.index" in names
  assert any(n.startswith("runs/1]/train/events.out.tfevents") for n in names)
  assert any(n.startswith("runs/1]/eval/events.out.tfevents") for n in names)
  metrics = json.loads(found["runs/1]/metrics.json"].download_as_bytes())
  assert metrics["step"] == 40
  assert metrics["data"]["dir"] == "gs://train/data[x]"

  resumed = run("trainer.task", *flags, "--config.train.num_steps=60")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from gs://train/runs/1]/checkpoints/ckpt-40" in (
      resumed.stderr)
  metrics = json.loads(objects("train", "runs/1]/")[
      "runs/1]/metrics.json"].download_as_bytes())
  assert metrics["step"] == 60

  # A run directory TensorFlow's checkpoint code would read as a pattern is
  # refused before anything is written there.
  refused = run("trainer.task", f"--config={SMOKE}",
                "--data_dir=gs://train/data[x]", "--model_dir=gs://train/r[1]")
  assert refused.returncode == 2, refused.stderr[-3000:]
  line, = error_lines(refused)
  assert line.startswith("error: --model_dir=gs://train/r[1]: a run directory "
                         "cannot hold '['"), line
  assert not objects("train", "r[")


def test_missing_bucket_is_one_line(gcs, run, local_data, tmp_path):
  del gcs
  cases = [
      ("trainer.data", ["generate", "--out_dir=gs://no-such-bucket/x"]),
      ("trainer.data", ["upload", f"--src={local_data}",
                        "--dst=gs://no-such-bucket/x"]),
      ("trainer.task", [f"--config={SMOKE}", f"--data_dir={local_data}",
                        "--model_dir=gs://no-such-bucket/run"]),
  ]
  for module, args in cases:
    result = run(module, *args, timeout=120)
    assert result.returncode in (1, 2), result.stderr[-2000:]
    errors = error_lines(result)
    assert len(errors) == 1, result.stderr[-2000:]
    assert "bucket gs://no-such-bucket does not exist" in errors[0]
    assert "gcloud storage buckets create gs://no-such-bucket" in errors[0]
    assert "Traceback" not in result.stderr


def test_permission_denied_is_one_line(gcs, run, local_data):
  gcs.create_bucket("locked")
  gcs.deny_buckets.add("locked")
  try:
    cases = [
        ("trainer.data", ["generate", "--out_dir=gs://locked/x"]),
        ("trainer.data", ["upload", f"--src={local_data}",
                          "--dst=gs://locked/x"]),
        ("trainer.data", ["verify", "--data_dir=gs://locked/x"]),
        ("trainer.task", [f"--config={SMOKE}", "--data_dir=gs://locked/x",
                          "--model_dir=gs://locked/run"]),
    ]
    for module, args in cases:
      result = run(module, *args, timeout=120)
      assert result.returncode in (1, 2), result.stderr[-2000:]
      errors = error_lines(result)
      assert len(errors) == 1, (args, result.stderr[-2000:])
      assert "permission denied on gs://locked/" in errors[0], errors[0]
      assert "roles/storage.objectAdmin on gs://locked" in errors[0]
  finally:
    gcs.deny_buckets.discard("locked")


def test_no_credentials_says_how_to_authenticate(gcs, run, local_data,
                                                 tmp_path):
  gcs.create_bucket("auth")
  # google-cloud-storage without an emulator and without any credentials:
  # fails before any request (metadata lookups point at a closed port).
  result = run("trainer.data", "upload", f"--src={local_data}",
               "--dst=gs://auth/x", timeout=120,
               env={"STORAGE_EMULATOR_HOST": None,
                    "GOOGLE_APPLICATION_CREDENTIALS": None,
                    "CLOUDSDK_CONFIG": str(tmp_path), "HOME": str(tmp_path)})
  assert result.returncode == 1, result.stderr[-2000:]
  errors = error_lines(result)
  assert len(errors) == 1, result.stderr[-2000:]
  assert "no Google Cloud credentials found: run `gcloud auth " in errors[0]
  assert "application-default login`" in errors[0]


def test_data_dir_without_shards(gcs, run):
  gcs.create_bucket("empty")
  result = run("trainer.task", f"--config={SMOKE}",
               "--data_dir=gs://empty/nothing", "--model_dir=gs://empty/run")
  assert result.returncode == 2
  assert error_lines(result) == [
      "error: no training shards: no file matches "
      "'gs://empty/nothing/train-*-of-*.tfrecord' (generate them with "
      "python -m trainer.data generate --out_dir=DATA_DIR, or fix --data_dir "
      "/ config.data)"]


def test_manifest_disagreeing_with_objects(gcs, run, local_data):
  gcs.create_bucket("stale")
  assert run("trainer.data", "upload", f"--src={local_data}",
             "--dst=gs://stale/d").returncode == 0
  gcs.corrupt_object("stale", "d/eval-00001-of-00002.tfrecord", b"short")
  result = run("trainer.task", f"--config={SMOKE}", "--data_dir=gs://stale/d",
               "--model_dir=gs://stale/run")
  assert result.returncode == 2, result.stderr[-2000:]
  (error,) = error_lines(result)
  assert "gs://stale/d/eval-00001-of-00002.tfrecord has 5 bytes but " in error
  assert "python -m trainer.data verify" in error
