"""launch/tpu_vm.sh with API=compute: TPU VMs as Compute Engine resources,
through the real gcloud against tests/helpers/cloud_fake.py.

A single-host slice is one instance; a multi-host slice a workload policy,
an instance template and a managed instance group. The fake gives every
instance its own sandbox (natIP 127.0.3.k), where `compute ssh`/`scp` act.
Nothing here ran on a real TPU: what is checked is what gcloud sends and
what runs on each host.
"""

import os

from tests.helpers.cloud_fake import PROJECT, error_line, ok
from tests.launch.test_tpu_vm import python_calls, tpu, tpu_vm, wait_for  # pylint: disable=unused-import

ZONE = "us-east5-b"
NAME = "masked-attention-tpu"
GCE = f"/compute/v1/projects/{PROJECT}"
IMAGE = ("projects/ubuntu-os-accelerator-images/", "ubuntu-accel-2204-amd64-tpu-v5e-v5p-v6e")
RUN = {"DATA_DIR": "gs://b/d", "MODEL_DIR": "gs://b/r"}


def compute(cloud, *args, env=None):
  return tpu_vm(cloud, *args, env={"API": "compute", "ZONE": ZONE, **(env or {})})


def hosts(cloud):
  """natIP of every instance the fake holds, in instance-name order."""
  return [i["networkInterfaces"][0]["accessConfigs"][0]["natIP"]
          for _, i in sorted(cloud.compute.items()) if "/instances/" in _]


def trainer_calls(cloud, ip):
  return [c for c in python_calls(cloud.host_home(ip)) if c["args"][:2] == ["-m", "trainer.task"]]


def test_single_host_v6e_is_a_spot_instance_from_a_reservation_through_its_life(tpu):
  env = {"ACCELERATOR_TYPE": "v6e-4", "SPOT": "1", "RESERVATION": "res-1", **RUN}
  ok(compute(tpu, "create", env=env))
  (insert,) = tpu.find("POST", f"{GCE}/zones/{ZONE}/instances$")
  body = insert.body
  assert body["name"] == NAME
  assert body["machineType"].endswith(f"/zones/{ZONE}/machineTypes/ct6e-standard-4t")
  source = body["disks"][0]["initializeParams"]["sourceImage"]
  assert IMAGE[0] in source and source.endswith(IMAGE[1])
  assert body["scheduling"]["provisioningModel"] == "SPOT"
  assert body["scheduling"]["instanceTerminationAction"] == "STOP"
  assert body["scheduling"]["onHostMaintenance"] == "TERMINATE"
  assert body["reservationAffinity"] == {
      "consumeReservationType": "SPECIFIC_RESERVATION",
      "key": "compute.googleapis.com/reservation-name", "values": ["res-1"]}
  assert not tpu.find(None, "^/v2/")   # nothing through the Cloud TPU API

  ok(compute(tpu, "setup", env=env))
  (ip,) = hosts(tpu)
  code = os.path.join(tpu.host_home(ip), "masked-attention-trainer")
  pips = [c["args"] for c in python_calls(tpu.host_home(ip)) if c["args"][:2] == ["-m", "pip"]]
  assert ["-m", "pip", "install", "--quiet", "--user", code + "[tpu]"] in pips
  assert pips[-1] == ["-m", "pip", "install", "--quiet", "--user", code]

  with open(os.path.join(tpu.host_home(ip), "fake_trainer_exit"), "w") as f:
    f.write("0")
  assert "train: started on" in ok(compute(tpu, "train", env=env)).stdout
  wait_for(lambda: os.path.exists(os.path.join(
      tpu.host_home(ip), "masked-attention-run", "train.exit")), what="the run to end")
  (call,) = trainer_calls(tpu, ip)
  assert call["args"][2:] == ["--config=configs/tpu.py", "--strategy=tpu", "--tpu=local",
                              "--data_dir=gs://b/d", "--model_dir=gs://b/r"]
  status = ok(compute(tpu, "status", env=env)).stdout
  assert f"vm: {NAME} RUNNING" in status and "run: finished (exit status 0)" in status
  ok(compute(tpu, "logs", env=env))

  refused = compute(tpu, "delete", env=env)
  assert "without a terminal: pass --yes" in error_line(refused)
  ok(compute(tpu, "delete", "--yes", env=env))
  assert tpu.find("DELETE", f"{GCE}/zones/{ZONE}/instances/{NAME}$")
  assert not tpu.compute


