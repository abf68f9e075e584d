"""The table of what runs where (trainer/cloud/preflight.py): every row
refused or allowed as Google's and PyPI's facts say, the CLI the launchers
run (one line, exit 2, no TensorFlow), the trainer's refusal on a TPU host,
docs/running.md's copy of the table, and launch/gke/tpu-job.yaml.

The expected verdicts below are written out by hand from the sources the
module names (not computed from its tables), so a wrong row fails here.
"""

import os
import re
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from tests.helpers import ROOT, error_lines
from tests.helpers import trainer_process
from trainer import errors
from trainer.cloud import preflight

TPU7X = "TensorFlow does not support TPU7x: use v6e or earlier"

# (accelerator type, API, allowed?): each generation through each API.
# Cloud TPU API: v2 ... v6e; Compute Engine: v5p, v6e, TPU7x; GKE: v4 on.
API_ROWS = [
    ("v2-8", "tpu", True), ("v2-8", "compute", False), ("v2-8", "gke", False),
    ("v3-8", "tpu", True), ("v3-8", "compute", False), ("v3-8", "gke", False),
    ("v4-8", "tpu", True), ("v4-8", "compute", False), ("v4-8", "gke", True),
    ("v5litepod-8", "tpu", True), ("v5litepod-8", "compute", False),
    ("v5litepod-8", "gke", True), ("v5e-4", "tpu", True),
    ("v5p-8", "tpu", True), ("v5p-8", "compute", True), ("v5p-8", "gke", True),
    ("v6e-8", "tpu", True), ("v6e-8", "compute", True), ("v6e-8", "gke", True),
]


@pytest.mark.parametrize("accelerator_type,api,allowed", API_ROWS)
def test_each_generation_through_each_api(accelerator_type, api, allowed):
  if allowed:
    preflight.check_tpu(accelerator_type, api)
    return
  with pytest.raises(errors.UserError) as raised:
    preflight.check_tpu(accelerator_type, api)
  assert "does not offer TPU" in str(raised.value)
  assert "use --api=tpu" in str(raised.value)


@pytest.mark.parametrize("api", preflight.APIS)
@pytest.mark.parametrize("extra", [{}, {"runtime": "tpu-vm-tf-2.18.0-pjrt"},
                                   {"tensorflow": "2.20.0"}])
def test_tpu7x_is_refused_with_the_issues_words_everywhere(api, extra):
  with pytest.raises(errors.UserError) as raised:
    preflight.check_tpu("tpu7x-8", api, **extra)
  assert str(raised.value) == TPU7X


# (accelerator type, runtime, None if allowed else a phrase of the refusal).
RUNTIME_ROWS = [
    ("v6e-8", "tpu-vm-tf-2.18.0-pjrt", None),
    ("v6e-16", "tpu-vm-tf-2.18.0-pod-pjrt", None),
    ("v6e-8", "tpu-vm-tf-2.18.0-pjrt-v5e-and-v6", None),
    ("v5litepod-16", "tpu-vm-tf-2.18.0-pod-pjrt-v5e-and-v6", None),
    ("v5p-8", "tpu-vm-tf-2.18.0-pjrt-v5p-and-below", None),
    ("v5p-8", "tpu-vm-tf-2.15.0-pjrt", None),
    ("v4-8", "tpu-vm-tf-2.18.0-pjrt", None),
    ("v4-8", "tpu-vm-tf-2.18.0-se", None),
    ("v4-32", "tpu-vm-tf-2.18.0-pod-pjrt-v5p-and-below", None),
    ("v3-8", "tpu-vm-tf-2.16.1-se", None),
    ("v2-8", "tpu-vm-tf-2.18.0-pjrt-v5p-and-below", None),
    ("v6e-8", "v2-alpha-tpuv6e", None),  # no TensorFlow: not checked here
    ("v6e-8", "tpu-vm-tf-2.18.0-se", "runs PJRT runtimes only"),
    ("v5litepod-4", "tpu-vm-tf-2.18.0", "runs PJRT runtimes only"),
    ("v5p-8", "tpu-vm-tf-2.16.1-se", "runs PJRT runtimes only"),
    ("v6e-8", "tpu-vm-tf-2.14.0-pjrt", "TensorFlow 2.15.0 or later"),
    ("v6e-8", "tpu-vm-tf-2.19.0-pjrt", "no TensorFlow TPU runtime newer"),
    ("v4-8", "tpu-vm-tf-2.20.0-pjrt", "no TensorFlow TPU runtime newer"),
    ("v4-8", "tpu-vm-tf-2.18.0-pjrt-v5e-and-v6", "built for other TPUs"),
    ("v6e-8", "tpu-vm-tf-2.18.0-pjrt-v5p-and-below", "built for other TPUs"),
    ("v5p-8", "tpu-vm-tf-2.18.0-pjrt-v5e-and-v6", "built for other TPUs"),
    ("v6e-16", "tpu-vm-tf-2.18.0-pjrt", "single-host runtime"),
    ("v4-32", "tpu-vm-tf-2.18.0-pjrt", "single-host runtime"),
    ("v6e-8", "tpu-vm-tf-2.18.0-pod-pjrt", "multi-host (-pod) runtime"),
    ("v6e-8", "tpu-vm-tf-latest", "not a TensorFlow runtime name"),
]


