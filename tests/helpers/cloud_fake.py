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

Saying no as the APIs do:

* Bodies: every request body in _BODIES (TPU v2 nodes create/patch,
  getGuestAttributes, queuedResources create; Compute
  setCommonInstanceMetadata and instances, instanceTemplates,
  instanceGroupManagers, resourcePolicies inserts; Vertex AI customJobs and
  hyperparameterTuningJobs create; Cloud Build v1
  builds create; Artifact Registry v1 repositories create) is read with the
  Cloud SDK's own message class and apitools (``check_body``): an unknown
  name at any depth, a value of the wrong type or an enum value not listed
  is a 400 INVALID_ARGUMENT in the APIs' wording, e.g. ``Invalid JSON
  payload received. Unknown name "tpuTopolgy" at
  'custom_job.job_spec.worker_pool_specs[0].machine_spec': Cannot find
  field.``, with a google.rpc.BadRequest fieldViolation per name. gcloud
  sends a --config file's unknown names as they are and prints the answer
  (``ERROR: (gcloud.ai.custom-jobs.create) INVALID_ARGUMENT: ...`` and the
  violations as YAML).
* Cloud TPU: a create (node or queued resource) with an acceleratorType not
  in HOSTS or a runtimeVersion the zone does not list (runtime_versions) is a
  400 INVALID_ARGUMENT ``Cloud TPU received a bad request. the accelerator
  v9-13 was not found in zone Z`` (that sentence as reported from the real
  API for an accelerator; the runtime one is modelled on it).
* Compute Engine (v1): instances, instanceTemplates, instanceGroupManagers
  and resourcePolicies insert/get/list/delete (``compute``, keyed by the
  path after ``projects/``), a DONE operation of the request's scope for
  each insert/delete, ``listManagedInstances``, the image family Google
  names for TPU VMs (COMPUTE_IMAGE_FAMILIES) and an empty autoscaler list
  (``instance-groups managed delete`` asks). A machine type not in
  COMPUTE_TPU_MACHINE_TYPES (or the few general ones) is a 400 ``Invalid
  value for field 'resource.machineType': '...'. Machine type with name 'X'
  does not exist in zone 'Z'.``; deleting a template or policy a group
  uses is a 400 ``... is already being used by ...``. Each VM (alone or a
  group's) gets natIP 127.0.3.k and networkIP 127.0.4.k (k counts every VM
  the fake made), so ``gcloud compute ssh/scp`` reach its own sandbox
  (``host_home(natIP)``). Measured with gcloud 528: ``compute ssh NAME``
  GETs the instance and the project, sets the key in the project's
  metadata when missing, then runs ``ssh ... -o HostKeyAlias=compute.<id>
  root@<natIP> -- CMD`` (the first time after adding the key, ``-- :`` once
  first); ``instances create --image-family`` sends ``imageFamilyViews``
  without a GET, ``instance-templates create`` GETs the family; ``managed
  list-instances --format=value(instance.basename(),instanceStatus)``.
* Vertex AI: ``custom_job_errors``: the chief pool (the first) has exactly one
  replica, a non-empty pool a machineSpec.machineType and exactly one of
  containerSpec / pythonPackageSpec, acceleratorCount needs acceleratorType;
  answered 400 ``List of found errors:\t1.Field: job_spec...; Message: ...``;
  ``tuning_job_errors`` likewise for a hyperparameter tuning job (trial
  counts, the study's metrics and parameters, the trial's job spec).
* Operations, for tests: ``slow_next(kind, polls=N, seconds=S)`` answers the
  next operation of kind (OPERATION_KINDS, e.g. "tpu.nodes.create")
  done=false to N reads and for S seconds (a node is CREATING meanwhile);
  ``fail_next(kind, message, status="RESOURCE_EXHAUSTED")`` ends it done with
  ``error: {code: 8, message}`` and creates nothing (a TPU out of capacity),
  or with ``http_status=429`` refuses the request itself (a quota, as the TPU
  and Vertex AI APIs answer one). ``set_queued_state(id, "FAILED",
  error=message)`` fails a queued resource with state.failedData.error;
  ``fail_job(job_id, message, code=3)`` ends a custom job JOB_STATE_FAILED
  with its ``error``.
