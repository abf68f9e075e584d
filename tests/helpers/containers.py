"""Real containers for tests: podman (rootful, runc) and a local Python base.

No registry is reachable from the tests, so the base image that
launch/Dockerfile's `BASE_IMAGE` names is made here, once per machine: a
Debian bookworm minbase (Python 3.11, pip, `python` -> python3) from
debootstrap, imported into podman's storage as BASE_IMAGE. Podman's storage
outlives a session, so later sessions (and CI runs on this machine) reuse it
and podman's layer cache: only layers whose inputs changed are rebuilt.

Facts this rests on (measured, podman 4.3 on Debian 12 in this VM):

* Podman's default ulimits cannot be set in this VM (runc: "error setting
  rlimit type 7", RLIMIT_NOFILE; crun fails too): podman runs with
  `--runtime runc` and a containers.conf whose `default_ulimits` is empty
  (CONTAINERS_CONF).
* pip inside a build reaches PyPI only with the host's network and its CA
  bundle mounted into the build (`--network host`, `-v CA:CA:ro`).
* Debian's python3 refuses system-wide pip installs (PEP 668's
  EXTERNALLY-MANAGED); the official python images allow them, so the file is
  removed from the base, as the Dockerfile expects of any base.

Builds of one machine are serialized with a lock file (two test processes
may ask at once; the second then finds every layer cached). Podman runs as
root here (rootful), as the tests do.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

from tests.helpers import ROOT

# The tag names the recipe's version: change the recipe, bump it.
BASE_IMAGE = "localhost/trainer-test-base:bookworm-1"
IMAGE = "localhost/trainer-test:cpu"
LABEL = "trainer-test=1"  # on every image (and layer) build_image makes
DOCKERFILE = os.path.join(ROOT, "launch", "Dockerfile")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# python-is-python3: the Dockerfile's ENTRYPOINT runs `python`, which the
# official images have and Debian's minbase does not.
BASE_PACKAGES = ("python3", "python3-pip", "python-is-python3",
                 "ca-certificates")
_STATE_DIR = "/var/tmp/trainer-test-podman"  # lock and containers.conf
_DEFAULT_MIRROR = "http://deb.debian.org/debian"


class ContainerError(RuntimeError):
  """A podman or debootstrap command failed; the message names it."""


def unavailable() -> str | None:
  """Why these helpers cannot work on this machine (one line), or None.

  They run podman as root (rootful: runc, host network, ports held under the
  image's uid); debootstrap is needed only while BASE_IMAGE is not made.
  """
  missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
  if (not missing and shutil.which("debootstrap") is None
      and not image_exists(BASE_IMAGE)):
    missing.append("debootstrap")
  if missing:
    return (f"{', '.join(missing)} not installed: the container tests build "
            "launch/Dockerfile with podman (apt-get install podman runc "
            "debootstrap)")
  if os.geteuid() != 0:
    return "the container tests run podman as root: run them as root"
  return None


# Containers get no ulimits of podman's own (runc cannot set RLIMIT_NOFILE
# in this VM; crun cannot start at all).
_CONTAINERS_CONF = "[containers]\ndefault_ulimits = []\n"


def _containers_conf() -> str:
  os.makedirs(_STATE_DIR, exist_ok=True)
  path = os.path.join(_STATE_DIR, "containers.conf")
  try:
    with open(path, encoding="utf-8") as f:
      current = f.read()
  except FileNotFoundError:
    current = None
  if current != _CONTAINERS_CONF:
    with open(f"{path}.{os.getpid()}", "w", encoding="utf-8") as f:
      f.write(_CONTAINERS_CONF)
    os.replace(f"{path}.{os.getpid()}", path)  # whole, for a parallel reader
  return path


_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


def podman_env() -> dict[str, str]:
  """This process's environment for podman, plus the containers.conf it
  needs, less any proxy on 127.0.0.1.

  Podman hands the proxy variables on to every build step and container,
  and the `gcs` fixture's (tests/conftest.py) stay in os.environ for the
  rest of a session: pip in a build would send PyPI's requests to the GCS
  emulator's proxy, which refuses them. A loopback proxy is a test's own.
  """
  env = {**os.environ, "CONTAINERS_CONF": _containers_conf()}
  for key in list(env):
    if (key.lower() in _PROXY_VARIABLES
        and re.match(r"(\w+://)?(127\.|localhost[:/]|\[::1\])", env[key])):
      del env[key]
  return env


def podman(*args, timeout=600, check=True, **kwargs):
  """Runs `podman --runtime runc ARGS`; the CompletedProcess (text output).

  Raises:
    ContainerError: with check, on a non-zero exit, naming the command and
      the end of its output.
  """
  command = ["podman", "--runtime", "runc", *args]
  result = subprocess.run(command, env=podman_env(), capture_output=True,
                          text=True, timeout=timeout, **kwargs)
  if check and result.returncode != 0:
    raise ContainerError(
        f"`{' '.join(command[:6])} ...` exited {result.returncode}:\n"
        + (result.stdout + result.stderr)[-4000:])
  return result


def image_exists(name: str) -> bool:
  return podman("image", "exists", name, check=False).returncode == 0


@contextlib.contextmanager
def _machine_lock():
  os.makedirs(_STATE_DIR, exist_ok=True)
  with open(os.path.join(_STATE_DIR, "build.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def debian_mirror() -> str:
  """The host's Debian mirror (apt's deb822 `URIs:`), else deb.debian.org."""
  path = "/etc/apt/sources.list.d/debian.sources"
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      found = re.search(r"^URIs:\s*(\S+)", f.read(), re.MULTILINE)
    if found:
      return found.group(1)
  return _DEFAULT_MIRROR


def ensure_base_image() -> float:
  """Makes BASE_IMAGE unless podman already has it; the seconds it took
  (0 when it was there).

  Raises:
    ContainerError: debootstrap is missing, not root, or a step failed.
  """
  with _machine_lock():
    if image_exists(BASE_IMAGE):
      return 0.0
    if shutil.which("debootstrap") is None:
      raise ContainerError(
          f"{BASE_IMAGE} is missing and debootstrap is not installed to make "
          "it (apt-get install debootstrap)")
    if os.geteuid() != 0:
      raise ContainerError(f"{BASE_IMAGE} is missing and only root can make "
                           "it with debootstrap")
    start = time.monotonic()
    rootfs = tempfile.mkdtemp(prefix="trainer-test-base-", dir="/var/tmp")
    try:
      _debootstrap(rootfs)
      tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."],
                             stdout=subprocess.PIPE)
      try:
        podman("import",
               "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:"
               "/usr/sbin:/usr/bin:/sbin:/bin",
               "--change", "ENV LANG=C.UTF-8",
               "--change", 'CMD ["python"]',
               "-", BASE_IMAGE, stdin=tar.stdout)
      finally:
        tar.stdout.close()
        tar.wait()
    finally:
      _remove_rootfs(rootfs)
    return time.monotonic() - start


def _remove_rootfs(rootfs: str) -> None:
  """Deletes a debootstrap tree; first unmounts what a failed debootstrap
  may have left mounted inside it (its /proc, /sys), deepest first, so the
  deletion never reaches into the host's."""
  with open("/proc/self/mounts", encoding="utf-8") as f:
    mounted = [line.split()[1] for line in f]
  for point in sorted((p for p in mounted if p.startswith(rootfs + "/")),
                      reverse=True):
    subprocess.run(["umount", "--lazy", point], check=False)
  shutil.rmtree(rootfs, ignore_errors=True)


