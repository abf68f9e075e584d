"""tests/helpers/cloud_fake.py says no as the real APIs do: request bodies are
read with the Cloud SDK's own messages, Cloud TPU and Vertex AI make their
documented checks, and a test can make an operation slow or fail.

Most requests here go to the fake over HTTP (no gcloud: each gcloud command
costs about 0.7 s); one goes through the real gcloud, to show it sends a
misspelled field as it is and prints the API's answer."""

import json
import urllib.error
import urllib.request

import pytest

from tests.helpers.cloud_fake import HOSTS, custom_job_errors, tuning_job_errors

TPU = "/v2/projects/test-project/locations/us-central2-b"
JOBS = "/v1/projects/test-project/locations/us-central1/customJobs"
NODE = {"acceleratorType": "v4-8", "runtimeVersion": "tpu-vm-tf-2.17.0-pjrt"}
POOL = {"machineSpec": {"machineType": "n1-standard-8"}, "replicaCount": "1",
        "containerSpec": {"imageUri": "us-docker.pkg.dev/p/r/trainer:abc",
                          "args": ["--strategy=default"]}}
TUNING_JOBS = "/v1/projects/test-project/locations/us-central1/hyperparameterTuningJobs"
DOUBLE = {"doubleValueSpec": {"minValue": 1e-4, "maxValue": 1e-2}, "scaleType": "UNIT_LOG_SCALE"}
STUDY = {"metrics": [{"metricId": "accuracy", "goal": "MAXIMIZE"}],
         "parameters": [{"parameterId": "config.train.learning_rate", **DOUBLE}]}
TUNING_JOB = {"displayName": "t", "studySpec": STUDY, "maxTrialCount": 4,
              "parallelTrialCount": 2, "trialJobSpec": {"workerPoolSpecs": [POOL]}}
GCE = "/compute/v1/projects/test-project"
INSTANCE = {"name": "i", "machineType": "zones/us-east5-b/machineTypes/ct6e-standard-4t",
            "scheduling": {"provisioningModel": "SPOT", "instanceTerminationAction": "STOP"}}
UNKNOWN = "Invalid JSON payload received. Unknown name \"{}\" at '{}': Cannot find field."
# Bypass any proxy of the environment: the fake is on 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def api(cloud, method, path, body=None):
  """(HTTP status, JSON reply) of one request to the fake."""
  request = urllib.request.Request(
      cloud.url + path, method=method, headers={"Content-Type": "application/json"},
      data=None if body is None else json.dumps(body).encode())
  try:
    with _OPENER.open(request, timeout=30) as reply:
      return reply.status, json.load(reply)
  except urllib.error.HTTPError as e:
    return e.code, json.load(e)


def refused(cloud, method, path, body):
  """The error of a request the fake must refuse with 400 INVALID_ARGUMENT."""
  status, reply = api(cloud, method, path, body)
  assert status == 400 and reply["error"]["status"] == "INVALID_ARGUMENT", reply
  return reply["error"]


def test_gcloud_sends_a_misspelled_job_field_and_the_api_names_it(cloud, tmp_path):
  spec = tmp_path / "job.yaml"
  spec.write_text("workerPoolSpecs:\n"
                  "- machineSpec: {machineType: ct5lp-hightpu-4t, tpuTopolgy: 2x2}\n"
                  "  replicaCount: 1\n"
                  "  containerSpec: {imageUri: example.com/trainer:1}\n")
  result = cloud.gcloud("ai", "custom-jobs", "create", "--region=us-central1",
                        "--display-name=typo", f"--config={spec}")
  assert result.returncode == 1
  assert ("ERROR: (gcloud.ai.custom-jobs.create) INVALID_ARGUMENT: " + UNKNOWN.format(
      "tpuTopolgy", "custom_job.job_spec.worker_pool_specs[0].machine_spec")) in result.stderr
  (request,) = cloud.find("POST", JOBS + "$")   # gcloud sent it as written
  assert request.body["jobSpec"]["workerPoolSpecs"][0]["machineSpec"]["tpuTopolgy"] == "2x2"
  assert not cloud.jobs