@pytest.mark.parametrize("accelerator_type,runtime,refusal", RUNTIME_ROWS)
def test_each_runtime_on_each_generation(accelerator_type, runtime, refusal):
  if refusal is None:
    preflight.check_tpu(accelerator_type, "tpu", runtime=runtime)
    return
  with pytest.raises(errors.UserError) as raised:
    preflight.check_tpu(accelerator_type, "tpu", runtime=runtime)
  assert refusal in str(raised.value)
  assert "use " in str(raised.value)  # it names the fix


# tensorflow-tpu on PyPI (pip index versions; each wheel's Requires-Dist):
# 2.18.0 pins libtpu==2.18.0, which PyPI lacks; 2.19.1 libtpu==0.0.10;
# 2.20.0 libtpu~=0.0.14; no 2.19.0, no 2.21.
WHEEL_ROWS = [
    ("2.18.0", "needs libtpu==2.18.0, which PyPI does not have"),
    ("2.19.1", None),
    ("2.20.0", None),
    ("2.19.0", "there is no tensorflow-tpu 2.19.0"),
    ("2.21.0", "there is no tensorflow-tpu 2.21.0"),
]


@pytest.mark.parametrize("version,refusal", WHEEL_ROWS)
def test_each_tensorflow_tpu_wheel_and_its_libtpu(version, refusal):
  if refusal is None:
    facts = preflight.check_tpu("v6e-8", "compute", tensorflow=version)
    assert any(f"tensorflow-tpu {version}" in fact for fact in facts)
    return
  with pytest.raises(errors.UserError) as raised:
    preflight.check_tpu("v6e-8", "compute", tensorflow=version)
  assert refusal in str(raised.value)


def test_every_wheel_of_the_table_is_a_row_here():
  assert [w.version for w in preflight.WHEELS] == [
      v for v, _ in WHEEL_ROWS[:3]]


def test_a_runtime_and_another_tensorflow_are_refused():
  with pytest.raises(errors.UserError) as raised:
    preflight.check_tpu("v6e-8", "tpu", runtime="tpu-vm-tf-2.18.0-pjrt",
                        tensorflow="2.20.0")
  assert "carries TensorFlow 2.18.0" in str(raised.value)
  preflight.check_tpu("v6e-8", "tpu", runtime="tpu-vm-tf-2.18.0-pjrt",
                      tensorflow="2.18.0")


@pytest.mark.parametrize("generation", preflight.GENERATIONS,
                         ids=lambda g: g.name)
def test_every_generation_row_is_covered_by_the_api_rows(generation):
  # Every row of the table is exercised above: its prefix, each API.
  if generation.tensorflow_min is None:
    return  # TPU7x: the refusal test covers it
  rows = {(t.split("-")[0], api) for t, api, _ in API_ROWS}
  for api in preflight.APIS:
    assert any((p, api) in rows for p in generation.type_prefixes), (
        generation.name, api)