def _debootstrap(rootfs: str) -> None:
  result = subprocess.run(
      ["debootstrap", "--variant=minbase",
       f"--include={','.join(BASE_PACKAGES)}", "bookworm", rootfs,
       debian_mirror()],
      capture_output=True, text=True, timeout=1200)
  if result.returncode != 0:
    raise ContainerError(f"debootstrap of {BASE_IMAGE} exited "
                         f"{result.returncode}:\n"
                         + (result.stdout + result.stderr)[-3000:])
  # As in the official python images: pip may install system-wide.
  for name in os.listdir(os.path.join(rootfs, "usr", "lib")):
    marker = os.path.join(rootfs, "usr", "lib", name, "EXTERNALLY-MANAGED")
    if name.startswith("python3") and os.path.exists(marker):
      os.remove(marker)
  # Nothing of apt's downloads and lists in the image.
  for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
    directory = os.path.join(rootfs, cache)
    for entry in os.listdir(directory):
      path = os.path.join(directory, entry)
      if os.path.isfile(path):
        os.remove(path)


def build_image(tag: str = IMAGE, tf_extra: str = "cpu",
                base_image: str = BASE_IMAGE) -> str:
  """Builds launch/Dockerfile (context: the checkout) as `tag`; its image
  id, which the tests run: another checkout's session may move the tag.

  Then removes this helper's images (LABEL) that no tag names any more and
  that are over an hour old (a session running one now built it lately):
  otherwise each change of setup.py would leave a TensorFlow layer behind
  and fill the disk.
  """
  with _machine_lock():
    with tempfile.NamedTemporaryFile("r") as iidfile:
      podman("build", "--network", "host",
             "--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
             "--build-arg", f"BASE_IMAGE={base_image}",
             "--build-arg", f"TF_EXTRA={tf_extra}", "--label", LABEL,
             "--iidfile", iidfile.name, "--file", DOCKERFILE, "--tag", tag,
             ROOT, timeout=1800)
      built = iidfile.read().strip().removeprefix("sha256:")
    podman("image", "prune", "--force", "--filter", f"label={LABEL}",
           "--filter", "until=1h", check=False)
    return built


