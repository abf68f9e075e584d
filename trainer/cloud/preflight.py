"""What runs where: one table of TPU generations, APIs, TensorFlow runtimes
and wheels, and Vertex AI machines and images, and the checks that read it.

  python3 -m trainer.cloud.preflight tpu --accelerator_type=v6e-8 \
      --api=compute [--runtime=tpu-vm-tf-2.18.0-pjrt] [--tensorflow=2.20.0]
  python3 -m trainer.cloud.preflight vertex \
      --machine_type=ct6e-standard-4t [--accelerator_type=NVIDIA_L4] \
      --image=URI-or-variant

Exit 0 and nothing printed for a combination that can work (`--explain`
prints what was derived), exit 2 and one line `error: ...` for one that
cannot. The launchers run it before any cloud call, on a machine that may
have only python3 and this checkout: standard library only, no TensorFlow,
no absl. The trainer calls `check_tpu_host` with `--strategy=tpu` before it
touches the TPU. docs/running.md, "What runs where", is rendered from these
tables (`markdown`; tests/cloud/test_preflight.py keeps the two equal).

Sources (read 2026-12-07): Cloud TPU "TPU software versions" (runtime names
tpu-vm-tf-X.Y.Z[-pod][-pjrt|-se]; v5e, v5p and v6e: TensorFlow 2.15.0 and
later, PJRT only; the newest TensorFlow runtime is 2.18.0), "Cloud TPU
resources in Compute Engine" (the Cloud TPU API gets fixes only; v5p, v6e
and TPU7x are Compute Engine machine types; TPU7x only there and in GKE),
the TPU7x page (no TensorFlow), GKE "Plan TPUs in GKE" (node labels), Vertex
AI "Configure compute resources for custom training" and "Training with TPU
accelerators" (machine types and accelerators), and PyPI through pip
(`pip index versions`, and each tensorflow-tpu wheel's Requires-Dist).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys

from trainer import errors

# The words the issue fixed for the one TensorFlow-less generation.
NO_TENSORFLOW_ON_TPU7X = "TensorFlow does not support TPU7x: use v6e or earlier"

APIS = ("tpu", "compute", "gke")
API_NAMES = {"tpu": "the Cloud TPU API (gcloud compute tpus)",
             "compute": "Compute Engine (gcloud compute instances)",
             "gke": "GKE (TPU slice node pools)"}


@dataclasses.dataclass(frozen=True)
class Generation:
  """One TPU generation.

  Attributes:
    name: as the docs say it (v5e, not v5litepod).
    type_prefixes: accelerator type prefixes (v5litepod-16, v5e-16).
    counts: what the accelerator type's number counts: "cores"
      (TensorCores, 2 per chip) or "chips".
    chips_per_host: chips of one VM of a multi-host slice.
    max_single_host_chips: the largest slice on one VM.
    apis: the APIs that create it (APIS).
    tensorflow_min: the oldest TensorFlow it runs; None: no TensorFlow.
    pjrt_only: runtimes must be -pjrt (no -se, no plain name).
    runtime_variants: the per-generation runtime suffixes meant for it.
    compute_machine_types: its Compute Engine machine types.
    gke_accelerator: the node label cloud.google.com/gke-tpu-accelerator.
    gke_machine_types: the node pools' machine types.
  """
  name: str
  type_prefixes: tuple[str, ...]
  counts: str
  chips_per_host: int
  max_single_host_chips: int
  apis: tuple[str, ...]
  tensorflow_min: str | None
  pjrt_only: bool
  runtime_variants: tuple[str, ...]
  compute_machine_types: tuple[str, ...] = ()
  gke_accelerator: str | None = None
  gke_machine_types: tuple[str, ...] = ()


GENERATIONS = (
    # v2-v4: tensorflow_min is the oldest TPU VM runtime the software
    # versions page has listed (tpu-vm-tf-2.7.3); the package needs 2.18.
    Generation("v2", ("v2",), "cores", 4, 4, ("tpu",), "2.7.3", False,
               ("v5p-and-below",)),
    Generation("v3", ("v3",), "cores", 4, 4, ("tpu",), "2.7.3", False,
               ("v5p-and-below",)),
    Generation("v4", ("v4",), "cores", 4, 4, ("tpu", "gke"), "2.7.3", False,
               ("v5p-and-below", "v4"),
               gke_accelerator="tpu-v4-podslice",
               gke_machine_types=("ct4p-hightpu-4t",)),
    Generation("v5e", ("v5litepod", "v5e"), "chips", 4, 8, ("tpu", "gke"),
               "2.15.0", True, ("v5e-and-v6",),
               gke_accelerator="tpu-v5-lite-podslice",
               gke_machine_types=("ct5lp-hightpu-1t", "ct5lp-hightpu-4t",
                                  "ct5lp-hightpu-8t")),
    Generation("v5p", ("v5p",), "cores", 4, 4, ("tpu", "compute", "gke"),
               "2.15.0", True, ("v5p-and-below",),
               compute_machine_types=("ct5p-hightpu-4t",),
               gke_accelerator="tpu-v5p-slice",
               gke_machine_types=("ct5p-hightpu-4t",)),
    Generation("v6e", ("v6e",), "chips", 4, 8, ("tpu", "compute", "gke"),
               "2.15.0", True, ("v5e-and-v6",),
               compute_machine_types=("ct6e-standard-1t", "ct6e-standard-4t",
                                      "ct6e-standard-8t"),
               gke_accelerator="tpu-v6e-slice",
               gke_machine_types=("ct6e-standard-1t", "ct6e-standard-4t",
                                  "ct6e-standard-8t")),
    Generation("tpu7x", ("tpu7x",), "cores", 4, 4, ("compute", "gke"), None,
               True, (),
               compute_machine_types=("tpu7x-standard-4t",),
               gke_accelerator="tpu7x",
               gke_machine_types=("tpu7x-standard-4t",)),
)

# The newest TensorFlow of a Cloud TPU runtime (tpu-vm-tf-*): none newer.
NEWEST_TF_RUNTIME = "2.18.0"
# The runtimes without TensorFlow for the [tpu] extra, per generation.
BASE_RUNTIMES = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base",
                 "v4": "tpu-ubuntu2204-base", "v5e": "v2-alpha-tpuv5-lite",
                 "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}


@dataclasses.dataclass(frozen=True)
class Wheel:
  """One tensorflow-tpu release on PyPI and the libtpu it pins.

  Attributes:
    version: tensorflow-tpu's version.
    libtpu: its Requires-Dist on libtpu.
    libtpu_on_pypi: whether PyPI has a libtpu that satisfies it.
  """
  version: str
  libtpu: str
  libtpu_on_pypi: bool


# The declared range's wheels (setup.py's [tpu] extra). PyPI's libtpu
# releases are 0.0.1 ... 0.0.52 (no 2.x); Google's libtpu-tf-releases index
# has the 2.18.0 build. There is no tensorflow-tpu 2.19.0 and none past 2.20.
WHEELS = (
    Wheel("2.18.0", "libtpu==2.18.0", False),
    Wheel("2.19.1", "libtpu==0.0.10", True),
    Wheel("2.20.0", "libtpu~=0.0.14", True),
)


@dataclasses.dataclass(frozen=True)
class MachineFamily:
  """Vertex AI machine types of one kind.

  Attributes:
    prefix: the machine type's start (n1-, ct5lp-hightpu-, cloud-tpu).
    kind: "cpu", "gpu" (GPUs attached by acceleratorType) or "tpu".
    accelerators: the acceleratorType values it takes.
    accelerator_required: a GPU family whose machines come with GPUs.
    tpu_generation: the TPU generation of a TPU family.
  """
  prefix: str
  kind: str
  accelerators: tuple[str, ...] = ()
  accelerator_required: bool = False
  tpu_generation: str | None = None


MACHINE_FAMILIES = (
    MachineFamily("n1-", "cpu", ("NVIDIA_TESLA_T4", "NVIDIA_TESLA_V100",
                                 "NVIDIA_TESLA_P4", "NVIDIA_TESLA_P100")),
    MachineFamily("e2-", "cpu"),
    MachineFamily("n2-", "cpu"),
    MachineFamily("n2d-", "cpu"),
    MachineFamily("c2-", "cpu"),
    MachineFamily("a2-highgpu-", "gpu", ("NVIDIA_TESLA_A100",), True),
    MachineFamily("a2-megagpu-", "gpu", ("NVIDIA_TESLA_A100",), True),
    MachineFamily("a2-ultragpu-", "gpu", ("NVIDIA_A100_80GB",), True),
    MachineFamily("a3-highgpu-", "gpu", ("NVIDIA_H100_80GB",), True),
    MachineFamily("a3-megagpu-", "gpu", ("NVIDIA_H100_MEGA_80GB",), True),
    MachineFamily("a3-ultragpu-", "gpu", ("NVIDIA_H200_141GB",), True),
    MachineFamily("g2-standard-", "gpu", ("NVIDIA_L4",), True),
    MachineFamily("cloud-tpu", "tpu", ("TPU_V2", "TPU_V3"), True, "v3"),
    # The v1 API's AcceleratorType has TPU_V5_LITEPOD (none for v6e): the
    # machine type alone says the TPU, so it is optional.
    MachineFamily("ct5lp-hightpu-", "tpu", ("TPU_V5_LITEPOD",),
                  tpu_generation="v5e"),
    MachineFamily("ct6e-standard-", "tpu", tpu_generation="v6e"),
    MachineFamily("tpu7x-standard-", "tpu", tpu_generation="tpu7x"),
)

# Which image variant runs on which machine kind, and why (the rows of
# docs/running.md's image table). A GPU image on a CPU machine is fine:
# TensorFlow's CUDA build runs on the CPU when it finds no GPU.
IMAGE_FITS = {
    ("cpu", "cpu"): (True, "TensorFlow's CPU build"),
    ("cpu", "gpu"): (False, "the GPUs would be billed and never used"),
    ("cpu", "tpu"): (False, "no TPU runtime in it"),
    ("gpu", "cpu"): (True, "the CUDA build runs on the CPU without a GPU"),
    ("gpu", "gpu"): (True, "CUDA from pip wheels"),
    ("gpu", "tpu"): (False, "no TPU runtime in it"),
    ("tpu", "cpu"): (False, "tensorflow-tpu is built for TPU hosts"),
    ("tpu", "gpu"): (False, "tensorflow-tpu has no CUDA"),
    ("tpu", "tpu"): (True, "tensorflow-tpu and libtpu"),
}
IMAGE_VARIANTS = ("cpu", "gpu", "tpu")


def _version(text: str) -> tuple[int, ...]:
  return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _fail(message: str):
  raise errors.UserError(message)


def generation_of(accelerator_type: str) -> tuple[Generation, int]:
  """The generation and size of a TPU accelerator type such as v6e-8.

  Raises:
    UserError: not a TPU type, or a generation the table lacks.
  """
  found = re.fullmatch(r"([a-z0-9]+)-(\d+)", accelerator_type.strip().lower())
  if not found:
    _fail(f"--accelerator_type={accelerator_type}: expected a TPU type such "
          "as v6e-8, v5p-16, v5litepod-16 or v4-8")
  prefix, size = found.group(1), int(found.group(2))
  for generation in GENERATIONS:
    if prefix in generation.type_prefixes:
      return generation, size
  known = ", ".join(p for g in GENERATIONS for p in g.type_prefixes)
  _fail(f"--accelerator_type={accelerator_type}: unknown TPU generation "
        f"'{prefix}' ({known})")


def chips_and_hosts(generation: Generation, size: int) -> tuple[int, int]:
  """(chips per host, hosts) of a slice: one VM up to the generation's
  largest single-host slice, else VMs of chips_per_host chips."""
  chips = size // 2 if generation.counts == "cores" else size
  chips = max(chips, 1)
  if chips <= generation.max_single_host_chips:
    return chips, 1
  return generation.chips_per_host, -(-chips // generation.chips_per_host)


def _check_tensorflow_generation(generation: Generation, tf_version: str):
  if generation.tensorflow_min is None:
    _fail(NO_TENSORFLOW_ON_TPU7X)
  if _version(tf_version) < _version(generation.tensorflow_min):
    _fail(f"TPU {generation.name} runs TensorFlow {generation.tensorflow_min}"
          f" or later, not {tf_version}: use TensorFlow "
          f"{WHEELS[-1].version}")


def parse_runtime(runtime: str) -> dict | None:
  """The parts of a TensorFlow runtime name, None for another runtime."""
  found = re.fullmatch(
      r"tpu-vm-tf-(\d+\.\d+\.\d+)(-pod)?(?:-(pjrt|se))?(?:-(.+))?", runtime)
  if not found:
    return None
  return {"tensorflow": found.group(1), "pod": bool(found.group(2)),
          "device_api": found.group(3), "variant": found.group(4)}


def check_runtime(generation: Generation, hosts: int, runtime: str,
                  accelerator_type: str) -> dict | None:
  """Refuses a tpu-vm-tf-* runtime this slice cannot run; returns its
  parts (None for a runtime without TensorFlow)."""
  parts = parse_runtime(runtime)
  if parts is None:
    if runtime.startswith("tpu-vm-tf"):
      _fail(f"--runtime={runtime} is not a TensorFlow runtime name "
            "(tpu-vm-tf-X.Y.Z[-pod][-pjrt|-se]): use one such as "
            f"tpu-vm-tf-{NEWEST_TF_RUNTIME}-pjrt")
    return None
  pjrt = f"tpu-vm-tf-{NEWEST_TF_RUNTIME}{'-pod' if hosts > 1 else ''}-pjrt"
  if _version(parts["tensorflow"]) > _version(NEWEST_TF_RUNTIME):
    _fail(f"--runtime={runtime}: there is no TensorFlow TPU runtime newer "
          f"than {NEWEST_TF_RUNTIME}: use {pjrt}, or "
          f"{BASE_RUNTIMES.get(generation.name, 'a base runtime')} and the "
          "[tpu] extra")
  if generation.pjrt_only and parts["device_api"] != "pjrt":
    _fail(f"--runtime={runtime}: TPU {generation.name} runs PJRT runtimes "
          f"only: use {pjrt}")
  variant = parts["variant"]
  if variant and variant not in generation.runtime_variants:
    _fail(f"--runtime={runtime} is built for other TPUs ({variant}), not "
          f"{generation.name}: use {pjrt}")
  if hosts > 1 and not parts["pod"]:
    _fail(f"--runtime={runtime} is a single-host runtime, but "
          f"{accelerator_type} has {hosts} hosts: use {pjrt}")
  if hosts == 1 and parts["pod"]:
    _fail(f"--runtime={runtime} is a multi-host (-pod) runtime, but "
          f"{accelerator_type} is one host: use {pjrt}")
  return parts


def check_wheel(tf_version: str, generation: Generation) -> Wheel:
  """Refuses a tensorflow-tpu version PyPI cannot install with its libtpu."""
  wheel = next((w for w in WHEELS if w.version == tf_version), None)
  usable = [w.version for w in WHEELS if w.libtpu_on_pypi]
  if wheel is None:
    _fail(f"--tensorflow={tf_version}: there is no tensorflow-tpu "
          f"{tf_version} in the supported range (wheels: "
          f"{', '.join(w.version for w in WHEELS)}): use {usable[-1]}")
  if not wheel.libtpu_on_pypi:
    base = BASE_RUNTIMES.get(generation.name, "a base runtime")
    _fail(f"--tensorflow={tf_version}: tensorflow-tpu {tf_version} needs "
          f"{wheel.libtpu}, which PyPI does not have: use "
          f"{' or '.join(usable)} on {base}, or the runtime "
          f"tpu-vm-tf-{tf_version}-pjrt (TensorFlow included)")
  return wheel


def check_tpu(accelerator_type: str, api: str, runtime: str | None = None,
              tensorflow: str | None = None) -> list[str]:
  """Refuses a TPU slice the trainer cannot run on; returns the facts
  derived, one per line, for --explain.

  Args:
    accelerator_type: e.g. v6e-8, v5litepod-16, v4-32.
    api: one of APIS.
    runtime: the TPU software version, if one is named.
    tensorflow: the tensorflow-tpu version to install, if any.

  Raises:
    UserError: the first impossible part, in one line naming the fix.
  """
  generation, size = generation_of(accelerator_type)
  if generation.tensorflow_min is None:
    _fail(NO_TENSORFLOW_ON_TPU7X)
  if api not in APIS:
    _fail(f"--api={api} is not one of {', '.join(APIS)}")
  if api not in generation.apis:
    # GKE is a manifest (launch/gke/), not a launcher's API: named only
    # when nothing else offers the generation.
    offered = " or ".join(f"--api={a}" for a in (
        [a for a in generation.apis if a != "gke"] or generation.apis))
    _fail(f"{API_NAMES[api]} does not offer TPU {generation.name}: use "
          f"{offered}")
  chips, hosts = chips_and_hosts(generation, size)
  facts = [f"{accelerator_type}: TPU {generation.name}, {hosts} host(s) of "
           f"{chips} chip(s), through {API_NAMES[api]}"]
  if api == "compute":
    facts.append("machine types: " + ", ".join(
        generation.compute_machine_types))
  if api == "gke":
    facts.append(f"node labels: cloud.google.com/gke-tpu-accelerator="
                 f"{generation.gke_accelerator}; google.com/tpu: {chips} "
                 "per pod, one pod per host")
  parts = check_runtime(generation, hosts, runtime, accelerator_type) if (
      runtime) else None
  if parts:
    facts.append(f"runtime {runtime}: TensorFlow {parts['tensorflow']} "
                 "included: install the package without an extra")
    if tensorflow and tensorflow != parts["tensorflow"]:
      _fail(f"--tensorflow={tensorflow}, but --runtime={runtime} carries "
            f"TensorFlow {parts['tensorflow']}: drop --tensorflow, or use "
            f"{BASE_RUNTIMES.get(generation.name, 'a base runtime')} and "
            "the [tpu] extra")
    _check_tensorflow_generation(generation, parts["tensorflow"])
  elif tensorflow:
    _check_tensorflow_generation(generation, tensorflow)
    wheel = check_wheel(tensorflow, generation)
    facts.append(f"tensorflow-tpu {wheel.version} from PyPI with "
                 f"{wheel.libtpu}")
  return facts


def check_tpu_host(accelerator_type: str | None, tf_version: str) -> None:
  """The trainer's check on a TPU host: refuses TensorFlow on a generation
  that cannot run it. Nothing to say without an accelerator type, or for a
  type the table does not know (a newer name: TensorFlow then tells).

  Raises:
    UserError: TPU7x, or a TensorFlow older than the generation runs.
  """
  if not accelerator_type:
    return
  try:
    generation, _ = generation_of(accelerator_type)
  except errors.UserError:
    return
  _check_tensorflow_generation(generation, tf_version)


def host_accelerator_type(environ) -> str | None:
  """The accelerator type a TPU host states: TPU_ACCELERATOR_TYPE (set in
  GKE's TPU pods and read by libtpu), else ACCELERATOR_TYPE (the TPU VM's
  tpu-env metadata key, which some images export)."""
  return environ.get("TPU_ACCELERATOR_TYPE") or environ.get(
      "ACCELERATOR_TYPE") or None


def family_of(machine_type: str) -> MachineFamily | None:
  """The Vertex AI machine family of a machine type; None for one the table
  does not have (a newer family, or a misspelt type: Vertex AI answers that
  one itself, naming it)."""
  for family in MACHINE_FAMILIES:
    if machine_type == family.prefix or (
        family.prefix.endswith("-") and machine_type.startswith(family.prefix)):
      return family
  return None


def image_variant(image: str) -> str | None:
  """cpu, gpu or tpu from a variant name, this project's image URI
  (.../trainer-VARIANT:TAG) or a Vertex prebuilt one (.../tf-VARIANT.2-17...);
  None for an image whose variant the name does not tell."""
  if image in IMAGE_VARIANTS:
    return image
  name = image.rsplit("/", 1)[-1]
  found = re.match(r"(?:trainer|tf)-(cpu|gpu|tpu)\b", name)
  return found.group(1) if found else None


def check_vertex(machine_type: str, accelerator_type: str | None,
                 image: str) -> list[str]:
  """Refuses a Vertex AI machine, accelerator and image that cannot train;
  returns the facts derived, one per line, for --explain.

  Raises:
    UserError: the first impossible part, in one line naming the fix.
  """
  family = family_of(machine_type)
  accelerator = accelerator_type or None
  if family is None:
    # Refusing what the table does not know would refuse every machine
    # family newer than the table: only the impossible is refused.
    return [f"{machine_type}: not in the table of what runs where, not "
            "checked (Vertex AI names a machine type it does not have)"]
  if family.tpu_generation == "tpu7x":
    _fail(NO_TENSORFLOW_ON_TPU7X)
  if family.kind == "tpu":
    if accelerator and accelerator.startswith("NVIDIA"):
      _fail(f"--accelerator_type={accelerator}: TPU machine type "
            f"{machine_type} takes no GPUs: drop it, or use a GPU machine "
            "(g2-standard-*, a2-*, n1-*)")
    if accelerator and accelerator not in family.accelerators:
      _fail(f"--accelerator_type={accelerator} does not fit {machine_type}: "
            + (f"it takes {' or '.join(family.accelerators)}"
               if family.accelerators else "its TPU is built in (its "
               "topology says the slice): drop it"))
    if family.accelerator_required and not accelerator:
      _fail(f"--machine_type={machine_type} needs --accelerator_type "
            f"{' or '.join(family.accelerators)}")
    machine_kind = "tpu"
  elif accelerator:
    if accelerator not in family.accelerators:
      offered = (f"it takes {', '.join(family.accelerators)}"
                 if family.accelerators else
                 "it takes no accelerator (n1-* takes T4, V100, P4, P100)")
      _fail(f"--accelerator_type={accelerator} does not fit "
            f"--machine_type={machine_type}: {offered}")
    machine_kind = "gpu"
  elif family.accelerator_required:
    _fail(f"--machine_type={machine_type} needs --accelerator_type="
          f"{family.accelerators[0]} (its GPUs)")
  else:
    machine_kind = "cpu"
  variant = image_variant(image)
  facts = [f"{machine_type}: a {machine_kind.upper()} machine"
           f"{f' with {accelerator}' if accelerator else ''}"]
  if variant is None:
    facts.append(f"image {image}: its variant is not in its name, not checked")
    return facts
  fits, why = IMAGE_FITS[(variant, machine_kind)]
  if not fits:
    _fail(f"the {variant} image cannot train on {machine_type}"
          f"{f' with {accelerator}' if accelerator else ''} ({why}): use the "
          f"{machine_kind} image (launch/vertex_ai.sh build {machine_kind})")
  facts.append(f"image {image}: the {variant} variant ({why})")
  return facts


def markdown() -> str:
  """docs/running.md's tables of what runs where, from the data above."""
  yes = lambda ok: "yes" if ok else "no"  # pylint: disable=unnecessary-lambda-assignment
  lines = ["| TPU | types | Cloud TPU API | Compute Engine | GKE label | "
           "TensorFlow | runtimes |", "| --- | --- | --- | --- | --- | --- | --- |"]
  for g in GENERATIONS:
    runtimes = "none" if g.tensorflow_min is None else (
        f"tpu-vm-tf-{g.tensorflow_min}…{NEWEST_TF_RUNTIME}"
        f"{'-pjrt' if g.pjrt_only else ' (-pjrt, -se)'}")
    lines.append(
        f"| {g.name} | {', '.join(p + '-N' for p in g.type_prefixes)} | "
        f"{yes('tpu' in g.apis)} | "
        f"{', '.join(g.compute_machine_types) if 'compute' in g.apis else 'no'}"
        f" | {g.gke_accelerator or 'no'} | "
        f"{g.tensorflow_min + '+' if g.tensorflow_min else 'no'} | "
        f"{runtimes} |")
  lines += ["", "| tensorflow-tpu | requires | on PyPI |", "| --- | --- | --- |"]
  lines += [f"| {w.version} | {w.libtpu} | {yes(w.libtpu_on_pypi)} |"
            for w in WHEELS]
  lines += ["", "| Vertex AI machine type | accelerators | cpu image | "
            "gpu image | tpu image |", "| --- | --- | --- | --- | --- |"]
  for f in MACHINE_FAMILIES:
    name = f.prefix + ("*" if f.prefix.endswith("-") else "")
    accelerators = ", ".join(f.accelerators) or "none"
    if f.accelerators and not f.accelerator_required:
      accelerators = "none or " + accelerators
    rows = [(f.kind, accelerators)]
    if f.kind == "cpu" and f.accelerators:  # GPUs attach to these
      rows = [("cpu", "none"), ("gpu", ", ".join(f.accelerators))]
    for kind, accelerators in rows:
      cells = [yes(IMAGE_FITS[(v, kind)][0]) for v in IMAGE_VARIANTS]
      if f.tpu_generation == "tpu7x":
        cells = ["no (no TensorFlow)"] * len(IMAGE_VARIANTS)
      lines.append(f"| {name} | {accelerators} | {' | '.join(cells)} |")
  return "\n".join(lines) + "\n"