* What gcloud prints for those (tpu-vm create): a refused request ``ERROR:
  (gcloud.compute.tpus.tpu-vm.create) RESOURCE_EXHAUSTED: Quota limit '...'
  has been exceeded. ...``; a failed operation ``Create request issued for:
  [N]`` then ``ERROR: (gcloud...) {`` + the JSON ``"code": 8, "message":
  ...`` over several lines; a slow one ``Waiting for operation [...] to
  complete...`` then dots, ``done.``, ``Created tpu [N].`` (no spinner without
  a terminal). gcloud sleeps 1 s before its first read of an operation and
  2 s (x1.4 each time, plus up to 1 s jitter) between reads: each slow poll
  costs 2-3 s of test time.

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
  ``:cancel``. ``ai hp-tuning-jobs create --config=spec.yaml`` POSTs
  ``.../hyperparameterTuningJobs`` with the file's studySpec, trial counts
  and trialJobSpec (gcloud itself refuses a name its message lacks before
  sending) and prints ``Hyperparameter tuning job [ID] submitted
  successfully`` on stderr. ``stream-logs`` GETs the job, then POSTs Cloud Logging's
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
import importlib.util
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
# A create with a type not listed here is answered as Cloud TPU answers an
# unknown one (400): add a documented type here before a test uses it.
HOSTS = {
    "v2-8": 1,
    "v4-8": 1, "v4-16": 2, "v4-32": 4,
    "v5p-8": 1, "v5p-16": 2,
    "v5litepod-8": 1, "v5litepod-16": 4,
}

# TPU machine types Compute Engine offers (its "TPU machine types" page:
# ct6e-standard-1t/4t/8t for v6e, ct5p-hightpu-4t for v5p; 1, 4, 8 and 4
# chips). An instance or MIG with another machine type is refused as the
# Compute API refuses a machine type the zone does not have.
COMPUTE_TPU_MACHINE_TYPES = ("ct6e-standard-1t", "ct6e-standard-4t", "ct6e-standard-8t",
                             "ct5p-hightpu-4t")
COMPUTE_OTHER_MACHINE_TYPES = ("e2-standard-4", "n2-standard-8")
# (project, family) of the public images the fake serves: the family Google
# documents for TPU VMs on Compute Engine (v5e, v5p and v6e hosts).
COMPUTE_IMAGE_FAMILIES = (("ubuntu-os-accelerator-images",
                           "ubuntu-accel-2204-amd64-tpu-v5e-v5p-v6e"),)


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


# The kinds of request fail_next / slow_next act on: the next request of that
# kind (an operation, except for customJobs.create which only fails).
OPERATION_KINDS = ("tpu.nodes.create", "tpu.nodes.delete", "tpu.nodes.patch",
                   "tpu.queuedResources.create", "tpu.queuedResources.delete",
                   "aiplatform.customJobs.create", "compute.instances.insert",
                   "aiplatform.hyperparameterTuningJobs.create")


@dataclasses.dataclass
class _Plan:
  """What the next request of a kind does (CloudFake.slow_next/fail_next)."""
  polls: int = 0           # operation reads answered done=false
  seconds: float = 0.0     # ... and at least this long
  status: str = ""         # a google.rpc code name: the request fails
  message: str = ""
  http_status: int | None = None   # fail the request itself, not its operation


def _violation(field, description):
  return {"@type": "type.googleapis.com/google.rpc.BadRequest",
          "fieldViolations": [{"field": field, "description": description}]}


def custom_job_errors(job: dict) -> list[tuple[str, str]]:
  """(field, message) of each rule of Vertex AI's CustomJob reference that
  `job` breaks (documented ones; a body already valid as a message):
  the first worker pool is the chief (primary replica): exactly one
  replica; a pool that is not empty (an empty one skips that role) has a
  machineSpec with a machineType, one task (containerSpec or
  pythonPackageSpec, a oneof); acceleratorCount needs acceleratorType;
  scheduling's timeout and maxWaitDuration are google.protobuf.Duration
  values, whose JSON form is seconds ending in "s" ("86400s", "1.5s":
  protobuf's JSON mapping), so "24h" is refused."""
  errors = []
  scheduling = job.get("jobSpec", {}).get("scheduling") or {}
  for name in ("timeout", "maxWaitDuration"):
    value = scheduling.get(name)
    if value is not None and not re.fullmatch(r"-?[0-9]+(\.[0-9]{1,9})?s", value):
      errors.append((f"job_spec.scheduling.{_snake(name)}", "Invalid value "
                     f"(type.googleapis.com/google.protobuf.Duration), {json.dumps(value)}"))
  pools = job.get("jobSpec", {}).get("workerPoolSpecs", [])
  if not pools or not pools[0]:
    errors.append(("job_spec.worker_pool_specs[0]",
                   "The first worker pool (the chief) is required."))
  for index, pool in enumerate(pools):
    where = f"job_spec.worker_pool_specs[{index}]"
    if not pool:
      continue
    replicas = int(pool.get("replicaCount", 0))
    if index == 0 and replicas != 1:
      errors.append((f"{where}.replica_count", "The first worker pool (the chief) "
                     f"must have exactly 1 replica, got {replicas}."))
    machine = pool.get("machineSpec")
    if not machine or not machine.get("machineType"):
      errors.append((f"{where}.machine_spec.machine_type", "A machine type is required."))
    elif int(machine.get("acceleratorCount", 0)) and machine.get(
        "acceleratorType", "ACCELERATOR_TYPE_UNSPECIFIED") == "ACCELERATOR_TYPE_UNSPECIFIED":
      errors.append((f"{where}.machine_spec.accelerator_type",
                     f"accelerator_count is {machine['acceleratorCount']} but no "
                     "accelerator_type is set."))
    tasks = [k for k in ("containerSpec", "pythonPackageSpec") if k in pool]
    if len(tasks) != 1:
      errors.append((f"{where}.task", "Exactly one of container_spec and "
                     f"python_package_spec is required, got {len(tasks) or 'none'}."))
  return errors


_VALUE_SPECS = ("doubleValueSpec", "integerValueSpec", "discreteValueSpec",
                "categoricalValueSpec")


def tuning_job_errors(job: dict) -> list[tuple[str, str]]:
  """(field, message) of each documented rule of Vertex AI's
  HyperparameterTuningJob and StudySpec reference that `job` breaks (a body
  already valid as a message): maxTrialCount and parallelTrialCount
  required (positive); a study with at least one metric, each with a
  metricId and a goal, and at least one parameter; a parameter has a
  parameterId without whitespace, unique, exactly one value spec (a
  oneof); a double or integer range has minValue <= maxValue, a discrete or
  categorical one at least one value; a log scale needs a strictly
  positive range; the trial's job spec obeys custom_job_errors."""
  errors = []
  for name in ("maxTrialCount", "parallelTrialCount"):
    if int(job.get(name, 0)) <= 0:
      errors.append((_snake(name), f"{name} must be greater than 0."))
  study = job.get("studySpec") or {}
  metrics = study.get("metrics", [])
  if not metrics:
    errors.append(("study_spec.metrics", "At least one metric is required."))
  for index, metric in enumerate(metrics):
    if not metric.get("metricId") or metric.get("goal", "GOAL_TYPE_UNSPECIFIED") == (
        "GOAL_TYPE_UNSPECIFIED"):
      errors.append((f"study_spec.metrics[{index}]", "metric_id and goal are required."))
  parameters = study.get("parameters", [])
  if not parameters:
    errors.append(("study_spec.parameters", "At least one parameter is required."))
  seen = set()
  for index, parameter in enumerate(parameters):
    where = f"study_spec.parameters[{index}]"
    pid = parameter.get("parameterId", "")
    if not pid or re.search(r"\s", pid) or pid in seen:
      errors.append((f"{where}.parameter_id", f"parameter_id {pid!r} must be non-empty, "
                     "without whitespace and unique."))
    seen.add(pid)
    specs = [k for k in _VALUE_SPECS if k in parameter]
    if len(specs) != 1:
      errors.append((f"{where}.parameter_value_spec", "Exactly one value spec is required, "
                     f"got {len(specs) or 'none'}."))
      continue
    spec = parameter[specs[0]]
    if specs[0] in ("doubleValueSpec", "integerValueSpec"):
      low, high = float(spec.get("minValue", 0)), float(spec.get("maxValue", 0))
      if low > high:
        errors.append((f"{where}.{_snake(specs[0])}", f"min_value {low:g} is greater "
                       f"than max_value {high:g}."))
      if "LOG" in parameter.get("scaleType", "") and low <= 0:
        errors.append((f"{where}.scale_type", "A log scale needs a strictly positive "
                       "feasible space."))
    elif not spec.get("values"):
      errors.append((f"{where}.{_snake(specs[0])}.values", "At least one value is required."))
  errors += [(f"trial_job_spec{f[len('job_spec'):]}", d) for f, d in
             custom_job_errors({"jobSpec": job.get("trialJobSpec") or {}})]
  return errors


@dataclasses.dataclass
class Request:
  method: str
  path: str       # unquoted, without the query
  query: dict     # str -> str (last value wins)
  body: object    # parsed JSON, or None
  raw: bytes = b""


class HttpError(Exception):
  """An error answer: HTTP `code`, google.rpc `status` name, message and
  optional `details` (google.rpc detail objects)."""

  def __init__(self, code, status, message, details=None):
    super().__init__(message)
    self.code, self.status, self.message = code, status, message
    self.details = details or []


def _invalid_fields(errors):
  """Vertex AI's 400 for a job body with bad fields ([(field, description)]):
  "List of found errors:\t1.Field: F; Message: D\t..." and a BadRequest
  detail with a fieldViolation each."""
  return HttpError(400, "INVALID_ARGUMENT", "List of found errors:\t" + "".join(
      f"{i}.Field: {f}; Message: {d}\t" for i, (f, d) in enumerate(errors, 1)),
                   [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                     "fieldViolations": [{"field": f, "description": d}
                                         for f, d in errors]}])