@pytest.mark.parametrize("accelerator_type,hosts,chips", [
    ("v4-8", 1, 4), ("v4-32", 4, 4), ("v5p-8", 1, 4), ("v5p-16", 2, 4),
    ("v5litepod-4", 1, 4), ("v5litepod-8", 1, 8), ("v5litepod-16", 4, 4),
    ("v6e-8", 1, 8), ("v6e-16", 4, 4), ("v6e-256", 64, 4)])
def test_hosts_and_chips_per_host(accelerator_type, hosts, chips):
  generation, size = preflight.generation_of(accelerator_type)
  assert preflight.chips_and_hosts(generation, size) == (chips, hosts)


# (machine type, accelerator, image, None if allowed else a phrase).
VERTEX_ROWS = [
    ("n1-standard-8", None, "cpu", None),
    ("n1-standard-8", None, "gpu", None),  # the CUDA build runs on the CPU
    ("n1-standard-8", None, "tpu", "tensorflow-tpu is built for TPU hosts"),
    ("n1-standard-8", "NVIDIA_TESLA_T4", "gpu", None),
    ("n1-standard-8", "NVIDIA_TESLA_T4", "cpu", "billed and never used"),
    ("n1-standard-8", "NVIDIA_TESLA_T4", "tpu", "tensorflow-tpu has no CUDA"),
    ("n1-standard-8", "NVIDIA_L4", "gpu", "does not fit"),
    ("e2-standard-4", None, "cpu", None),
    ("e2-standard-4", "NVIDIA_TESLA_T4", "gpu", "does not fit"),
    ("n2-standard-8", None, "cpu", None),
    ("n2d-standard-8", None, "cpu", None),
    ("c2-standard-8", None, "gpu", None),
    ("c2-standard-8", "NVIDIA_L4", "gpu", "does not fit"),
    ("a2-megagpu-16g", "NVIDIA_TESLA_A100", "gpu", None),
    ("a2-megagpu-16g", "NVIDIA_A100_80GB", "gpu", "does not fit"),
    ("a3-megagpu-8g", "NVIDIA_H100_MEGA_80GB", "gpu", None),
    ("a3-ultragpu-8g", "NVIDIA_H200_141GB", "gpu", None),
    ("a3-ultragpu-8g", None, "gpu", "needs --accelerator_type"),
    ("g2-standard-8", "NVIDIA_L4", "gpu", None),
    ("g2-standard-8", None, "gpu", "needs --accelerator_type=NVIDIA_L4"),
    ("g2-standard-8", "NVIDIA_TESLA_T4", "gpu", "does not fit"),
    ("a2-highgpu-1g", "NVIDIA_TESLA_A100", "gpu", None),
    ("a2-ultragpu-1g", "NVIDIA_A100_80GB", "gpu", None),
    ("a3-highgpu-8g", "NVIDIA_H100_80GB", "gpu", None),
    ("a3-highgpu-8g", "NVIDIA_H100_80GB", "cpu", "billed and never used"),
    ("ct5lp-hightpu-4t", None, "tpu", None),
    ("ct5lp-hightpu-4t", None, "gpu", "no TPU runtime in it"),
    ("ct5lp-hightpu-4t", None, "cpu", "no TPU runtime in it"),
    ("ct5lp-hightpu-4t", "NVIDIA_L4", "tpu", "takes no GPUs"),
    ("ct5lp-hightpu-4t", "TPU_V5_LITEPOD", "tpu", None),
    ("ct5lp-hightpu-4t", "TPU_V3", "tpu", "it takes TPU_V5_LITEPOD"),
    ("ct6e-standard-4t", "TPU_V5_LITEPOD", "tpu", "its TPU is built in"),
    ("ct6e-standard-4t", None, "tpu", None),
    ("ct6e-standard-4t", None, "gpu", "no TPU runtime in it"),
    ("cloud-tpu", "TPU_V3", "tpu", None),
    ("cloud-tpu", "TPU_V2", "tpu", None),
    ("cloud-tpu", None, "tpu", "needs --accelerator_type TPU_V2 or TPU_V3"),
    ("cloud-tpu", "TPU_V3", "gpu", "no TPU runtime in it"),
    ("tpu7x-standard-4t", None, "tpu", TPU7X),
    ("c4-standard-8", None, "cpu", None),  # not in the table: not refused
    ("c4-standard-8", "NVIDIA_L4", "gpu", None),
    ("ct6e-standard-4t", None,
     "us-central1-docker.pkg.dev/p/r/trainer-gpu:0123456789ab",
     "the gpu image cannot train"),
    ("g2-standard-8", "NVIDIA_L4",
     "us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-17.py310:latest", None),
    ("ct6e-standard-4t", None, "us-docker.pkg.dev/p/r/mine:1", None),
]


