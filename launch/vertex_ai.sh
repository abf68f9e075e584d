#!/usr/bin/env bash
# Runs the trainer as a Vertex AI custom job (a Python package on a prebuilt
# TensorFlow training image), and follows, inspects or cancels it.
#
#   STAGING_DIR=gs://BUCKET/staging DATA_DIR=gs://BUCKET/arith \
#     MODEL_DIR=gs://BUCKET/runs/v1 launch/vertex_ai.sh submit
#   launch/vertex_ai.sh status JOB_ID
#   launch/vertex_ai.sh logs JOB_ID
#   launch/vertex_ai.sh cancel JOB_ID
#
# Run `launch/vertex_ai.sh --help` for every variable.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
usage: launch/vertex_ai.sh SUBCOMMAND [arguments]

Subcommands:
  submit [flags]   build the package (git archive of HEAD), upload it to
                   STAGING_DIR and create a custom job running
                   `python -m trainer.task` (trainer flags are passed through);
                   prints the job id and its console URL
  status JOB_ID    the job's state (and its error, if it failed)
  logs JOB_ID      stream the job's logs
  cancel JOB_ID    cancel the job

What runs where:
  MACHINE_TYPE a TPU type (ct5lp-*, ct6e-*, cloud-tpu)  --strategy=tpu, one machine
  ACCELERATOR_TYPE set (GPUs), WORKERS=1                --strategy=mirrored
  WORKERS=N > 1 (CPU or GPU machines)                   --strategy=multi_worker_mirrored,
                                                        a chief pool and N-1 workers
  otherwise                                             --strategy=default (CPU)
The trainer writes to Vertex AI's directories under MODEL_DIR (the job's
baseOutputDirectory): model/ (SavedModel, config.json, metrics.json),
checkpoints/ (a restarted job resumes from them) and logs/ (TensorBoard).

Environment (default):
  PROJECT            gcloud's configured project
  REGION             us-central1
  STAGING_DIR        submit: gs:// directory for the package (required)
  DATA_DIR           submit: gs:// data set (required)
  MODEL_DIR          submit: gs:// output directory of the job (required)
  MACHINE_TYPE       n1-standard-8 (TPU: e.g. ct5lp-hightpu-4t)
  ACCELERATOR_TYPE   none; e.g. NVIDIA_TESLA_T4, NVIDIA_L4 (GPUs per machine)
  ACCELERATOR_COUNT  1 when ACCELERATOR_TYPE is set
  WORKERS            1 (machines)
  TPU_TOPOLOGY       TPU machine types: the slice's topology, e.g. 2x2
  IMAGE              the prebuilt training image (executor):
                     us-docker.pkg.dev/vertex-ai/training/tf-cpu.2-17.py310:latest,
                     tf-gpu.2-17.py310 with GPUs; TPU: none has TensorFlow
                     >= 2.16 (Keras 3), set IMAGE yourself
  CONFIG             configs/default.py (gpu.py with GPUs, tpu.py on TPUs)
  JOB_NAME           masked-attention-<date>-<time> (the display name)
  REPO_DIR           the git checkout to package (default: this repository)
  DRY_RUN            1: print every command (and the job spec), run nothing
USAGE
}

select_subcommand "${1:-}" submit status logs cancel
shift
if [[ "$subcommand" != submit ]]; then
  [[ $# -eq 1 && "$1" =~ ^[0-9]+$ ]] ||
    die "usage: launch/vertex_ai.sh $subcommand JOB_ID (the number submit printed)"
fi

region=${REGION:-us-central1}
machine_type=${MACHINE_TYPE:-n1-standard-8}
accelerator_type=${ACCELERATOR_TYPE:-}
accelerator_count=${ACCELERATOR_COUNT:-}
workers=${WORKERS:-1}
tpu_topology=${TPU_TOPOLOGY:-}
repo_dir=${REPO_DIR:-$repo_root}
image_prefix=us-docker.pkg.dev/vertex-ai/training

submit_checks() {
  local name value
  for name in STAGING_DIR DATA_DIR MODEL_DIR; do
    value=${!name:-}
    [[ -n "$value" ]] || die "$name is required for submit (a gs:// URL)"
    require_gs "$name" "$value" "a Vertex AI job cannot read this machine's disk"
  done
  [[ "$workers" =~ ^[1-9][0-9]*$ ]] || die "WORKERS must be a positive number of machines, got '$workers'"
  case "$machine_type" in
    ct5lp-* | ct6e-* | cloud-tpu | tpu7x-*) kind=tpu ;;
    *) if [[ -n "$accelerator_type" ]]; then kind=gpu; else kind=cpu; fi ;;
  esac
  if [[ "$kind" == tpu ]]; then
    ((workers == 1)) || die "WORKERS=$workers: a TPU job runs on one machine (the slice is its TPU_TOPOLOGY)"
    [[ "$machine_type" == cloud-tpu || -n "$tpu_topology" ]] ||
      die "MACHINE_TYPE=$machine_type needs TPU_TOPOLOGY (e.g. 2x2 for ct5lp-hightpu-4t)"
    [[ -n "${IMAGE:-}" ]] ||
      die "MACHINE_TYPE=$machine_type: Vertex AI's prebuilt TensorFlow TPU image (tf-tpu.2-15) has Keras 2, the trainer needs TensorFlow >= 2.16 with Keras 3: set IMAGE to a TPU training image with it"
  else
    [[ -z "$tpu_topology" ]] || die "TPU_TOPOLOGY=$tpu_topology is for TPU machine types, not MACHINE_TYPE=$machine_type"
  fi
  if [[ -n "$accelerator_type" ]]; then
    accelerator_count=${accelerator_count:-1}
    [[ "$accelerator_count" =~ ^[1-9][0-9]*$ ]] ||
      die "ACCELERATOR_COUNT must be a positive number, got '$accelerator_count'"
  elif [[ -n "$accelerator_count" && "$kind" != tpu ]]; then
    die "ACCELERATOR_COUNT=$accelerator_count without ACCELERATOR_TYPE"
  fi
}