def run_command(image: str, *args, name: str, env=None, volumes=(),
                extra=()) -> list[str]:
  """The `podman run` argv of `image` with `args` (the trainer's flags): on
  the host's network, removed when it ends. Run it with podman_env().

  volumes: (host path, container path, "ro" or "rw") triples; extra: more
  `podman run` options.
  """
  options = ["--rm", "--name", name, "--network", "host"]
  for key, value in (env or {}).items():
    options += ["--env", f"{key}={value}"]
  for host, container, mode in volumes:
    options += ["--volume", f"{host}:{container}:{mode}"]
  return ["podman", "--runtime", "runc", "run", *options, *extra, image, *args]


def run_container(image: str, *args, name: str, timeout=300, **kwargs):
  """Runs run_command(...) to the end; the CompletedProcess. A container
  still running at `timeout` is removed, and TimeoutExpired raised."""
  try:
    return subprocess.run(run_command(image, *args, name=name, **kwargs),
                          env=podman_env(), capture_output=True, text=True,
                          timeout=timeout)
  except subprocess.TimeoutExpired:
    podman("rm", "--force", name, check=False)
    raise


@contextlib.contextmanager
def held_ports(count: int, uid: int):
  """`count` 127.0.0.1 ports held for processes of user `uid`; yields them.

  As tests/helpers/workers.reserve_ports does for local workers: TensorFlow's
  gRPC server (with TF_GRPC_REUSE_PORT=1) binds a held port with
  SO_REUSEPORT, and no other process can take it in between. Linux allows
  that only to the user that created the holding socket, so the sockets are
  created under the containers' uid (the effective uid of this process for
  that moment; root can switch back).
  """
  held = []
  try:
    os.seteuid(uid)
    try:
      for _ in range(count):
        held.append(socket.socket())
    finally:
      os.seteuid(0)
    for s in held:
      s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
      s.bind(("127.0.0.1", 0))
    yield [s.getsockname()[1] for s in held]
  finally:
    for s in held:
      s.close()


def image_uid(image: str) -> int:
  """The uid `image` runs as (its USER)."""
  return int(podman("run", "--rm", "--entrypoint", "id", image, "-u").stdout)