# google.rpc.Code numbers of the statuses the fake answers with.
RPC_CODES = {"INVALID_ARGUMENT": 3, "NOT_FOUND": 5, "ALREADY_EXISTS": 6,
             "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
             "FAILED_PRECONDITION": 9, "INTERNAL": 13, "UNAVAILABLE": 14}


class CloudFake:
  """start() it, then run gcloud with {**os.environ, **fake.env}.

  State (dicts keyed by full resource name, jobs by numeric id): nodes,
  queued, jobs, operations, project_metadata (Compute's
  commonInstanceMetadata). Settings: runtime_versions[zone] (default
  DEFAULT_RUNTIME_VERSIONS); queued_active_after (a queued resource answers
  WAITING_FOR_RESOURCES to that many GETs, counting the one `create` makes,
  then ACTIVE and its node exists); slow_next / fail_next / fail_job (see
  the module docstring). Paths: root, remote_bin (first on the
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
      self.tuning_jobs: dict[str, dict] = {}  # numeric id -> HyperparameterTuningJob
      self.operations: dict[str, dict] = {}   # full name -> Operation
      self.queued_active_after = 2
      self._qr_gets: dict[str, int] = {}
      self._forced: dict[str, dict] = {}     # queued resource id -> its state
      self.project_metadata: dict = {"kind": "compute#metadata", "items": []}
      # Compute Engine, keyed "P/zones/Z/instances/N" (the path after
      # projects/): instances, instanceGroupManagers, instanceTemplates
      # ("P/global/..."), resourcePolicies ("P/regions/R/...").
      self.compute: dict[str, dict] = {}
      self._next_host = itertools.count(1)
      self._plans: dict[str, list[_Plan]] = {}   # kind -> plans, first next
      self._pending: dict[str, list] = {}      # operation -> [polls, deadline, on_done]
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

  def set_queued_state(self, qr_id: str, state: str, error: str | None = None,
                       code: int = RPC_CODES["RESOURCE_EXHAUSTED"]) -> None:
    """Pins queued resource qr_id's state.state (now, or when it is created),
    e.g. FAILED or SUSPENDED; ACTIVE also creates its node. FAILED with an
    `error` message sets state.failedData.error {code, message}, as the API
    says why."""
    with self._lock:
      self._forced[qr_id] = {"state": state, "error": error, "code": code}
      for name, qr in self.queued.items():
        if name.endswith("/" + qr_id):
          self._set_qr_state(qr, state, self._forced[qr_id])

  def set_job_state(self, job_id: str, state: str) -> None:
    """Sets custom job job_id's state, e.g. JOB_STATE_RUNNING."""
    with self._lock:
      self.jobs[str(job_id)]["state"] = state

  def fail_job(self, job_id: str, message: str,
               code: int = RPC_CODES["INVALID_ARGUMENT"]) -> None:
    """Ends custom job job_id as Vertex AI ends a failed one: state
    JOB_STATE_FAILED, `error` {code, message} (a google.rpc.Status), endTime."""
    with self._lock:
      job = self.jobs[str(job_id)]
      job.update(state="JOB_STATE_FAILED", endTime=_now(),
                 error={"code": code, "message": message})

  def slow_next(self, kind: str, polls: int = 1, seconds: float = 0.0) -> None:
    """The next operation of `kind` (see OPERATION_KINDS) is answered
    done=false to its first `polls` reads and for at least `seconds`, so
    gcloud polls it; a created node is CREATING meanwhile."""
    with self._lock:
      self._plans.setdefault(kind, []).append(_Plan(polls=polls, seconds=seconds))

  def fail_next(self, kind: str, message: str, status: str = "RESOURCE_EXHAUSTED",
                http_status: int | None = None, polls: int = 0) -> None:
    """The next request of `kind` (see OPERATION_KINDS) fails with `status`
    (a google.rpc code name) and `message`: with http_status, the request
    itself is answered with that HTTP error (e.g. 429 for a quota, as the
    TPU and Vertex AI APIs answer one); otherwise its operation ends
    done=true with `error: {code, message}` (after `polls` reads answered
    done=false), the way a TPU create out of capacity ends (code 8), and
    nothing is created."""
    with self._lock:
      self._plans.setdefault(kind, []).append(_Plan(
          polls=polls, status=status, message=message, http_status=http_status))

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
    check_body(method, path, body)
    for pattern, methods in _ROUTES:
      m = re.fullmatch(pattern, path)
      if m and method in methods:
        return 200, methods[method](self, m, query, body or {})
    raise HttpError(404, "NOT_FOUND", f"{method} {path} is not served by the fake")

  def _get(self, store, name):
    if name not in store:
      raise HttpError(404, "NOT_FOUND", f"Resource '{name}' was not found")
    return store[name]

  def _plan(self, kind):
    """The next plan of this kind of request (a default one if none): a
    planned HTTP error is raised here."""
    plans = self._plans.get(kind)
    plan = plans.pop(0) if plans else _Plan()
    if plan.http_status:
      raise HttpError(plan.http_status, plan.status, plan.message)
    return plan

  def _operation(self, parent, response, verb, plan=None, on_done=None):
    """A long-running operation on response["name"]: done at once, unless
    `plan` (from _plan) makes it slow or failed; on_done() runs when it
    ends well."""
    plan = plan or _Plan()
    name = f"{parent}/operations/operation-{next(self._ids)}"
    operation = {"name": name, "done": True,
                 "metadata": {"verb": verb, "target": response["name"],
                              "createTime": _now()}}
    if plan.status:
      operation["error"] = {"code": RPC_CODES[plan.status], "message": plan.message}
    else:
      operation["response"] = response
    self.operations[name] = operation
    if plan.polls or plan.seconds:
      self._pending[name] = [plan.polls, time.monotonic() + plan.seconds, on_done]
      return {k: v for k, v in operation.items() if k not in ("response", "error")} | {
          "done": False}
    if on_done and not plan.status:
      on_done()
    return operation

  def operation_get(self, m, q, b):
    name = _name(m)
    operation = self._get(self.operations, name)
    pending = self._pending.get(name)
    if pending is not None:
      pending[0] -= 1
      if pending[0] >= 0 or time.monotonic() < pending[1]:
        return {k: v for k, v in operation.items() if k not in ("response", "error")} | {
            "done": False}
      del self._pending[name]
      if pending[2] and "error" not in operation:
        pending[2]()
    return operation

  def _check_node(self, spec, zone, where):
    """The TPU API's own checks of a node to create, from Google's tables
    (HOSTS, the zone's runtime versions): 400 INVALID_ARGUMENT."""
    accel = spec.get("acceleratorType", "v2-8")
    if accel not in HOSTS:
      raise HttpError(400, "INVALID_ARGUMENT", "Cloud TPU received a bad request. the "
                      f"accelerator {accel} was not found in zone {zone}", [_violation(
                          f"{where}.accelerator_type", f"accelerator {accel} not found")])
    version = spec.get("runtimeVersion")
    if version not in self.runtime_versions.get(zone, DEFAULT_RUNTIME_VERSIONS):
      raise HttpError(400, "INVALID_ARGUMENT", "Cloud TPU received a bad request. the "
                      f"runtime version {version} was not found in zone {zone}", [_violation(
                          f"{where}.runtime_version", f"runtime version {version} not found")])

  def _make_node(self, name, spec, state="READY"):
    accel = spec.get("acceleratorType", "v2-8")
    node = {**spec, "name": name, "id": str(next(self._ids)), "acceleratorType": accel,
            "state": state, "health": "HEALTHY", "apiVersion": "V2", "createTime": _now(),
            "networkEndpoints": [
                {"ipAddress": f"127.0.1.{i + 1}", "port": 8470,
                 "accessConfig": {"externalIp": f"127.0.2.{i + 1}"}}
                for i in range(host_count(accel))]}
    self.nodes[name] = node
    return node

  def _set_qr_state(self, qr, state, forced=None):
    qr["state"] = {"state": state}
    if state == "FAILED" and forced and forced.get("error"):
      qr["state"]["failedData"] = {"error": {"code": forced["code"],
                                             "message": forced["error"]}}
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
    self._check_node(body, m["loc"], "node")
    plan = self._plan("tpu.nodes.create")
    if plan.status:   # a failed create leaves no node
      return self._operation(_parent(m), {"name": name}, "create", plan)
    node = self._make_node(name, body, "CREATING" if plan.polls or plan.seconds else "READY")
    return self._operation(_parent(m), node, "create", plan,
                           on_done=lambda: node.update(state="READY"))

  def node_delete(self, m, q, b):
    node = self.nodes.pop(_name(m), None) or self._get(self.nodes, _name(m))
    return self._operation(_parent(m), node, "delete", self._plan("tpu.nodes.delete"))

  def node_patch(self, m, q, body):
    node = self._get(self.nodes, _name(m))
    for field in filter(None, q.get("updateMask", "").split(",")):
      if field in body:   # gcloud sends the whole field (e.g. all metadata)
        node[field] = body[field]
    return self._operation(_parent(m), node, "update", self._plan("tpu.nodes.patch"))

  def node_guest_attributes(self, m, q, body):
    node = self._get(self.nodes, _name(m))
    workers = [w for w in body.get("workerIds", []) if w] or node["networkEndpoints"]
    return {"guestAttributes": [{"queryPath": "", "queryValue": {"items": []}}
                                for _ in workers]}

  def qr_create(self, m, q, body):
    name = self._create(self.queued, m, q, "queuedResourceId")
    for index, spec in enumerate(body.get("tpu", {}).get("nodeSpec", [])):
      self._check_node(spec.get("node", {}), m["loc"],
                       f"queued_resource.tpu.node_spec[{index}].node")
    plan = self._plan("tpu.queuedResources.create")
    qr = {**body, "name": name, "createTime": _now()}
    if plan.status:
      return self._operation(_parent(m), qr, "create", plan)
    forced = self._forced.get(_last(name))
    self._set_qr_state(qr, forced["state"] if forced else "WAITING_FOR_RESOURCES", forced)
    self.queued[name], self._qr_gets[name] = qr, 0
    return self._operation(_parent(m), qr, "create", plan)

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
    plan = self._plan("tpu.queuedResources.delete")
    del self.queued[_name(m)]
    for spec in qr.get("tpu", {}).get("nodeSpec", []):
      self.nodes.pop(f"{spec['parent']}/nodes/{spec['nodeId']}", None)
    return self._operation(_parent(m), qr, "delete", plan)

  def compute_project(self, m, q, b):
    return {"kind": "compute#project", "name": m["p"], "id": "4242",
            "commonInstanceMetadata": self.project_metadata}

  def compute_set_metadata(self, m, q, body):
    self.project_metadata = {"kind": "compute#metadata", **body}
    name = f"operation-{next(self._ids)}"
    link = f"{self.url}/compute/v1/projects/{m['p']}"
    self.operations[f"compute/{m['p']}/{name}"] = operation = {
        "kind": "compute#operation", "id": str(next(self._ids)), "name": name,
        "operationType": "setMetadata", "status": "DONE", "progress": 100,
        "targetLink": link, "selfLink": f"{link}/global/operations/{name}",
        "insertTime": _now(), "endTime": _now()}
    return operation

  def compute_operation(self, m, q, b):
    return self._get(self.operations, f"compute/{m['p']}/{m['op']}")

  # ------------------------------------------ Compute Engine (v1): TPU VMs
  #
  # Instances, instance templates, managed instance groups and resource
  # policies, keyed by the path after /compute/v1/projects/ (e.g.
  # "P/zones/Z/instances/N"). Every insert/delete answers a DONE operation
  # of its scope (zone, region or global), as Compute's are once finished.
  # An instance's host k (counted over the fake's life) has networkIP
  # 127.0.4.k and natIP 127.0.3.k: its sandbox is host_home(natIP).

  def _compute_link(self, key):
    return f"{self.url}/compute/v1/projects/{key}"

  def _compute_operation(self, m, kind, target_key, verb, plan=None):
    """A finished Compute operation on target_key in the request's scope;
    with a failing `plan` (fail_next) it ends DONE with an error, as a
    Compute insert out of capacity does."""
    name = f"operation-{next(self._ids)}"
    scope = m["scope"]
    key = f"compute/{m['p']}/{name}" if scope == "global" else f"compute/{m['p']}/{scope}/{name}"
    operation = {
        "kind": "compute#operation", "id": str(next(self._ids)), "name": name,
        "operationType": verb, "status": "DONE", "progress": 100,
        "targetLink": self._compute_link(target_key),
        "selfLink": self._compute_link(f"{m['p']}/{scope}/operations/{name}"),
        "insertTime": _now(), "startTime": _now(), "endTime": _now(), "user": ACCOUNT}
    if scope.startswith("zones/"):
      operation["zone"] = self._compute_link(f"{m['p']}/{scope}")
    elif scope.startswith("regions/"):
      operation["region"] = self._compute_link(f"{m['p']}/{scope}")
    if plan is not None and plan.status:
      operation["error"] = {"errors": [{"code": plan.status, "message": plan.message}]}
      operation["httpErrorStatusCode"] = 400
      operation["httpErrorMessage"] = plan.status
    self.operations[key] = operation
    return operation

  def compute_scoped_operation(self, m, q, b):
    return self._get(self.operations, f"compute/{m['p']}/{m['scope']}/{m['op']}")

  def _compute_key(self, m, name=None):
    return f"{m['p']}/{m['scope']}/{m['coll']}/{name or m['name']}"

  def _check_machine_type(self, machine_type, zone, field):
    """Compute's 400 for a machine type the zone does not have."""
    name = machine_type.rsplit("/", 1)[-1]
    if name not in COMPUTE_TPU_MACHINE_TYPES + COMPUTE_OTHER_MACHINE_TYPES:
      raise HttpError(400, "INVALID_ARGUMENT", f"Invalid value for field '{field}': "
                      f"'{machine_type}'. Machine type with name '{name}' does not "
                      f"exist in zone '{zone}'.")

  def _make_instance(self, m, zone, spec):
    host = next(self._next_host)
    key = f"{m['p']}/zones/{zone}/instances/{spec['name']}"
    machine_type = spec.get("machineType", "")
    if "/" not in machine_type:   # a template's properties name it alone
      machine_type = f"zones/{zone}/machineTypes/{machine_type}"
    instance = {
        **spec, "kind": "compute#instance", "id": str(4000000000 + next(self._ids)),
        "creationTimestamp": _now(), "status": "RUNNING",
        "machineType": self._compute_link(f"{m['p']}/{machine_type.split('projects/' + m['p'] + '/')[-1]}"),
        "zone": self._compute_link(f"{m['p']}/zones/{zone}"),
        "selfLink": self._compute_link(key),
        "networkInterfaces": [{
            "kind": "compute#networkInterface", "name": "nic0",
            "networkIP": f"127.0.4.{host}",
            "accessConfigs": [{"kind": "compute#accessConfig", "name": "external-nat",
                               "type": "ONE_TO_ONE_NAT", "natIP": f"127.0.3.{host}"}]}]}
    self.compute[key] = instance
    return instance

  def compute_insert(self, m, q, body):
    key = self._compute_key(m, body.get("name", ""))
    if key in self.compute:
      raise HttpError(409, "ALREADY_EXISTS", f"The resource 'projects/{key}' already exists")
    coll, zone = m["coll"], m["scope"].split("/")[-1]
    if coll == "instances":
      self._check_machine_type(body.get("machineType", ""), zone, "resource.machineType")
      plan = self._plan("compute.instances.insert")
      if not plan.status:
        self._make_instance(m, zone, body)
      return self._compute_operation(m, coll, key, "insert", plan)
    resource = {**body, "id": str(5000000000 + next(self._ids)), "creationTimestamp": _now(),
                "selfLink": self._compute_link(key)}
    if coll == "instanceGroupManagers":
      template = self._get(self.compute, _compute_key(body.get("instanceTemplate", "")))
      for policy in (body.get("resourcePolicies") or {}).values():
        self._get(self.compute, _compute_key(policy))
      machine_type = template["properties"].get("machineType", "")
      self._check_machine_type(machine_type, zone, "resource.instanceTemplate.properties.machineType")
      base = body.get("baseInstanceName") or body["name"]
      members = []
      for _ in range(int(body.get("targetSize", 0))):
        spec = {**template["properties"], "name": f"{base}-{uuid.uuid4().hex[:4]}"}
        members.append(self._make_instance(m, zone, spec)["selfLink"])
      resource.update(zone=self._compute_link(f"{m['p']}/{m['scope']}"), members=members,
                      status={"isStable": True})
    self.compute[key] = resource
    return self._compute_operation(m, coll, key, "insert")

  def compute_get(self, m, q, b):
    return self._get(self.compute, self._compute_key(m))

  def compute_list(self, m, q, b):
    prefix = f"{m['p']}/{m['scope']}/{m['coll']}/"
    items = [v for k, v in self.compute.items() if k.startswith(prefix) and "/" not in k[len(prefix):]]
    return {"kind": "compute#list", "items": items, "id": prefix}

  def compute_delete(self, m, q, b):
    key = self._compute_key(m)
    resource = self._get(self.compute, key)
    for other in self.compute.values():   # Compute refuses to delete a resource in use
      users = [other.get("instanceTemplate"), *(other.get("resourcePolicies") or {}).values()]
      if key in [_compute_key(u) for u in users if u]:
        raise HttpError(400, "FAILED_PRECONDITION", f"The {m['coll']} resource 'projects/{key}' "
                        f"is already being used by 'projects/{_compute_key(other['selfLink'])}'")
    for member in resource.get("members", []):
      self.compute.pop(_compute_key(member), None)
    del self.compute[key]
    return self._compute_operation(m, m["coll"], key, "delete")

  def compute_list_managed(self, m, q, b):
    mig = self._get(self.compute, self._compute_key(m))
    managed = []
    for member in mig["members"]:
      instance = self.compute.get(_compute_key(member))
      managed.append({"instance": member, "id": instance and instance["id"],
                      "instanceStatus": instance["status"] if instance else "STOPPED",
                      "currentAction": "NONE" if instance else "RECREATING"})
    return {"managedInstances": managed}

  def compute_image_family(self, m, q, b):
    """The newest image of a public family in COMPUTE_IMAGE_FAMILIES."""
    if (m["p"], m["family"]) not in COMPUTE_IMAGE_FAMILIES:
      raise HttpError(404, "NOT_FOUND", f"The resource 'projects/{m['p']}/global/images/family/"
                      f"{m['family']}' was not found")
    name = f"{m['family']}-v20261201"
    return {"kind": "compute#image", "id": "7000000001", "name": name, "family": m["family"],
            "status": "READY", "selfLink": self._compute_link(f"{m['p']}/global/images/{name}")}

  def compute_guest_attributes(self, m, q, b):
    self._get(self.compute, self._compute_key(m))
    raise HttpError(404, "NOT_FOUND", f"The resource 'projects/{self._compute_key(m)}"
                    f"/guestAttributes/{q.get('queryPath', '')}' was not found")

  def job_create(self, m, q, body):
    errors = custom_job_errors(body)
    if errors:
      raise _invalid_fields(errors)
    self._plan("aiplatform.customJobs.create")
    job_id = str(1000000000000000000 + next(self._ids))
    self.jobs[job_id] = {**body, "name": f"{_parent(m)}/customJobs/{job_id}",
                         "state": "JOB_STATE_PENDING", "createTime": _now()}
    return self.jobs[job_id]

  def tuning_job_create(self, m, q, body):
    errors = tuning_job_errors(body)
    if errors:
      raise _invalid_fields(errors)
    self._plan("aiplatform.hyperparameterTuningJobs.create")
    job_id = str(2000000000000000000 + next(self._ids))
    self.tuning_jobs[job_id] = {
        **body, "name": f"{_parent(m)}/hyperparameterTuningJobs/{job_id}",
        "state": "JOB_STATE_PENDING", "createTime": _now()}
    return self.tuning_jobs[job_id]

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