# One worker pool of the job spec, as JSON: REPLICAS, then the trainer's
# arguments.
worker_pool() {
  local replicas=$1 machine arg args=()
  shift
  machine="\"machineType\": $(json_string "$machine_type")"
  if [[ -n "$accelerator_type" ]]; then
    machine+=", \"acceleratorType\": $(json_string "$accelerator_type"), \"acceleratorCount\": $accelerator_count"
  fi
  if [[ -n "$tpu_topology" ]]; then
    machine+=", \"tpuTopology\": $(json_string "$tpu_topology")"
  fi
  for arg in "$@"; do args+=("$(json_string "$arg")"); done
  local joined
  joined=$(IFS=,; echo "${args[*]}")
  cat <<POOL
    {
      "machineSpec": {$machine},
      "replicaCount": $replicas,
      "pythonPackageSpec": {
        "executorImageUri": $(json_string "$image"),
        "packageUris": [$(json_string "$package_uri")],
        "pythonModule": "trainer.task",
        "args": [$joined]
      }
    }
POOL
}

submit() {
  submit_checks
  local strategy default_config
  strategy_for "$kind" "$workers"
  image=${IMAGE:-$image_prefix/tf-$kind.2-17.py310:latest}
  local config=${CONFIG:-$default_config}
  local job_name=${JOB_NAME:-masked-attention-$(date +%Y%m%d-%H%M%S)}
  local trainer_args=("--config=$config" "--strategy=$strategy")
  [[ "$strategy" == tpu ]] && trainer_args+=(--tpu=local)
  trainer_args+=("--data_dir=$DATA_DIR" "$@")
  echo "vertex_ai: PROJECT=$project REGION=$region MACHINE_TYPE=$machine_type" \
    "ACCELERATOR=${accelerator_type:-none}${accelerator_type:+ x$accelerator_count}" \
    "WORKERS=$workers${tpu_topology:+ TPU_TOPOLOGY=$tpu_topology} IMAGE=$image" >&2

  local work_dir package
  make_temp_dir work_dir
  package=$(build_package "$repo_dir" "$work_dir")
  package_uri=${STAGING_DIR%/}/packages/$(basename "$package")
  run gcloud storage cp "$package" "$package_uri"

  # The job spec (JSON is YAML): the chief pool, then the workers' pool. The
  # trainer finds its output directories in AIP_MODEL_DIR,
  # AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR, which Vertex AI sets from
  # baseOutputDirectory.
  local spec=$work_dir/job.yaml pools
  pools=$(worker_pool 1 "${trainer_args[@]}")
  if ((workers > 1)); then
    pools+=","$'\n'$(worker_pool $((workers - 1)) "${trainer_args[@]}")
  fi
  cat >"$spec" <<SPEC
{
  "workerPoolSpecs": [
$pools
  ],
  "baseOutputDirectory": {"outputUriPrefix": $(json_string "$MODEL_DIR")}
}
SPEC
  if [[ "$dry_run" == "1" ]]; then
    echo "# $spec:"
    sed 's/^/# /' "$spec"
  fi
  local name
  name=$(run gcloud ai custom-jobs create "${location[@]}" \
    --display-name="$job_name" --config="$spec" --format='value(name)')
  if [[ "$dry_run" == "1" ]]; then
    echo "$name"
    return
  fi
  local job_id=${name##*/}
  [[ "$job_id" =~ ^[0-9]+$ ]] || die "gcloud did not return a job name (got '$name')"
  echo "job: $job_id"
  echo "console: https://console.cloud.google.com/ai/platform/locations/$region/training/$job_id?project=$project"
  echo "next: launch/vertex_ai.sh status $job_id; launch/vertex_ai.sh logs $job_id; outputs in ${MODEL_DIR%/}/{model,checkpoints,logs}"
}

require_gcloud
location=(--region="$region" --project="$project")

cmd_submit() {
  submit "$@"
}

cmd_status() {
  run gcloud ai custom-jobs describe "$1" "${location[@]}" \
    --format='value(state,error.message)'
}

cmd_logs() {
  run gcloud ai custom-jobs stream-logs "$1" "${location[@]}"
}

cmd_cancel() {
  run gcloud ai custom-jobs cancel "$1" "${location[@]}"
}

run_subcommand "$@"