@pytest.mark.parametrize("machine_type,accelerator,image,refusal",
                         VERTEX_ROWS)
def test_each_vertex_machine_accelerator_and_image(machine_type, accelerator,
                                                   image, refusal):
  if refusal is None:
    preflight.check_vertex(machine_type, accelerator, image)
    return
  with pytest.raises(errors.UserError) as raised:
    preflight.check_vertex(machine_type, accelerator, image)
  assert refusal in str(raised.value)


@pytest.mark.parametrize("family", preflight.MACHINE_FAMILIES,
                         ids=lambda f: f.prefix)
def test_every_machine_family_is_a_vertex_row(family):
  assert any(preflight.family_of(m) is family for m, *_ in VERTEX_ROWS)


def _cli(*args, isolated=True):
  """The CLI as a launcher runs it; isolated: with `python3 -S` (no
  site-packages: no TensorFlow, no absl), as on a laptop without them."""
  command = [sys.executable, *(["-S"] if isolated else []), "-m",
             "trainer.cloud.preflight", *args]
  return subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                        timeout=60, check=False)


@pytest.mark.parametrize("args,status,phrase", [
    (["tpu", "--accelerator_type=v6e-8", "--api=compute"], 0, None),
    (["tpu", "--accelerator_type=tpu7x-8", "--api=compute"], 2, TPU7X),
    (["tpu", "--accelerator_type=v2-8", "--api=compute"], 2,
     "Compute Engine (gcloud compute instances) does not offer TPU v2"),
    (["tpu", "--accelerator_type=v6e-8", "--api=tpu",
      "--runtime=tpu-vm-tf-2.18.0-se"], 2, "runs PJRT runtimes only"),
    (["tpu", "--accelerator_type=v6e-8", "--api=compute",
      "--tensorflow=2.18.0"], 2, "which PyPI does not have"),
    (["vertex", "--machine_type=ct6e-standard-4t", "--image=gpu"], 2,
     "the gpu image cannot train on ct6e-standard-4t"),
    (["vertex", "--machine_type=ct6e-standard-4t", "--image=tpu"], 0, None),
    (["tpu", "--accelerator_type=v6e-8"], 2, "--api"),
    (["tpu", "--accelerator_type=v6e-8", "--api=tpus"], 2, "--api"),
    (["gke"], 2, "invalid choice"),
])
def test_the_cli_exits_0_silently_or_2_with_one_line(args, status, phrase):
  result = _cli(*args)
  assert result.returncode == status, result.stderr
  assert result.stdout == ""
  if phrase is None:
    assert result.stderr == ""
    return
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and error_lines(result) == lines, result.stderr
  assert phrase in lines[0]


def test_the_cli_explains_what_it_derived():
  result = _cli("tpu", "--accelerator_type=v6e-16", "--api=gke",
                "--tensorflow=2.20.0", "--explain")
  assert result.returncode == 0, result.stderr
  assert "4 host(s) of 4 chip(s)" in result.stdout
  assert "gke-tpu-accelerator=tpu-v6e-slice" in result.stdout
  assert "libtpu~=0.0.14" in result.stdout


