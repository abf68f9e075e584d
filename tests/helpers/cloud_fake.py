"""A recording fake of the Cloud TPU, Compute, Vertex AI, Cloud Build and
Artifact Registry REST APIs for gcloud.

The real ``gcloud`` is pointed at a ThreadingHTTPServer on 127.0.0.1 with
``CLOUDSDK_API_ENDPOINT_OVERRIDES_*`` (see ``CloudFake.env``); every request is
recorded (``requests``, ``find``) and answered from dicts. ``ssh``/``scp``
stand-ins, first on PATH, log their argv and act on per-worker sandbox
directories instead of hosts. Nothing connects anywhere but 127.0.0.1.

A node's worker i has ipAddress 127.0.1.<i+1> and externalIp 127.0.2.<i+1>
(never contacted); its sandbox is <root>/hosts/<externalIp>/home, so two TPUs
share sandboxes. Workers per accelerator type: HOSTS (documented counts).

What gcloud 528 does, measured against this fake:

* Auth: ``gcloud auth activate-service-account --key-file`` with a key whose
  ``token_uri`` is ``<fake>/token`` POSTs a form-encoded JWT grant there (body
  None here); the token is cached in CLOUDSDK_CONFIG, so later commands rarely
  call /token. Every command then takes about 0.6-0.9 s.
* TPU (v2): ``tpu-vm create`` POSTs ``nodes?nodeId=N`` with acceleratorType,
  runtimeVersion, ``schedulingConfig {preemptible, reserved, spot}`` and
  networkConfig; an operation answered ``done`` is not polled. ``versions
  list`` GETs runtimeVersions: ``--format=value(version)`` prints them in the
  server's order, the default table sorts them. ``queued-resources create``
  POSTs ``queuedResources?queuedResourceId=Q`` (``tpu.nodeSpec[0]``:
  parent, nodeId, node; ``spot: {}`` / ``guaranteed: {}``) and then GETs the
  resource once. ``queued-resources delete --force`` sends ``force=True``.
  A missing node/resource: ``ERROR: (gcloud...) NOT_FOUND: <message>``, rc 1.
* ``tpu-vm ssh NAME --command=CMD``: GET node (must be READY, needs ``id``),
  POST ``:getGuestAttributes`` (``workerIds: [""]`` for all, ``["1"]`` for
  one; gcloud indexes the list, so an empty answer crashes it), GET compute
  project (``commonInstanceMetadata``), PATCH ``updateMask=metadata`` with the
  *whole* metadata (``ssh-keys`` = ``"\\n<user>:<pubkey> <user>"``) unless the
  key is already there, then polls the operation (about 1 s extra). It runs::

    ssh -T -i ~/.ssh/google_compute_engine -o CheckHostIP=no -o HashKnownHosts=no
        -o HostKeyAlias=tpu.<node id>-<worker> -o IdentitiesOnly=yes
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=~/.ssh/google_compute_known_hosts
        <local user>@<externalIp> -- <CMD split on single spaces>

  (``-t`` and no ``--`` without --command). ssh rejoins the words with
  spaces, so CMD arrives unchanged. ``--worker=all`` (or ``1,3``/``0-2``) needs
  --command and starts one ssh per worker at once, in threads (GA has no
  --batch-size, although it prints "Using ssh batch size of 1"). The exit status is
  the remote one (the first failing worker's for several). From gcloud's
  source: exit status 255 means "ssh failed" and is retried 10 times, 5 s
  apart. The first real ``tpu-vm ssh`` runs ssh-keygen, whose chatter goes to
  stdout; start() makes the key beforehand.
* ``tpu-vm scp [--recurse] SRC NAME:DEST --worker=all`` runs, per worker and
  concurrently, ``scp [-r] -i KEY -o ...(same options) SRC <user>@<ip>:DEST``;
  ``NAME:SRC LOCAL`` copies back from one worker. Any non-zero scp status is
  retried 10 times, 5 s apart. For several workers gcloud first checks the key
  is in ssh-agent: it warns without an agent (``SSH_AUTH_SOCK`` is emptied
  here) and fails if an agent runs without the key.
* ``ai custom-jobs create --region=R --config=job.yaml``: with an override
  that does not start with "aiplatform" gcloud uses it as is (no
  ``R-aiplatform`` host). POSTs ``/v1/projects/P/locations/R/customJobs``
  with displayName and jobSpec (int64 fields such as replicaCount as strings).
  stdout is empty; stderr has ``Using endpoint [...]`` and ``CustomJob
  [projects/P/locations/R/customJobs/ID] is submitted successfully.``;
  ``--format=value(name)`` prints the name on stdout. ``cancel`` POSTs
  ``:cancel``. ``stream-logs`` GETs the job, then POSTs Cloud Logging's
  ``/v2/entries:list``, which is not faked: LOGGING points here so it fails at
  once with NOT_FOUND instead of trying the internet.
* Artifact Registry (v1; the override has the path ``/artifactregistry/``,
  as Cloud Build's has ``/cloudbuild/``: both APIs, and Vertex AI, name
  operations ``/v1/projects/P/locations/L/operations/ID``).
  ``artifacts repositories describe R --location=L`` GETs
  ``repositories/R`` (missing: ``ERROR: (gcloud...) NOT_FOUND: <message>.
  This command is authenticated as <account> ...``, rc 1). ``repositories
  create R --repository-format=docker`` POSTs ``repositories?repositoryId=R``
  with name, format DOCKER and mode MODE_UNSPECIFIED; an operation answered
  ``done`` is not polled, gcloud GETs the repository once.
  ``artifacts docker tags list L-docker.pkg.dev/P/R/IMAGE`` GETs the
  repository (NOT_FOUND as above when it is missing), then
  ``repositories/R/packages/IMAGE/tags``; ``--format=value(tag)`` prints
  the tag's last path segment (``value(tag.basename())`` says so).
  ``artifacts docker images describe`` also asks the Container Analysis API
  (not faked).
* Cloud Build (v1). ``builds submit SOURCE.tar.gz --config=cloudbuild.yaml
  --region=L --async`` first stages the source with the Storage API:
  without ``--gcs-source-staging-dir`` it creates the bucket
  ``<project>_cloudbuild`` if missing and uploads to
  ``source/<time>-<hex>.gz`` there (the fake-gcs-server of
  ``storage_env(gcs)`` serves both; without it the STORAGE override here
  answers 404). Then it POSTs ``locations/L/builds`` with ``source.
  storageSource {bucket, object, generation}`` and the config's steps,
  images and timeout, reads the build from the returned operation's
  ``metadata.build`` and prints ``Created [...]`` and ``Logs are available
  at [ <logUrl> ]`` on stderr; ``--format=value(id)`` prints the id.
  Without --async (read in gcloud's source, api_lib/cloudbuild/logs.py) it
  waits, polling GET ``builds/ID`` every --polling-interval seconds, and
  meanwhile streams the log from
  ``https://storage.googleapis.com/<logsBucket>/log-<id>.txt``, a URL no
  override changes (--suppress-logs still fetches it; only
  ``options.logging`` NONE or CLOUD_LOGGING_ONLY stop it): so tests use
  --async and ``builds describe``, which GETs ``builds/ID``.
* ``gcloud storage`` with ``storage_env(gcs)`` (tests/helpers/gcs_emulator.py): cp of
  files (up and down), cat, ls, ls -r, rsync -r and ``cp -r DIR gs://bucket``
  work. ``cp -r DIR gs://bucket/prefix`` and ``rm -r gs://bucket/prefix`` fail
  (``HTTPError 404``): gcloud GETs ``/storage/v1/b/B/storageLayout``, which
  fake-gcs-server does not serve, and only tolerates 403 there. ``rm``
  deletes but exits 1 (``'NoneType' object has no attribute 'items'``):
  fake-gcs-server answers DELETE with 200, not GCS's empty 204.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Runtime versions every zone lists unless runtime_versions[zone] says
# otherwise. Names seen in Google's docs and samples; TF 2.18 runtimes exist
# per hardware generation.
DEFAULT_RUNTIME_VERSIONS = (
    "tpu-ubuntu2204-base", "v2-alpha-tpuv5", "v2-alpha-tpuv5-lite", "v2-alpha-tpuv6e",
    "tpu-vm-tf-2.16.1-pjrt", "tpu-vm-tf-2.16.1-pod-pjrt",
    "tpu-vm-tf-2.17.0-pjrt", "tpu-vm-tf-2.17.0-pod-pjrt",
    "tpu-vm-tf-2.18.0-pjrt-v5p-and-below", "tpu-vm-tf-2.18.0-pod-pjrt-v5p-and-below",
    "tpu-vm-tf-2.18.0-pjrt-v5e-and-v6", "tpu-vm-tf-2.18.0-pod-pjrt-v5e-and-v6",
)
PROJECT = "test-project"
PROJECT_NUMBER = "123456789012"
ACCOUNT = f"tester@{PROJECT}.iam.gserviceaccount.com"


# Hosts (TPU VM workers) of the accelerator types the tests create, from
# Cloud TPU's documentation, not from launch/tpu_vm.sh's rule:
# - v4 (https://cloud.google.com/tpu/docs/v4): 2 TensorCores a chip, 4 chips
#   a host, and v4-N counts TensorCores: 8 a host.
# - v5p (https://cloud.google.com/tpu/docs/v5p): v5p-8 (2x2x1) 1 host, v5p-16
#   (2x2x2) 2 hosts.
# - v5e (https://cloud.google.com/tpu/docs/v5e): v5litepod-N counts chips;
#   "each TPU VM in a v5e slice contains 1, 4 or 8 chips" (its VM types);
#   up to 2x4 (v5litepod-8) one VM, and multi-host slices are built of the
#   4-chip VM type (ct5lp-hightpu-4t; GKE's TPU planning page: the 2x2
#   topology of that type is the single-host one), so v5litepod-16 has 4
#   VMs. (The page's topology table says 2 hosts for 4x4: physical 8-chip
#   hosts, not the TPU VMs gcloud ssh --worker=all reaches.)
# - v2-8: one host (https://cloud.google.com/tpu/docs/v2), the fake's
#   default type.
HOSTS = {
    "v2-8": 1,
    "v4-8": 1, "v4-16": 2, "v4-32": 4,
    "v5p-8": 1, "v5p-16": 2,
    "v5litepod-8": 1, "v5litepod-16": 4,
}


class UnknownAcceleratorType(KeyError):
  """An accelerator type not in HOSTS (gcloud gets a 400 naming it)."""


def host_count(accelerator_type: str) -> int:
  """Workers of a slice, from HOSTS; UnknownAcceleratorType (a KeyError)
  naming a type not in it."""
  try:
    return HOSTS[accelerator_type]
  except KeyError:
    raise UnknownAcceleratorType(
        f"accelerator type {accelerator_type!r} is not in cloud_fake.HOSTS: "
        "add it with its documented host count") from None


@dataclasses.dataclass
class Request:
  method: str
  path: str       # unquoted, without the query
  query: dict     # str -> str (last value wins)
  body: object    # parsed JSON, or None
  raw: bytes = b""


class HttpError(Exception):
  def __init__(self, code, status, message):
    super().__init__(message)
    self.code, self.status, self.message = code, status, message


class CloudFake:
  """start() it, then run gcloud with {**os.environ, **fake.env}.

  State (dicts keyed by full resource name, jobs by numeric id): nodes,
  queued, jobs, operations. Settings: runtime_versions[zone] (default
  DEFAULT_RUNTIME_VERSIONS); queued_active_after (a queued resource answers
  WAITING_FOR_RESOURCES to that many GETs, counting the one `create` makes,
  then ACTIVE and its node exists). Paths: root, remote_bin (first on the
  workers' PATH), config_dir (CLOUDSDK_CONFIG), local_home (HOME), url.
  """

  def __init__(self, root: str):
    self.root = os.path.abspath(root)
    self.remote_bin = os.path.join(self.root, "remote_bin")
    self.config_dir = os.path.join(self.root, "gcloud-config")
    self.local_home = os.path.join(self.root, "local-home")
    self._bin = os.path.join(self.root, "bin")
    self._lock = threading.RLock()
    self._server = None
    self.url = ""
    self.env: dict[str, str] = {}
    self._base_env: dict[str, str] = {}
    self.reset()

  # ------------------------------------------------------------- test API

  def reset(self) -> None:
    """Clears requests, nodes, queued resources, jobs, ssh/scp logs, worker
    sandboxes and remote_bin; restores settings, env and the gcloud config."""
    with self._lock:
      self.requests: list[Request] = []
      self.runtime_versions: dict[str, list[str]] = {}
      self.nodes: dict[str, dict] = {}        # full name -> Node
      self.queued: dict[str, dict] = {}       # full name -> QueuedResource
      self.jobs: dict[str, dict] = {}         # numeric id -> CustomJob
      self.operations: dict[str, dict] = {}   # full name -> Operation
      self.queued_active_after = 2
      self._qr_gets: dict[str, int] = {}
      self._forced: dict[str, str] = {}
      self._ids = itertools.count(1)
      self.env = dict(self._base_env)
      self._reset_image_apis()
    shutil.rmtree(os.path.join(self.root, "hosts"), ignore_errors=True)
    shutil.rmtree(self.remote_bin, ignore_errors=True)
    os.makedirs(self.remote_bin)
    for name in ("ssh.log", "scp.log"):
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(self.root, name))
    pristine = self.config_dir + ".pristine"
    if os.path.isdir(pristine):
      shutil.rmtree(self.config_dir, ignore_errors=True)
      shutil.copytree(pristine, self.config_dir)

  def find(self, method: str | None, path_regex: str) -> list[Request]:
    """Recorded requests with this method (None: any) whose path matches
    path_regex (re.search)."""
    with self._lock:
      return [r for r in self.requests
              if method in (None, r.method) and re.search(path_regex, r.path)]

  def set_queued_state(self, qr_id: str, state: str) -> None:
    """Pins queued resource qr_id's state.state (now, or when it is created),
    e.g. FAILED or SUSPENDED; ACTIVE also creates its node."""
    with self._lock:
      self._forced[qr_id] = state
      for name, qr in self.queued.items():
        if name.endswith("/" + qr_id):
          self._set_qr_state(qr, state)

  def set_job_state(self, job_id: str, state: str) -> None:
    """Sets custom job job_id's state, e.g. JOB_STATE_RUNNING."""
    with self._lock:
      self.jobs[str(job_id)]["state"] = state

  def ssh_calls(self) -> list[list[str]]:
    """argv of every ssh gcloud ran, argv[0] "ssh", in start order."""
    return self._read_log("ssh")

  def scp_calls(self) -> list[list[str]]:
    """argv of every scp gcloud ran, argv[0] "scp"."""
    return self._read_log("scp")

  def host_home(self, ip: str) -> str:
    """The sandbox home directory of the worker reached at `ip`."""
    return os.path.join(self.root, "hosts", ip, "home")

  def worker_home(self, node_id: str, worker: int = 0) -> str:
    """The sandbox home of worker `worker` of TPU `node_id`."""
    with self._lock:
      node = next(n for k, n in self.nodes.items() if k.endswith("/nodes/" + node_id))
      return self.host_home(node["networkEndpoints"][worker]["accessConfig"]["externalIp"])

  def storage_env(self, gcs) -> dict[str, str]:
    """env sending `gcloud storage` to a tests/gcs_emulator.GcsEmulator."""
    return {"CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE":
            gcs.env["STORAGE_EMULATOR_HOST"] + "/storage/v1/"}

  def gcloud(self, *args, env=None, timeout=120, **kwargs):
    """Runs gcloud with os.environ + self.env + env; a CompletedProcess."""
    return subprocess.run(["gcloud", *args], env={**os.environ, **self.env, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, **kwargs)

  def run_script(self, script, *args, env=None, unset=(), timeout=240):
    """Runs `bash script args` (a launch/ script) in the repository root
    with os.environ less the variables in `unset`, plus self.env and env."""
    full_env = {k: v for k, v in os.environ.items() if k not in unset}
    full_env.update(self.env)
    full_env.update(env or {})
    return subprocess.run(["bash", script, *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout,
                          stdin=subprocess.DEVNULL,
                          cwd=os.path.dirname(os.path.dirname(script)))

  def _read_log(self, name):
    try:
      with open(os.path.join(self.root, name + ".log"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]
    except FileNotFoundError:
      return []

  # ------------------------------------------------------------ lifecycle

  def start(self) -> None:
    """Serves on a free port, writes the stand-ins, activates the service
    account and makes gcloud's SSH key (so no command prints ssh-keygen's
    chatter on stdout, as the first real `tpu-vm ssh` does)."""
    self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
    self._server.daemon_threads = True
    threading.Thread(target=self._server.serve_forever, daemon=True).start()
    self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
    for d in (self._bin, self.config_dir, os.path.join(self.local_home, ".ssh")):
      os.makedirs(d, exist_ok=True)
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("ssh", "scp"):
      path = os.path.join(self._bin, name)
      with open(path, "w", encoding="utf-8") as f:
        f.write(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {here!r})\n"
                f"import cloud_fake\nsys.exit(cloud_fake.{name}_main({self.root!r}, sys.argv[1:]))\n")
      os.chmod(path, 0o755)
    self._base_env = self.env = {
        "CLOUDSDK_CONFIG": self.config_dir,
        "CLOUDSDK_CORE_PROJECT": PROJECT,
        "CLOUDSDK_CORE_ACCOUNT": ACCOUNT,
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
        "CLOUDSDK_SURVEY_DISABLE_PROMPTS": "true",
        "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
        "CLOUDSDK_CORE_DISABLE_FILE_LOGGING": "true",
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_TPU": self.url + "/",
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE": self.url + "/compute/v1/",
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_AIPLATFORM": self.url + "/",
        # A path each: their operations share /v1/projects/P/locations/L/operations.
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_CLOUDBUILD": self.url + "/cloudbuild/",
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_ARTIFACTREGISTRY": self.url + "/artifactregistry/",
        # Not faked; here so their calls fail fast (404) instead of going out.
        # (storage_env(gcs) sends `gcloud storage` to a GCS emulator.)
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE": self.url + "/storage/v1/",
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_LOGGING": self.url + "/",
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_OSLOGIN": self.url + "/",
        "HOME": self.local_home,  # gcloud's ~/.ssh/google_compute_engine
        "PATH": self._bin + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "SSH_AUTH_SOCK": "",
    }
    self._activate_service_account()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    os.path.join(self.local_home, ".ssh", "google_compute_engine")],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True)
    shutil.copytree(self.config_dir, self.config_dir + ".pristine")
    self.reset()

  def stop(self) -> None:
    if self._server is not None:
      self._server.shutdown()
      self._server.server_close()
      self._server = None

  def _activate_service_account(self):
    from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives.asymmetric import rsa  # pylint: disable=import-outside-toplevel
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    key_file = os.path.join(self.root, "service-account.json")
    with open(key_file, "w", encoding="utf-8") as f:
      json.dump({"type": "service_account", "project_id": PROJECT,
                 "private_key_id": "0123456789abcdef", "private_key": pem,
                 "client_email": ACCOUNT, "client_id": "1234567890",
                 "token_uri": self.url + "/token"}, f)
    proc = self.gcloud("auth", "activate-service-account", "--key-file=" + key_file)
    if proc.returncode:
      raise RuntimeError("gcloud auth activate-service-account failed:\n" + proc.stderr)

  # ------------------------------------------- request handling (lock held)

  def handle(self, method, path, query, body):
    """(status, reply) for one request."""
    if path == "/token" and method == "POST":
      return 200, {"access_token": "fake-token", "token_type": "Bearer", "expires_in": 3600}
    for pattern, methods in _ROUTES:
      m = re.fullmatch(pattern, path)
      if m and method in methods:
        return 200, methods[method](self, m, query, body or {})
    raise HttpError(404, "NOT_FOUND", f"{method} {path} is not served by the fake")

  def _get(self, store, name):
    if name not in store:
      raise HttpError(404, "NOT_FOUND", f"Resource '{name}' was not found")
    return store[name]

  def _operation(self, parent, response, verb):
    name = f"{parent}/operations/operation-{next(self._ids)}"
    self.operations[name] = {"name": name, "done": True, "response": response,
                             "metadata": {"verb": verb, "target": response["name"]}}
    return self.operations[name]

  def _make_node(self, name, spec):
    accel = spec.get("acceleratorType", "v2-8")
    node = {**spec, "name": name, "id": str(next(self._ids)), "acceleratorType": accel,
            "state": "READY", "health": "HEALTHY", "apiVersion": "V2", "createTime": _now(),
            "networkEndpoints": [
                {"ipAddress": f"127.0.1.{i + 1}", "port": 8470,
                 "accessConfig": {"externalIp": f"127.0.2.{i + 1}"}}
                for i in range(host_count(accel))]}
    self.nodes[name] = node
    return node

  def _set_qr_state(self, qr, state):
    qr["state"] = {"state": state}
    if state == "ACTIVE":
      for spec in qr.get("tpu", {}).get("nodeSpec", []):
        name = f"{spec['parent']}/nodes/{spec['nodeId']}"
        if name not in self.nodes:
          self._make_node(name, spec.get("node", {}))

  def _list(self, store, key, m):
    prefix = _parent(m) + "/"
    return {key: [v for k, v in store.items() if k.startswith(prefix)]}

  def _create(self, store, m, q, id_param):
    name = f"{_parent(m)}/{m['kind']}/{q.get(id_param, '')}"
    if name in store:
      raise HttpError(409, "ALREADY_EXISTS", f"Resource '{name}' already exists")
    return name

  def runtime_versions_list(self, m, q, b):
    versions = self.runtime_versions.get(m["loc"], DEFAULT_RUNTIME_VERSIONS)
    return {"runtimeVersions": [{"name": f"{_parent(m)}/runtimeVersions/{v}", "version": v}
                                for v in versions]}

  def node_create(self, m, q, body):
    name = self._create(self.nodes, m, q, "nodeId")
    return self._operation(_parent(m), self._make_node(name, body), "create")

  def node_delete(self, m, q, b):
    node = self.nodes.pop(_name(m), None) or self._get(self.nodes, _name(m))
    return self._operation(_parent(m), node, "delete")

  def node_patch(self, m, q, body):
    node = self._get(self.nodes, _name(m))
    for field in filter(None, q.get("updateMask", "").split(",")):
      if field in body:   # gcloud sends the whole field (e.g. all metadata)
        node[field] = body[field]
    return self._operation(_parent(m), node, "update")

  def node_guest_attributes(self, m, q, body):
    node = self._get(self.nodes, _name(m))
    workers = [w for w in body.get("workerIds", []) if w] or node["networkEndpoints"]
    return {"guestAttributes": [{"queryPath": "", "queryValue": {"items": []}}
                                for _ in workers]}

  def qr_create(self, m, q, body):
    name = self._create(self.queued, m, q, "queuedResourceId")
    qr = {**body, "name": name, "createTime": _now()}
    self._set_qr_state(qr, self._forced.get(_last(name), "WAITING_FOR_RESOURCES"))
    self.queued[name], self._qr_gets[name] = qr, 0
    return self._operation(_parent(m), qr, "create")

  def qr_get(self, m, q, b):
    name = _name(m)
    qr = self._get(self.queued, name)
    self._qr_gets[name] += 1
    if (qr["state"]["state"] == "WAITING_FOR_RESOURCES" and _last(name) not in self._forced
        and self._qr_gets[name] > self.queued_active_after):
      self._set_qr_state(qr, "ACTIVE")
    return qr

  def qr_delete(self, m, q, b):
    qr = self._get(self.queued, _name(m))
    if qr["state"]["state"] == "ACTIVE" and q.get("force", "").lower() != "true":
      raise HttpError(400, "FAILED_PRECONDITION",
                      f"Queued resource '{_name(m)}' is ACTIVE: delete it with force")
    del self.queued[_name(m)]
    for spec in qr.get("tpu", {}).get("nodeSpec", []):
      self.nodes.pop(f"{spec['parent']}/nodes/{spec['nodeId']}", None)
    return self._operation(_parent(m), qr, "delete")

  def compute_project(self, m, q, b):
    return {"kind": "compute#project", "name": m["p"], "id": "4242",
            "commonInstanceMetadata": {"kind": "compute#metadata", "items": []}}

  def job_create(self, m, q, body):
    job_id = str(1000000000000000000 + next(self._ids))
    self.jobs[job_id] = {**body, "name": f"{_parent(m)}/customJobs/{job_id}",
                         "state": "JOB_STATE_PENDING", "createTime": _now()}
    return self.jobs[job_id]

  def _job(self, m):
    job = self.jobs.get(m["id"])
    if job is None or job["name"] != _name(m):
      raise HttpError(404, "NOT_FOUND", f"CustomJob '{_name(m)}' was not found")
    return job

  def job_get(self, m, q, b):
    job = self._job(m)
    reply = dict(job)
    if job["state"] == "JOB_STATE_CANCELLING":   # cancelled by the next look
      job["state"] = "JOB_STATE_CANCELLED"
    return reply

  def job_cancel(self, m, q, b):
    self._job(m)["state"] = "JOB_STATE_CANCELLING"
    return {}

  # --------------------- Cloud Build v1 and Artifact Registry v1 (images)
  #
  # State: repositories (full name -> Repository), docker_tags (image URI
  # with its tag -> digest), builds (id -> Build). Settings: build_result,
  # the status a build ends with (SUCCESS pushes its `images`: their tags
  # then exist; FAILURE sets failureInfo from build_failure_detail);
  # build_working_polls, GETs answered WORKING before it ends (a slow build).

  def _reset_image_apis(self):
    self.repositories: dict[str, dict] = {}
    self.docker_tags: dict[str, str] = {}
    self.builds: dict[str, dict] = {}
    self.build_result = "SUCCESS"
    self.build_failure_detail = ('Build step failure: build step 0 "gcr.io/cloud-builders/'
                                 'docker" failed: step exited with non-zero status: 1')
    self.build_working_polls = 0
    self._build_gets: dict[str, int] = {}

  def add_docker_image(self, uri: str) -> None:
    """Makes image `uri` (LOCATION-docker.pkg.dev/PROJECT/REPO/IMAGE:TAG)
    exist, with its repository."""
    with self._lock:
      repo, _, _ = _docker_names(uri)
      self.repositories.setdefault(repo, {
          "name": repo, "format": "DOCKER", "mode": "STANDARD_REPOSITORY",
          "createTime": _now()})
      self.docker_tags[uri] = "sha256:" + hashlib.sha256(uri.encode()).hexdigest()

  def repository_get(self, m, q, b):
    return self._get(self.repositories, _api_name(m))

  def repository_create(self, m, q, body):
    name = self._create(self.repositories, m, q, "repositoryId")
    self.repositories[name] = {**body, "name": name, "createTime": _now()}
    operation = f"{_parent(m)}/operations/{uuid.UUID(int=next(self._ids))}"
    return {"name": operation, "done": True, "response": {
        "@type": "type.googleapis.com/google.devtools.artifactregistry.v1.Repository",
        **self.repositories[name]}}

  def docker_tags_list(self, m, q, b):
    repo = self._get(self.repositories, f"{_parent(m)}/repositories/{m['repo']}")
    host = f"{m['loc']}-docker.pkg.dev/{m['p']}/{_last(repo['name'])}/{m['pkg']}:"
    package = f"{repo['name']}/packages/{urllib.parse.quote(m['pkg'], safe='')}"
    return {"tags": [{"name": f"{package}/tags/{uri[len(host):]}",
                      "version": f"{package}/versions/{digest}"}
                     for uri, digest in sorted(self.docker_tags.items())
                     if uri.startswith(host)]}

  def build_create(self, m, q, body):
    build_id = str(uuid.UUID(int=next(self._ids)))
    self.builds[build_id] = build = {
        **body, "id": build_id, "name": f"{_parent(m)}/builds/{build_id}",
        "projectId": m["p"], "status": "QUEUED", "createTime": _now(),
        "logsBucket": f"gs://{PROJECT_NUMBER}.cloudbuild-logs.googleusercontent.com",
        "logUrl": (f"https://console.cloud.google.com/cloud-build/builds;region={m['loc']}/"
                   f"{build_id}?project={PROJECT_NUMBER}")}
    self._build_gets[build_id] = 0
    return {"name": f"{_parent(m)}/operations/{uuid.UUID(int=next(self._ids))}",
            "metadata": {"@type": ("type.googleapis.com/"
                                   "google.devtools.cloudbuild.v1.BuildOperationMetadata"),
                         "build": dict(build)}}

  def build_get(self, m, q, b):
    build = self.builds.get(m["id"])
    if build is None or build["name"] != _api_name(m):
      raise HttpError(404, "NOT_FOUND", "Requested entity was not found.")
    self._build_gets[m["id"]] += 1
    if build["status"] in ("QUEUED", "WORKING"):
      build.setdefault("startTime", _now())
      if self._build_gets[m["id"]] <= self.build_working_polls:
        build["status"] = "WORKING"
      else:
        self._finish_build(build)
    return build

  def _finish_build(self, build):
    build.update(status=self.build_result, finishTime=_now())
    if self.build_result == "SUCCESS":
      for uri in build.get("images", []):
        self.add_docker_image(uri)
      build["results"] = {"images": [
          {"name": uri, "digest": self.docker_tags[uri]} for uri in build.get("images", [])]}
    elif self.build_result == "FAILURE":
      build["statusDetail"] = self.build_failure_detail
      build["failureInfo"] = {"type": "USER_BUILD_STEP", "detail": self.build_failure_detail}


def ok(result):
  """The CompletedProcess of a command that must have succeeded."""
  assert result.returncode == 0, result.stdout + result.stderr
  return result


def error_line(result):
  """The one `error: ...` line a failed command printed on stderr."""
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, result.stderr
  return lines[0]


def _parent(m):
  return f"projects/{m['p']}/locations/{m['loc']}"


def _name(m):
  """The resource name in a matched path: /v2/projects/.../x:verb -> projects/.../x."""
  return m[0].split("/", 2)[2].split(":")[0]


def _last(name):
  return name.rsplit("/", 1)[1]


def _now():
  return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


_LOC = r"/projects/(?P<p>[^/]+)/locations/(?P<loc>[^/]+)"
_TPU, _AI = "/v2" + _LOC, "/v1" + _LOC
_C = CloudFake
_ROUTES = [
    (_TPU + "/runtimeVersions", {"GET": _C.runtime_versions_list}),
    (_TPU + "/(?P<kind>nodes)", {"GET": lambda s, m, q, b: s._list(s.nodes, "nodes", m),
                                 "POST": _C.node_create}),
    (_TPU + "/nodes/[^/:]+", {"GET": lambda s, m, q, b: s._get(s.nodes, _name(m)),
                              "DELETE": _C.node_delete, "PATCH": _C.node_patch}),
    (_TPU + "/nodes/[^/:]+:getGuestAttributes", {"POST": _C.node_guest_attributes}),
    (_TPU + "/operations/[^/]+", {"GET": lambda s, m, q, b: s._get(s.operations, _name(m))}),
    (_TPU + "/(?P<kind>queuedResources)", {
        "GET": lambda s, m, q, b: s._list(s.queued, "queuedResources", m),
        "POST": _C.qr_create}),
    (_TPU + "/queuedResources/[^/:]+", {"GET": _C.qr_get, "DELETE": _C.qr_delete}),
    (r"/compute/v1/projects/(?P<p>[^/]+)", {"GET": _C.compute_project}),
    (_AI + "/customJobs", {"GET": lambda s, m, q, b: {"customJobs": [
        j for j in s.jobs.values() if j["name"].startswith(_parent(m) + "/")]},
                           "POST": _C.job_create}),
    (_AI + r"/customJobs/(?P<id>\d+)", {"GET": _C.job_get}),
    (_AI + r"/customJobs/(?P<id>\d+):cancel", {"POST": _C.job_cancel}),
    # Cloud Build v1 and Artifact Registry v1 (CloudFake.env gives each a path).
    ("/cloudbuild/v1" + _LOC + "/builds", {"POST": _C.build_create}),
    ("/cloudbuild/v1" + _LOC + r"/builds/(?P<id>[^/:]+)", {"GET": _C.build_get}),
    ("/artifactregistry/v1" + _LOC + "/(?P<kind>repositories)",
     {"POST": _C.repository_create}),
    ("/artifactregistry/v1" + _LOC + "/repositories/[^/]+", {"GET": _C.repository_get}),
    ("/artifactregistry/v1" + _LOC + "/repositories/(?P<repo>[^/]+)/packages/(?P<pkg>[^/]+)"
     "/tags", {"GET": _C.docker_tags_list}),
]


def _api_name(m):
  """The resource name in a path under an API's own prefix:
  /cloudbuild/v1/projects/.../x -> projects/.../x."""
  return m[0][m[0].index("/projects/") + 1:].split(":")[0]


def _docker_names(uri):
  """LOCATION-docker.pkg.dev/PROJECT/REPO/IMAGE:TAG -> (repository's full
  name, IMAGE, TAG)."""
  m = re.fullmatch(r"([a-z0-9-]+)-docker\.pkg\.dev/([^/]+)/([^/]+)/([^:]+):([^:/]+)", uri)
  if not m:
    raise ValueError(f"not an Artifact Registry docker image with a tag: {uri!r}")
  return f"projects/{m[2]}/locations/{m[1]}/repositories/{m[3]}", m[4], m[5]


def _make_handler(fake: CloudFake):
  class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
      pass

    def _serve(self):
      url = urllib.parse.urlsplit(self.path)
      query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
      raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
      try:
        body = json.loads(raw) if raw else None
      except ValueError:
        body = None
      path = urllib.parse.unquote(url.path)
      with fake._lock:  # pylint: disable=protected-access
        fake.requests.append(Request(self.command, path, query, body, raw))
        try:
          status, reply = fake.handle(self.command, path, query, body)
        except HttpError as e:
          status = e.code
          reply = {"error": {"code": e.code, "message": e.message, "status": e.status}}
        except UnknownAcceleratorType as e:
          status = 400
          reply = {"error": {"code": 400, "message": e.args[0],
                             "status": "INVALID_ARGUMENT"}}
        data = json.dumps(reply).encode()
      self.send_response(status)
      self.send_header("Content-Type", "application/json; charset=UTF-8")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

  return Handler


# ------------------------------------------------------- ssh / scp stand-ins


def _log_argv(root, name, argv):
  """One write per line with O_APPEND: concurrent workers do not interleave."""
  fd = os.open(os.path.join(root, name + ".log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
  try:
    os.write(fd, (json.dumps([name, *argv]) + "\n").encode())
  finally:
    os.close(fd)


def _positionals(argv, takes_value):
  """argv after the options (flags in takes_value consume the next word)."""
  i = 0
  while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
    i += 2 if len(argv[i]) == 2 and argv[i][1] in takes_value else 1
  return argv[:i], argv[i:]


def ssh_main(root, argv):
  """Logs argv, then runs the remote command (or a shell reading stdin) with
  bash in the host's sandbox: HOME and cwd <root>/hosts/<ip>/home, PATH
  <root>/remote_bin:/usr/bin:/bin, CLOUD_FAKE_HOST=<ip>. Returns its status."""
  _log_argv(root, "ssh", argv)
  _, rest = _positionals(argv, "BbcDEeFIiJLlmOopQRSWw")
  if not rest:
    print("fake ssh: no destination", file=sys.stderr)
    return 255
  host = rest[0].rsplit("@", 1)[-1]
  words = rest[rest.index("--") + 1:] if "--" in rest else rest[1:]
  home = os.path.join(root, "hosts", host, "home")
  os.makedirs(home, exist_ok=True)
  env = {"HOME": home, "USER": "tester", "LOGNAME": "tester", "LANG": "C.UTF-8",
         "PATH": f"{root}/remote_bin:/usr/bin:/bin", "CLOUD_FAKE_HOST": host}
  return subprocess.call(["bash", "-c", " ".join(words)] if words else ["bash"],
                         cwd=home, env=env)


def _local_path(root, spec):
  """[user@]IP:PATH -> its sandbox path (~ is the host's home; an absolute
  path lies under <root>/hosts/<ip>); a local path is returned as is."""
  m = re.fullmatch(r"(?:[^@/:]+@)?([0-9.]+):(.*)", spec)
  if not m:
    return spec
  home = os.path.join(root, "hosts", m[1], "home")
  os.makedirs(home, exist_ok=True)
  path = m[2] or "~"
  if path == "~" or path.startswith("~/"):
    return home + path[1:]
  return os.path.join(root, "hosts", m[1]) + path if path.startswith("/") else os.path.join(home, path)


def scp_main(root, argv):
  """Logs argv, then copies like scp (-r for directories) between the local
  disk and the sandboxes."""
  _log_argv(root, "scp", argv)
  options, rest = _positionals(argv, "cDFiJlOoPSX")
  if len(rest) < 2:
    print("fake scp: usage: scp [options] SOURCE... TARGET", file=sys.stderr)
    return 1
  dest = _local_path(root, rest[-1])
  for src in (_local_path(root, s) for s in rest[:-1]):
    target = os.path.join(dest, os.path.basename(src.rstrip("/"))) if os.path.isdir(dest) else dest
    try:
      if not os.path.isdir(src):
        shutil.copy2(src, target)
      elif "-r" in options:
        shutil.copytree(src, target, dirs_exist_ok=True)
      else:
        raise OSError(f"{src}: not a regular file")
    except OSError as e:
      print(f"fake scp: {e}", file=sys.stderr)
      return 1
  return 0