# (method, path, a valid body, the body with a misspelled nested name, the
# name, where; a wrong value, its description): one row per body the fake
# reads, whichever route serves it.
BODY_CASES = [
    ("POST", f"{TPU}/nodes?nodeId=n", NODE,
     {**NODE, "schedulingConfig": {"spott": True}}, "spott", "node.scheduling_config",
     {**NODE, "schedulingConfig": {"spot": "yes"}},
     "Invalid value at 'node.scheduling_config.spot' (TYPE_BOOL), \"yes\""),
    ("PATCH", f"{TPU}/nodes/n?updateMask=metadata", {"metadata": {"ssh-keys": "k"}},
     {"metadata": {}, "networkEndpoints": [{"ipAdress": "x"}]}, "ipAdress",
     "node.network_endpoints[0]", {"metadata": {"ssh-keys": 3}}, "node.metadata"),
    ("POST", f"{TPU}/nodes/n:getGuestAttributes", {"workerIds": [""]},
     {"workerId": ["0"]}, "workerId", None, {"workerIds": "0", "queryPath": 1},
     "Invalid value at 'query_path' (TYPE_STRING), 1"),
    ("POST", f"{TPU}/queuedResources?queuedResourceId=q",
     {"tpu": {"nodeSpec": [{"parent": TPU[4:], "nodeId": "n", "node": NODE}]}},
     {"tpu": {"nodeSpec": [{"parent": "p", "node": {**NODE, "acceleratorTyp": "v4-8"}}]}},
     "acceleratorTyp", "queued_resource.tpu.node_spec[0].node",
     {"tpu": {"nodeSpec": [{"nodeId": 5}]}},
     "Invalid value at 'queued_resource.tpu.node_spec[0].node_id' (TYPE_STRING), 5"),
    ("POST", "/compute/v1/projects/test-project/setCommonInstanceMetadata",
     {"items": [{"key": "ssh-keys", "value": "k"}]},
     {"items": [{"key": "a", "vaule": "b"}]}, "vaule", "metadata_resource.items[0]",
     {"items": [{"key": ["a"]}]}, "Invalid value at 'metadata_resource.items[0].key' "
     "(TYPE_STRING), [\"a\"]"),
    ("POST", f"{GCE}/zones/us-east5-b/instances", INSTANCE,
     {**INSTANCE, "scheduling": {"provisioningModle": "SPOT"}}, "provisioningModle",
     "instance_resource.scheduling", {**INSTANCE, "scheduling": {"provisioningModel": "CHEAP"}},
     "Invalid value at 'instance_resource.scheduling.provisioning_model' "
     "(type.googleapis.com/google.cloud.compute.v1.ProvisioningModel), \"CHEAP\""),
    ("POST", f"{GCE}/regions/us-east5/resourcePolicies",
     {"name": "p", "workloadPolicy": {"type": "HIGH_THROUGHPUT", "acceleratorTopology": "4x4"}},
     {"name": "p", "workloadPolicy": {"topology": "4x4"}}, "topology",
     "resource_policy_resource.workload_policy",
     {"name": "p", "workloadPolicy": {"type": "FAST"}}, "Invalid value at "
     "'resource_policy_resource.workload_policy.type'"),
    ("POST", f"{GCE}/global/instanceTemplates",
     {"name": "t", "properties": {"machineType": "ct6e-standard-4t"}},
     {"name": "t", "properties": {"machineTyp": "ct6e-standard-4t"}}, "machineTyp",
     "instance_template_resource.properties", {"name": "t2", "properties": {"machineType": 5}},
     "Invalid value at 'instance_template_resource.properties.machine_type' (TYPE_STRING), 5"),
    ("POST", f"{GCE}/zones/us-east5-b/instanceGroupManagers",
     {"name": "g", "instanceTemplate": "x", "targetSize": 2},
     {"name": "g", "targetSise": 2}, "targetSise", "instance_group_manager_resource",
     {"name": "g", "targetSize": "two"},
     "Invalid value at 'instance_group_manager_resource.target_size' (TYPE_INT32), \"two\""),
    ("POST", JOBS, {"displayName": "j", "jobSpec": {"workerPoolSpecs": [POOL]}},
     {"displayName": "j", "jobSpec": {"workerPoolSpecs": [POOL], "baseOutputDir": {}}},
     "baseOutputDir", "custom_job.job_spec",
     {"jobSpec": {"workerPoolSpecs": [{**POOL, "replicaCount": "two"}]}},
     "Invalid value at 'custom_job.job_spec.worker_pool_specs[0].replica_count' "
     "(TYPE_INT64), \"two\""),
    ("POST", TUNING_JOBS, TUNING_JOB,
     {**TUNING_JOB, "studySpec": {**STUDY, "metrics": [{"metricID": "accuracy"}]}},
     "metricID", "hyperparameter_tuning_job.study_spec.metrics[0]",
     {**TUNING_JOB, "studySpec": {**STUDY, "algorithm": "BAYESIAN"}},
     "Invalid value at 'hyperparameter_tuning_job.study_spec.algorithm'"),
    ("POST", "/v1/projects/test-project/locations/us-central1/builds",
     {"steps": [{"name": "gcr.io/cloud-builders/docker", "args": ["build", "."]}]},
     {"steps": [{"nmae": "gcr.io/cloud-builders/docker"}]}, "nmae", "build.steps[0]",
     {"timeout": 600}, "Invalid value at 'build.timeout'"),
    ("POST", "/v1/projects/test-project/builds",
     {"images": ["us-docker.pkg.dev/p/r/i:1"]}, {"image": ["x"]}, "image", "build",
     {"images": [{"uri": "x"}]}, "Invalid value at 'build.images[0]' (TYPE_STRING)"),
    ("POST", "/v1/projects/test-project/locations/us/repositories?repositoryId=r",
     {"format": "DOCKER", "description": "trainer images"},
     {"format": "DOCKER", "dockerConfig": {"immutableTag": True}}, "immutableTag",
     "repository.docker_config", {"format": "DOCKERR"},
     "Invalid value at 'repository.format' (type.googleapis.com/"
     "google.devtools.artifactregistry.v1.Format), \"DOCKERR\""),
]