def _compute_key(link):
  """A Compute resource's URL (full or partial) -> its key in
  CloudFake.compute ("P/zones/Z/instances/N")."""
  return re.sub(r"^.*?projects/", "", link, count=1)


def _last(name):
  return name.rsplit("/", 1)[1]


def _now():
  return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


_LOC = r"/projects/(?P<p>[^/]+)/locations/(?P<loc>[^/]+)"
_TPU, _AI = "/v2" + _LOC, "/v1" + _LOC
# Compute Engine resources in a scope (a zone, a region, or global).
_GCE = r"/compute/v1/projects/(?P<p>[^/]+)/(?P<scope>zones/[^/]+|regions/[^/]+|global)"
_GCE_COLL = "/(?P<coll>instances|instanceTemplates|instanceGroupManagers|resourcePolicies)"
_C = CloudFake
_ROUTES = [
    (_TPU + "/runtimeVersions", {"GET": _C.runtime_versions_list}),
    (_TPU + "/(?P<kind>nodes)", {"GET": lambda s, m, q, b: s._list(s.nodes, "nodes", m),
                                 "POST": _C.node_create}),
    (_TPU + "/nodes/[^/:]+", {"GET": lambda s, m, q, b: s._get(s.nodes, _name(m)),
                              "DELETE": _C.node_delete, "PATCH": _C.node_patch}),
    (_TPU + "/nodes/[^/:]+:getGuestAttributes", {"POST": _C.node_guest_attributes}),
    (_TPU + "/operations/[^/]+", {"GET": _C.operation_get}),
    (_TPU + "/(?P<kind>queuedResources)", {
        "GET": lambda s, m, q, b: s._list(s.queued, "queuedResources", m),
        "POST": _C.qr_create}),
    (_TPU + "/queuedResources/[^/:]+", {"GET": _C.qr_get, "DELETE": _C.qr_delete}),
    (r"/compute/v1/projects/(?P<p>[^/]+)", {"GET": _C.compute_project}),
    (r"/compute/v1/projects/(?P<p>[^/]+)/setCommonInstanceMetadata",
     {"POST": _C.compute_set_metadata}),
    (r"/compute/v1/projects/(?P<p>[^/]+)/global/operations/(?P<op>[^/]+)",
     {"GET": _C.compute_operation}),
    (_GCE + "/operations/(?P<op>[^/]+)", {"GET": _C.compute_scoped_operation}),
    (_GCE + "/operations/(?P<op>[^/]+)/wait", {"POST": _C.compute_scoped_operation}),
    (_GCE + _GCE_COLL, {"POST": _C.compute_insert, "GET": _C.compute_list}),
    (_GCE + _GCE_COLL + "/(?P<name>[^/]+)", {"GET": _C.compute_get,
                                             "DELETE": _C.compute_delete}),
    (_GCE + "/(?P<coll>instanceGroupManagers)/(?P<name>[^/]+)/listManagedInstances",
     {"POST": _C.compute_list_managed}),
    (r"/compute/v1/projects/(?P<p>[^/]+)/global/images/family/(?P<family>[^/]+)",
     {"GET": _C.compute_image_family}),
    (_GCE + "/autoscalers", {"GET": lambda s, m, q, b: {"kind": "compute#autoscalerList",
                                                        "items": []}}),
    (_GCE + "/(?P<coll>instances)/(?P<name>[^/]+)/getGuestAttributes",
     {"GET": _C.compute_guest_attributes}),
    (_AI + "/customJobs", {"GET": lambda s, m, q, b: {"customJobs": [
        j for j in s.jobs.values() if j["name"].startswith(_parent(m) + "/")]},
                           "POST": _C.job_create}),
    (_AI + r"/customJobs/(?P<id>\d+)", {"GET": _C.job_get}),
    (_AI + r"/customJobs/(?P<id>\d+):cancel", {"POST": _C.job_cancel}),
    (_AI + "/hyperparameterTuningJobs", {"POST": _C.tuning_job_create}),
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
          if e.details:
            reply["error"]["details"] = e.details
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


# ------------------------------------------ request bodies, as the APIs read them
#
# The Cloud SDK ships the request and response messages of every API it calls
# (lib/googlecloudsdk/generated_clients/apis/<api>/<version>/
# <api>_<version>_messages.py), decoded by its bundled apitools. The fake reads
# each body listed in _BODIES with them, as the real API reads it: a name the
# message does not have (at any depth) is a 400 INVALID_ARGUMENT naming it,
# in the APIs' wording:
#   Invalid JSON payload received. Unknown name "tpuTopolgy" at
#   'custom_job.job_spec.worker_pool_specs[0].machine_spec': Cannot find field.
# and a value of the wrong type (as apitools' JsonToMessage refuses it) or an
# enum value the message does not list is
#   Invalid value at 'custom_job.job_spec.worker_pool_specs[0].replica_count'
#   (TYPE_INT64), "abc"
# Several violations are one message, one line each, and each is a
# google.rpc.BadRequest fieldViolation. Paths are the proto names
# (snake_case) under the request's body field ('' for a body of "*").

# (method, path, API, version, message class, the request's body field,
# proto package); paths match whichever route serves them (or none: a valid
# body then gets the 404 of an unserved path).
_OPTIONAL_PREFIX = r"(?:/[a-z]+)?"   # an endpoint override with a path
_BODIES = [
    ("POST", _TPU + "/nodes", "tpu", "v2", "Node", "node", "google.cloud.tpu.v2"),
    ("PATCH", _TPU + "/nodes/[^/:]+", "tpu", "v2", "Node", "node", "google.cloud.tpu.v2"),
    ("POST", _TPU + "/nodes/[^/:]+:getGuestAttributes", "tpu", "v2",
     "GetGuestAttributesRequest", "", "google.cloud.tpu.v2"),
    ("POST", _TPU + "/queuedResources", "tpu", "v2", "QueuedResource",
     "queued_resource", "google.cloud.tpu.v2"),
    ("POST", r"/compute/v1/projects/[^/]+/setCommonInstanceMetadata", "compute", "v1",
     "Metadata", "metadata_resource", "google.cloud.compute.v1"),
    ("POST", r"/compute/v1/projects/[^/]+/zones/[^/]+/instances", "compute", "v1",
     "Instance", "instance_resource", "google.cloud.compute.v1"),
    ("POST", r"/compute/v1/projects/[^/]+/global/instanceTemplates", "compute", "v1",
     "InstanceTemplate", "instance_template_resource", "google.cloud.compute.v1"),
    ("POST", r"/compute/v1/projects/[^/]+/zones/[^/]+/instanceGroupManagers", "compute", "v1",
     "InstanceGroupManager", "instance_group_manager_resource", "google.cloud.compute.v1"),
    ("POST", r"/compute/v1/projects/[^/]+/regions/[^/]+/resourcePolicies", "compute", "v1",
     "ResourcePolicy", "resource_policy_resource", "google.cloud.compute.v1"),
    ("POST", _AI + "/customJobs", "aiplatform", "v1", "GoogleCloudAiplatformV1CustomJob",
     "custom_job", "google.cloud.aiplatform.v1"),
    ("POST", _AI + "/hyperparameterTuningJobs", "aiplatform", "v1",
     "GoogleCloudAiplatformV1HyperparameterTuningJob", "hyperparameter_tuning_job",
     "google.cloud.aiplatform.v1"),
    ("POST", _OPTIONAL_PREFIX + r"/v1/projects/[^/]+/locations/[^/]+/builds", "cloudbuild",
     "v1", "Build", "build", "google.devtools.cloudbuild.v1"),
    ("POST", _OPTIONAL_PREFIX + r"/v1/projects/[^/]+/builds", "cloudbuild", "v1", "Build",
     "build", "google.devtools.cloudbuild.v1"),
    ("POST", _OPTIONAL_PREFIX + r"/v1/projects/[^/]+/locations/[^/]+/repositories",
     "artifactregistry", "v1", "Repository", "repository",
     "google.devtools.artifactregistry.v1"),
]

_sdk_modules: dict[str, object] = {}
_sdk_lock = threading.Lock()


def sdk_lib_dir() -> str:
  """The Cloud SDK's lib/ directory (CLOUDSDK_ROOT_DIR, else beside the
  gcloud on PATH)."""
  root = os.environ.get("CLOUDSDK_ROOT_DIR")
  if not root:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
      raise RuntimeError("gcloud is not on PATH: the fake reads request bodies "
                         "with the Cloud SDK's own messages")
    root = os.path.dirname(os.path.dirname(os.path.realpath(gcloud)))
  return os.path.join(root, "lib")


def _import_file(name, path, package_dir=None):
  spec = importlib.util.spec_from_file_location(
      name, path, submodule_search_locations=[package_dir] if package_dir else None)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # protorpc finds a field's message type by module name
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise
  return module


def sdk_messages(api: str, version: str):
  """The module of the Cloud SDK's `api` `version` messages, and apitools.

  apitools is imported as the package the SDK bundles (third_party/apitools)
  and the messages file by its path: gcloud puts lib/ and lib/third_party
  first on sys.path, but here that would put the SDK's vendored google,
  six, yaml, ... before this interpreter's own. Only `six` comes from
  here (TensorFlow's dependency). Modules load once, on first use
  (aiplatform about 0.6 s, compute 1.3 s: Python 3.11 cannot use the SDK's
  3.12 bytecode).
  """
  with _sdk_lock:
    lib = sdk_lib_dir()
    if "apitools" not in sys.modules:
      package = os.path.join(lib, "third_party", "apitools")
      _import_file("apitools", os.path.join(package, "__init__.py"), package)
    name = f"cloud_sdk_{api}_{version}_messages"
    if name not in _sdk_modules:
      _sdk_modules[name] = _import_file(name, os.path.join(
          lib, "googlecloudsdk", "generated_clients", "apis", api, version,
          f"{api}_{version}_messages.py"))
    return _sdk_modules[name]


def check_body(method: str, path: str, body) -> None:
  """Raises HttpError 400 INVALID_ARGUMENT when `body` (parsed JSON) of
  `method path` is not a valid message of its row in _BODIES (no row: no
  check)."""
  for row_method, pattern, api, version, message, field, package in _BODIES:
    if row_method == method and re.fullmatch(pattern, path):
      break
  else:
    return
  message_type = getattr(sdk_messages(api, version), message)
  from apitools.base.py import encoding  # pylint: disable=import-outside-toplevel
  if body is None:
    body = {}
  if not isinstance(body, dict):
    raise HttpError(400, "INVALID_ARGUMENT", "Invalid JSON payload received. "
                    f"Expected an object at '{field}', got {json.dumps(body)[:80]}")
  violations = list(_wrong_values(message_type, body, field, package))
  if not violations:
    decoded = encoding.JsonToMessage(message_type, json.dumps(body))
    violations = list(_unknown_names(decoded, field, package))
  if violations:
    raise HttpError(400, "INVALID_ARGUMENT", "\n".join(d for _, d in violations), [{
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": f, "description": d} if f else {"description": d}
                            for f, d in violations]}])