class _Parser(argparse.ArgumentParser):
  """argparse whose mistakes are one line `error: ...`, exit 2."""

  def error(self, message):
    self.exit(2, f"error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="python3 -m trainer.cloud.preflight",
                   description=__doc__.split("\n\n")[0])
  commands = parser.add_subparsers(dest="command", required=True,
                                   parser_class=_Parser)
  tpu = commands.add_parser("tpu", help="a TPU slice and its software")
  tpu.add_argument("--accelerator_type", required=True)
  tpu.add_argument("--api", required=True, choices=APIS)
  tpu.add_argument("--runtime")
  tpu.add_argument("--tensorflow")
  vertex = commands.add_parser("vertex", help="a Vertex AI machine and image")
  vertex.add_argument("--machine_type", required=True)
  vertex.add_argument("--accelerator_type")
  vertex.add_argument("--image", required=True)
  for command in (tpu, vertex):
    command.add_argument("--explain", action="store_true",
                         help="print the facts derived")
  return parser


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    if args.command == "tpu":
      facts = check_tpu(args.accelerator_type, args.api, args.runtime,
                        args.tensorflow)
    else:
      facts = check_vertex(args.machine_type, args.accelerator_type,
                           args.image)
  except errors.UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return e.exit_status
  if args.explain:
    print("\n".join(facts))
  return 0


if __name__ == "__main__":
  sys.exit(main())