def test_every_body_is_read_with_the_sdk_messages(cloud):
  for method, path, valid, misspelled, name, where, wrong, wrong_message in BODY_CASES:
    # Valid: not refused (201/200, or 404 for a route not served or a
    # resource that does not exist).
    status, reply = api(cloud, method, path, valid)
    assert status != 400, (path, reply)
    error = refused(cloud, method, path, misspelled)
    message = (f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
               if where is None else UNKNOWN.format(name, where))
    assert error["message"] == message, path
    (violation,) = error["details"][0]["fieldViolations"]
    assert violation == ({"description": message} if where is None else
                         {"field": where, "description": message})
    assert wrong_message in refused(cloud, method, path, wrong)["message"]
  # Two violations: one line each, in the one message.
  error = refused(cloud, "POST", JOBS, {"displayNmae": "j", "jobSpec": {
      "workerPoolSpecs": [{**POOL, "machineSpec": {"machineType": "n1", "gpu": 1}}]}})
  assert error["message"].splitlines() == [
      UNKNOWN.format("displayNmae", "custom_job"),
      UNKNOWN.format("gpu", "custom_job.job_spec.worker_pool_specs[0].machine_spec")]


def test_cloud_tpu_refuses_what_it_does_not_offer(cloud):
  for body, message, field in (
      ({**NODE, "acceleratorType": "v9-13"}, "the accelerator v9-13 was not found "
       "in zone us-central2-b", "node.accelerator_type"),
      ({**NODE, "runtimeVersion": "nonexistent"}, "the runtime version nonexistent "
       "was not found in zone us-central2-b", "node.runtime_version")):
    error = refused(cloud, "POST", f"{TPU}/nodes?nodeId=n", body)
    assert error["message"] == "Cloud TPU received a bad request. " + message
    assert error["details"][0]["fieldViolations"][0]["field"] == field
  spec = {"parent": TPU[4:], "nodeId": "n", "node": {**NODE, "acceleratorType": "v4-12"}}
  error = refused(cloud, "POST", f"{TPU}/queuedResources?queuedResourceId=q",
                  {"tpu": {"nodeSpec": [spec]}})
  assert "the accelerator v4-12 was not found" in error["message"]
  assert not cloud.nodes and not cloud.queued
  # Every documented type is accepted, with its documented number of hosts.
  for accelerator, hosts in HOSTS.items():
    status, _ = api(cloud, "POST", f"{TPU}/nodes?nodeId={accelerator}",
                    {**NODE, "acceleratorType": accelerator})
    assert status == 200
    assert len(cloud.nodes[f"{TPU[4:]}/nodes/{accelerator}"]["networkEndpoints"]) == hosts