def _snake(json_name):
  return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", json_name).lower()


def _join(path, name):
  return f"{path}.{name}" if path else name


def _field(message_type, json_name):
  """The field of message_type that JSON name json_name decodes to, or None."""
  from apitools.base.py import encoding  # pylint: disable=import-outside-toplevel
  name = encoding.GetCustomJsonFieldMapping(message_type, json_name=json_name) or json_name
  try:
    return message_type.field_by_name(name)
  except KeyError:
    return None


def _nested_message(field):
  """The message type of a field whose JSON is an object the fake walks
  into: not a map (additionalProperties) nor free JSON (Struct, Value)."""
  from apitools.base.protorpclite import messages  # pylint: disable=import-outside-toplevel
  if not isinstance(field, messages.MessageField):
    return None
  message_type = field.message_type
  names = [f.name for f in message_type.all_fields()]
  if names == ["additionalProperties"] or message_type.__module__.startswith("apitools."):
    return None
  return message_type


def _type_name(field, package):
  from apitools.base.protorpclite import messages  # pylint: disable=import-outside-toplevel
  if isinstance(field, messages.EnumField):
    return f"type.googleapis.com/{package}.{field.type.__name__.replace('ValueValuesEnum', '')}"
  if isinstance(field, messages.MessageField):
    # apitools prefixes some names with the API's (GoogleCloudAiplatformV1...).
    name = re.sub(r"^Google[A-Za-z]*?V\d+(?:(?:alpha|beta)\d*)?(?=[A-Z])", "",
                  field.message_type.__name__)
    return f"type.googleapis.com/{package}.{name}"
  return f"TYPE_{field.variant.name}"