def test_multi_host_v5p_is_a_workload_policy_template_and_group_of_two(tpu):
  # v5p-16: 16 TensorCores, 2 VMs of 4 chips (ct5p-hightpu-4t), 2x2x2.
  env = {"ACCELERATOR_TYPE": "v5p-16", **RUN}
  ok(compute(tpu, "create", env=env))
  (policy,) = tpu.find("POST", f"{GCE}/regions/us-east5/resourcePolicies$")
  assert policy.body["name"] == f"{NAME}-policy"
  assert policy.body["workloadPolicy"] == {"type": "HIGH_THROUGHPUT",
                                           "acceleratorTopology": "2x2x2"}
  (template,) = tpu.find("POST", f"{GCE}/global/instanceTemplates$")
  properties = template.body["properties"]
  assert properties["machineType"] == "ct5p-hightpu-4t"
  assert properties["disks"][0]["initializeParams"]["sourceImage"].endswith(IMAGE[1])
  assert properties["scheduling"]["onHostMaintenance"] == "TERMINATE"
  (group,) = tpu.find("POST", f"{GCE}/zones/{ZONE}/instanceGroupManagers$")
  assert group.body["targetSize"] == 2
  assert group.body["instanceTemplate"].endswith(f"/global/instanceTemplates/{NAME}-template")
  assert group.body["resourcePolicies"]["workloadPolicy"].endswith(
      f"regions/us-east5/resourcePolicies/{NAME}-policy")

  ok(compute(tpu, "setup", env=env))
  ips = hosts(tpu)
  assert len(ips) == 2
  for ip in ips:   # every host got the package with TensorFlow's TPU build
    code = os.path.join(tpu.host_home(ip), "masked-attention-trainer")
    assert ["-m", "pip", "install", "--quiet", "--user", code + "[tpu]"] in [
        c["args"] for c in python_calls(tpu.host_home(ip))]
  with open(os.path.join(tpu.host_home(ips[0]), "fake_trainer_exit"), "w") as f:
    f.write("0")
  ok(compute(tpu, "train", env=env))
  wait_for(lambda: os.path.exists(os.path.join(
      tpu.host_home(ips[0]), "masked-attention-run", "train.exit")), what="the run to end")
  (call,) = trainer_calls(tpu, ips[0])   # worker 0 drives every host's TPU
  internal = [ip.replace("127.0.3.", "127.0.4.") for ip in ips]
  assert "--tpu=" + ",".join(f"grpc://{ip}:8470" for ip in internal) in call["args"]
  assert call["env"]["TPU_LOAD_LIBRARY"] == "0"
  assert not any(trainer_calls(tpu, ip) for ip in ips[1:])
  status = ok(compute(tpu, "status", env=env)).stdout
  assert f"group: {NAME}, 2 of 2 VMs" in status and status.count(" RUNNING") == 2
  assert "run: finished (exit status 0)" in status

  ok(compute(tpu, "delete", "--yes", env=env))
  assert not tpu.compute   # the group (and its VMs), the template, the policy


def test_bad_compute_settings_are_refused_before_any_cloud_call(tpu):
  for env, words in [
      # The table of what runs where (trainer/cloud/preflight.py) first.
      ({"ACCELERATOR_TYPE": "v4-8"}, "Compute Engine (gcloud compute instances) "
       "does not offer TPU v4: use API=tpu"),
      ({"ACCELERATOR_TYPE": "v5litepod-8"}, "does not offer TPU v5e: use API=tpu"),
      ({"ACCELERATOR_TYPE": "tpu7x-8"}, "TensorFlow does not support TPU7x: use v6e or earlier"),
      ({"ACCELERATOR_TYPE": "v6e-8", "API": "tpu", "RUNTIME_VERSION": "tpu-vm-tf-2.18.0-se"},
       "RUNTIME_VERSION=tpu-vm-tf-2.18.0-se: TPU v6e runs PJRT runtimes only"),
      ({"ACCELERATOR_TYPE": "v6e-16", "API": "tpu", "RUNTIME_VERSION": "tpu-vm-tf-2.18.0-pjrt"},
       "is a single-host runtime, but v6e-16 has 4 hosts"),
      ({"ACCELERATOR_TYPE": "v6e-48"}, "set TOPOLOGY"),
      ({"ACCELERATOR_TYPE": "v6e-16", "TOPOLOGY": "4by4"}, "TOPOLOGY must look like"),
      ({"ACCELERATOR_TYPE": "v6e-4", "QUEUED": "1"}, "QUEUED=1 is a Cloud TPU API"),
      ({"API": "gke"}, "API must be tpu or compute"),
      ({"API": "tpu", "RESERVATION": "r"}, "RESERVATION is for API=compute")]:
    result = compute(tpu, "create", env=env)
    assert result.returncode == 2, (env, result.stderr)
    assert words in error_line(result)
  assert not tpu.requests


def test_dry_run_prints_the_compute_commands(tpu):
  env = {"ACCELERATOR_TYPE": "v6e-16", "SPOT": "1", "DRY_RUN": "1"}
  printed = ok(compute(tpu, "create", env=env)).stdout.splitlines()
  assert [" ".join(line.split()[:4]) for line in printed] == [
      "gcloud compute resource-policies create", "gcloud compute instance-templates create",
      "gcloud compute instance-groups managed"]
  assert "--accelerator-topology=4x4" in printed[0]
  assert "--machine-type=ct6e-standard-4t" in printed[1]
  assert "--provisioning-model=SPOT --instance-termination-action=STOP" in printed[1]
  assert "--size=4" in printed[2]
  deleted = ok(compute(tpu, "delete", env=env)).stdout.splitlines()
  assert [line.split()[2] for line in deleted] == [
      "instance-groups", "instance-templates", "resource-policies"]
  assert not tpu.requests