def test_compute_refuses_a_machine_type_the_zone_lacks_and_a_resource_in_use(cloud):
  # Through the real gcloud: the error it prints for Compute's 400.
  result = cloud.gcloud("compute", "instances", "create", "v", "--zone=us-east5-b",
                        "--machine-type=ct6e-standard-3t")
  assert result.returncode == 1
  assert ("Machine type with name 'ct6e-standard-3t' does not exist in zone "
          "'us-east5-b'.") in result.stderr
  assert not cloud.compute
  status, _ = api(cloud, "POST", f"{GCE}/global/instanceTemplates",
                  {"name": "t", "properties": {"machineType": "ct5p-hightpu-4t"}})
  assert status == 200
  status, _ = api(cloud, "POST", f"{GCE}/regions/us-east5/resourcePolicies",
                  {"name": "p", "workloadPolicy": {"type": "HIGH_THROUGHPUT"}})
  assert status == 200
  status, _ = api(cloud, "POST", f"{GCE}/zones/us-east5-b/instanceGroupManagers", {
      "name": "g", "instanceTemplate": "projects/test-project/global/instanceTemplates/t", "targetSize": 3,
      "resourcePolicies": {"workloadPolicy": "projects/test-project/regions/us-east5/"
                                             "resourcePolicies/p"}})
  assert status == 200
  status, reply = api(cloud, "POST",
                      f"{GCE}/zones/us-east5-b/instanceGroupManagers/g/listManagedInstances")
  assert [m["instanceStatus"] for m in reply["managedInstances"]] == ["RUNNING"] * 3
  # Each VM its own sandbox address; the template and policy are in use.
  ips = {i["networkInterfaces"][0]["accessConfigs"][0]["natIP"]
         for k, i in cloud.compute.items() if "/instances/" in k}
  assert len(ips) == 3
  for path in ("global/instanceTemplates/t", "regions/us-east5/resourcePolicies/p"):
    status, reply = api(cloud, "DELETE", f"{GCE}/{path}")
    assert status == 400 and "is already being used by" in reply["error"]["message"]
  assert api(cloud, "DELETE", f"{GCE}/zones/us-east5-b/instanceGroupManagers/g")[0] == 200
  assert sorted(cloud.compute) == ["test-project/global/instanceTemplates/t",
                                   "test-project/regions/us-east5/resourcePolicies/p"]


@pytest.mark.parametrize("pools, field, words", [
    ([{**POOL, "machineSpec": {"machineType": "g2-standard-8", "acceleratorCount": 2}}],
     "job_spec.worker_pool_specs[0].machine_spec.accelerator_type", "no accelerator_type"),
    ([{**POOL, "replicaCount": "7"}], "job_spec.worker_pool_specs[0].replica_count",
     "exactly 1 replica, got 7"),
    ([POOL, {"replicaCount": "2", "containerSpec": POOL["containerSpec"]}],
     "job_spec.worker_pool_specs[1].machine_spec.machine_type", "machine type is required"),
    ([{**POOL, "pythonPackageSpec": {"executorImageUri": "x", "pythonModule": "m"}}],
     "job_spec.worker_pool_specs[0].task", "got 2"),
    ([{k: v for k, v in POOL.items() if k != "containerSpec"}],
     "job_spec.worker_pool_specs[0].task", "got none"),
    ([], "job_spec.worker_pool_specs[0]", "is required"),
])
def test_vertex_ai_refuses_a_job_that_breaks_its_documented_rules(cloud, pools, field, words):
  error = refused(cloud, "POST", JOBS, {"displayName": "j", "jobSpec": {"workerPoolSpecs": pools}})
  assert error["message"].startswith(f"List of found errors:\t1.Field: {field}; Message: ")
  assert words in error["message"]
  assert error["details"][0]["fieldViolations"][0]["field"] == field
  assert not cloud.jobs


def test_vertex_ai_accepts_a_chief_workers_and_an_empty_pool():
  # An empty pool skips a role (e.g. no parameter server); each other pool
  # has its own replicas.
  assert custom_job_errors({"jobSpec": {"workerPoolSpecs": [
      POOL, {**POOL, "replicaCount": "3"}, {}]}}) == []