def test_the_cli_imports_neither_tensorflow_nor_absl():
  # In the CLI's own process, with site-packages on the path (where both
  # are installed): what it loads, not what it can find.
  code = ("import sys\n"
          "from trainer.cloud import preflight\n"
          "status = preflight.main(['tpu', '--accelerator_type=tpu7x-8', "
          "'--api=gke'])\n"
          "loaded = [m for m in ('tensorflow', 'absl', 'keras', 'numpy') "
          "if m in sys.modules]\n"
          "print(status, loaded)\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, check=False)
  assert result.stdout.strip() == "2 []", result.stdout + result.stderr


@pytest.mark.parametrize("variable", ["TPU_ACCELERATOR_TYPE",
                                      "ACCELERATOR_TYPE"])
def test_the_trainer_refuses_tpu7x_before_touching_a_tpu(variable):
  env = {"TPU_ACCELERATOR_TYPE": None, "ACCELERATOR_TYPE": None,
         variable: "tpu7x-8"}
  result = trainer_process.run_trainer("--strategy=tpu", env=env,
                                       timeout=120)
  trainer_process.assert_one_error(result, 2, TPU7X)
  assert "no TPU reachable" not in result.stderr


def test_the_trainer_goes_on_for_a_generation_that_runs_tensorflow():
  # v6e with this TensorFlow passes the check; off a TPU the next line is
  # the TPU's absence, as without the variable.
  result = trainer_process.run_trainer(
      "--strategy=tpu", "--tpu=grpc://127.0.0.1:1",
      env={"TPU_ACCELERATOR_TYPE": "v6e-8"}, timeout=120)
  trainer_process.assert_one_error(result, 2, "no TPU reachable")


def test_the_docs_table_is_the_modules_table():
  with open(os.path.join(ROOT, "docs", "running.md"), encoding="utf-8") as f:
    text = f.read()
  found = re.search(r"<!-- what-runs-where:[^\n]*-->\n(.*?)<!-- /what-runs-where -->",
                    text, re.S)
  assert found, "docs/running.md lacks the what-runs-where markers"
  assert found.group(1) == preflight.markdown()


def _manifest():
  with open(os.path.join(ROOT, "launch", "gke", "tpu-job.yaml"),
            encoding="utf-8") as f:
    return yaml.safe_load(f)


def test_the_gke_job_matches_the_table():
  job = _manifest()
  pod = job["spec"]["template"]["spec"]
  container, = pod["containers"]
  env = {e["name"]: e["value"] for e in container["env"]}
  accelerator_type = env["TPU_ACCELERATOR_TYPE"]
  preflight.check_tpu(accelerator_type, "gke")  # the table allows it
  generation, size = preflight.generation_of(accelerator_type)
  chips, hosts = preflight.chips_and_hosts(generation, size)
  selector = pod["nodeSelector"]
  assert selector["cloud.google.com/gke-tpu-accelerator"] == (
      generation.gke_accelerator)
  topology = [int(n) for n in selector["cloud.google.com/gke-tpu-topology"]
              .split("x")]
  assert topology[0] * topology[1] * (topology[2] if len(topology) > 2
                                      else 1) == chips * hosts
  assert hosts == 1  # one pod: a Job, not a JobSet
  assert container["resources"]["limits"]["google.com/tpu"] == chips
  assert preflight.image_variant(container["image"]) == "tpu"
  args = container["args"]
  assert "--strategy=tpu" in args and "--tpu=local" in args
  for flag in ("--data_dir=", "--model_dir="):
    value, = [a[len(flag):] for a in args if a.startswith(flag)]
    assert value.startswith("gs://"), value


# The Kubernetes release whose schemas kubernetes-validate 1.37 bundles (the
# newest it has); GKE's current channels run 1.3x, whose Job and pod fields
# used here are the same.
KUBERNETES_VERSION = "1.37.0"


def test_the_gke_job_is_a_valid_kubernetes_job():
  # Kubernetes' own OpenAPI-derived JSON schema for batch/v1 Job, strict: an
  # unknown or misspelt field, or a value of the wrong type, is refused
  # (no API server here).
  job = _manifest()
  kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
  misspelt = _manifest()
  pod = misspelt["spec"]["template"]["spec"]
  pod["nodeSelectr"] = pod.pop("nodeSelector")
  with pytest.raises(kubernetes_validate.ValidationError):
    kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
  # What the schema does not say: a Job's pods restart Never or OnFailure.
  assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never",
                                                              "OnFailure")


def test_the_commands_docs_running_shows_pass():
  with open(os.path.join(ROOT, "docs", "running.md"), encoding="utf-8") as f:
    commands = re.findall(r"^python3 -m trainer\.cloud\.preflight (.+)$",
                          f.read(), re.M)
  assert len(commands) >= 4
  for command in commands:
    result = _cli(*command.split())
    assert (result.returncode, result.stderr) == (0, ""), command