def _wrong_values(message_type, body, path, package):
  """(field path, description) of each value apitools cannot decode into its
  field: each field is decoded alone with JsonToMessage, nested messages are
  walked into."""
  from apitools.base.py import encoding  # pylint: disable=import-outside-toplevel
  for key, value in body.items():
    field = _field(message_type, key)
    if field is None or value is None:
      continue   # an unknown name: found in the decoded message
    where = _join(path, _snake(key))
    listed = field.repeated and isinstance(value, list)
    items = list(enumerate(value)) if listed else [(None, value)]
    for index, item in items:
      at = where if index is None else f"{where}[{index}]"
      nested = _nested_message(field)
      if nested is not None and isinstance(item, dict):
        yield from _wrong_values(nested, item, at, package)
        continue
      try:
        encoding.JsonToMessage(message_type, json.dumps({key: [item] if field.repeated else item}))
      except Exception:  # pylint: disable=broad-except
        # apitools raises ValidationError, or TypeError/AttributeError for
        # a scalar where an object belongs.
        yield at, f"Invalid value at '{at}' ({_type_name(field, package)}), {json.dumps(item)}"


def _unknown_names(message, path, package):
  """(field path, description) of each name apitools did not recognise in
  the decoded `message` and its nested messages."""
  for name in sorted(message.all_unrecognized_fields()):
    value, _ = message.get_unrecognized_field_info(name)
    field = _field(type(message), name)
    if field is not None:   # an enum value it does not list
      at = _join(path, _snake(name))
      yield at, f"Invalid value at '{at}' ({_type_name(field, package)}), {json.dumps(value)}"
    else:
      where = f" at '{path}'" if path else ""
      yield path, f'Invalid JSON payload received. Unknown name "{name}"{where}: Cannot find field.'
  for field in message.all_fields():
    if _nested_message(field) is None:
      continue
    value = message.get_assigned_value(field.name)
    if value is None:
      continue
    where = _join(path, _snake(field.name))
    if field.repeated:
      for index, item in enumerate(value):
        yield from _unknown_names(item, f"{where}[{index}]", package)
    else:
      yield from _unknown_names(value, where, package)


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