def test_slow_and_failed_operations(cloud):
  cloud.slow_next("tpu.nodes.create", polls=2)
  status, operation = api(cloud, "POST", f"{TPU}/nodes?nodeId=slow", NODE)
  assert status == 200 and operation["done"] is False and "response" not in operation
  node = cloud.nodes[f"{TPU[4:]}/nodes/slow"]
  assert node["state"] == "CREATING"
  path = "/v2/" + operation["name"]
  assert api(cloud, "GET", path)[1]["done"] is False
  assert api(cloud, "GET", path)[1]["done"] is False
  done = api(cloud, "GET", path)[1]
  assert done["done"] is True and done["response"]["name"].endswith("/nodes/slow")
  assert node["state"] == "READY"

  # Out of capacity: the operation ends with code 8 and no node exists.
  cloud.fail_next("tpu.nodes.create", "There is no more capacity", polls=1)
  status, operation = api(cloud, "POST", f"{TPU}/nodes?nodeId=full", NODE)
  assert status == 200 and operation["done"] is False
  failed = api(cloud, "GET", "/v2/" + operation["name"])[1]
  assert failed["done"] is False
  failed = api(cloud, "GET", "/v2/" + operation["name"])[1]
  assert failed["done"] is True and "response" not in failed
  assert failed["error"] == {"code": 8, "message": "There is no more capacity"}
  assert f"{TPU[4:]}/nodes/full" not in cloud.nodes
  # The plan was for one request: the next create succeeds at once.
  assert api(cloud, "POST", f"{TPU}/nodes?nodeId=full", NODE)[1]["done"] is True

  # A quota: the request itself is refused (HTTP 429).
  cloud.fail_next("aiplatform.customJobs.create", "The following quota metrics exceed "
                  "quota limits: aiplatform.googleapis.com/custom_model_training_cpus",
                  http_status=429)
  body = {"displayName": "j", "jobSpec": {"workerPoolSpecs": [POOL]}}
  status, reply = api(cloud, "POST", JOBS, body)
  assert status == 429 and reply["error"]["status"] == "RESOURCE_EXHAUSTED"
  assert "custom_model_training_cpus" in reply["error"]["message"] and not cloud.jobs

  # A job that ends JOB_STATE_FAILED, with its error.
  status, job = api(cloud, "POST", JOBS, body)
  assert status == 200
  job_id = job["name"].rsplit("/", 1)[1]
  cloud.fail_job(job_id, "The replica workerpool0-0 exited with a non-zero status of 2.")
  job = api(cloud, "GET", f"{JOBS}/{job_id}")[1]
  assert job["state"] == "JOB_STATE_FAILED" and "endTime" in job
  assert job["error"] == {"code": 3, "message": "The replica workerpool0-0 exited with "
                          "a non-zero status of 2."}

  # A queued resource that FAILED says why (state.failedData.error).
  cloud.set_queued_state("q", "FAILED", error="There is no more capacity")
  api(cloud, "POST", f"{TPU}/queuedResources?queuedResourceId=q",
      {"tpu": {"nodeSpec": [{"parent": TPU[4:], "nodeId": "n", "node": NODE}]}})
  state = api(cloud, "GET", f"{TPU}/queuedResources/q")[1]["state"]
  assert state == {"state": "FAILED", "failedData": {"error": {
      "code": 8, "message": "There is no more capacity"}}}


def test_compute_project_metadata_is_set_and_read(cloud):
  items = [{"key": "ssh-keys", "value": "tester:ssh-ed25519 AAAA tester"}]
  status, operation = api(cloud, "POST",
                          "/compute/v1/projects/test-project/setCommonInstanceMetadata",
                          {"items": items})
  assert status == 200 and operation["status"] == "DONE"
  assert api(cloud, "GET", operation["selfLink"][len(cloud.url):]) == (200, operation)
  project = api(cloud, "GET", "/compute/v1/projects/test-project")[1]
  assert project["commonInstanceMetadata"]["items"] == items


@pytest.mark.parametrize("change, field, words", [
    ({"maxTrialCount": 0}, "max_trial_count", "greater than 0"),
    ({"studySpec": {**STUDY, "metrics": []}}, "study_spec.metrics", "At least one metric"),
    ({"studySpec": {**STUDY, "metrics": [{"metricId": "accuracy"}]}},
     "study_spec.metrics[0]", "goal are required"),
    ({"studySpec": {**STUDY, "parameters": []}}, "study_spec.parameters",
     "At least one parameter"),
    ({"studySpec": {**STUDY, "parameters": [{"parameterId": "a b", **DOUBLE}]}},
     "study_spec.parameters[0].parameter_id", "without whitespace"),
    ({"studySpec": {**STUDY, "parameters": [{"parameterId": "a"}]}},
     "study_spec.parameters[0].parameter_value_spec", "got none"),
    ({"studySpec": {**STUDY, "parameters": [{"parameterId": "a", "doubleValueSpec": {
        "minValue": 2, "maxValue": 1}}]}},
     "study_spec.parameters[0].double_value_spec", "min_value 2 is greater"),
    ({"studySpec": {**STUDY, "parameters": [{"parameterId": "a", "doubleValueSpec": {
        "minValue": 0, "maxValue": 1}, "scaleType": "UNIT_LOG_SCALE"}]}},
     "study_spec.parameters[0].scale_type", "strictly positive"),
    ({"trialJobSpec": {"workerPoolSpecs": [{**POOL, "replicaCount": "2"}]}},
     "trial_job_spec.worker_pool_specs[0].replica_count", "exactly 1 replica"),
])
def test_vertex_ai_refuses_a_tuning_job_that_breaks_its_documented_rules(
    cloud, change, field, words):
  error = refused(cloud, "POST", TUNING_JOBS, {**TUNING_JOB, **change})
  assert error["message"].startswith(f"List of found errors:\t1.Field: {field}; Message: ")
  assert words in error["message"]
  assert not cloud.tuning_jobs
  assert tuning_job_errors(TUNING_JOB) == []
