#!/usr/bin/env bash
# Creates, sets up, trains on and deletes a Cloud TPU VM with gcloud.
#
#   PROJECT=my-project launch/tpu_vm.sh create
#   launch/tpu_vm.sh setup
#   DATA_DIR=gs://BUCKET/arith MODEL_DIR=gs://BUCKET/runs/1 launch/tpu_vm.sh train
#   launch/tpu_vm.sh delete            # a TPU bills until it is deleted
#
# Run `launch/tpu_vm.sh --help` for every subcommand and variable.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
usage: launch/tpu_vm.sh SUBCOMMAND [arguments]

Subcommands:
  create           create the TPU VM (a queued resource with QUEUED=1)
  setup            copy this repository to every worker and `pip install -e .`
                   (keeps the TPU VM's TensorFlow)
  train [flags]    run `python3 -m trainer.task --strategy=tpu` on worker 0,
                   --tpu=local on a single host, --tpu=$TPU_NAME on a pod;
                   extra trainer flags are passed through; output in ~/train.log
  status           describe the TPU (state, accelerator, workers)
  logs             print the last LINES lines of ~/train.log on worker 0
  ssh              open a shell on worker WORKER
  delete [--yes]   delete the TPU (asks for confirmation unless --yes)

Environment (default):
  TPU_NAME          masked-attention-tpu
  ZONE              us-central2-b
  ACCELERATOR_TYPE  v4-8 (more than 8 cores, e.g. v4-32, is a pod)
  RUNTIME_VERSION   tpu-vm-tf-2.19.1-pjrt (list: gcloud compute tpus versions list --zone=ZONE)
  PROJECT           gcloud's configured project
  SPOT              0; 1 creates a Spot (preemptible) TPU
  QUEUED            0; 1 creates through queued resources (for pods)
  POD               auto (from ACCELERATOR_TYPE); 0 or 1 to force
  CONFIG            configs/tpu.py
  DATA_DIR          train: gs:// data set (required)
  MODEL_DIR         train: gs:// run directory (required)
  REPO_DIR          setup: the directory to copy (default: this repository)
  WORKER            ssh: worker index (default 0)
  LINES             logs: lines to print (default 200)
  DRY_RUN           1: print every gcloud command instead of running it
USAGE
}

subcommand=${1:-}
if [[ -z "$subcommand" || "$subcommand" == "-h" || "$subcommand" == "--help" ]]; then
  usage
  [[ -n "$subcommand" ]] && exit 0 || exit 2
fi
shift

tpu_name=${TPU_NAME:-masked-attention-tpu}
zone=${ZONE:-us-central2-b}
accelerator_type=${ACCELERATOR_TYPE:-v4-8}
runtime_version=${RUNTIME_VERSION:-tpu-vm-tf-2.19.1-pjrt}
spot=${SPOT:-0}
queued=${QUEUED:-0}
config=${CONFIG:-configs/tpu.py}
repo_dir=${REPO_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
dry_run=${DRY_RUN:-0}

cores=${accelerator_type##*-}
[[ "$cores" =~ ^[0-9]+$ ]] || die "ACCELERATOR_TYPE=$accelerator_type: expected a type like v4-8 or v5litepod-16"
case "${POD:-auto}" in
  auto) if ((cores > 8)); then pod=1; else pod=0; fi ;;
  0 | 1) pod=$POD ;;
  *) die "POD must be auto, 0 or 1, got '$POD'" ;;
esac

if [[ "$dry_run" != "1" ]]; then
  command -v gcloud >/dev/null 2>&1 ||
    die "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"
  if [[ -z "$(gcloud auth list --filter=status:ACTIVE --format='value(account)' 2>/dev/null)" ]]; then
    die "gcloud is not authenticated: run \`gcloud auth login\`"
  fi
fi
if [[ -n "${PROJECT:-}" ]]; then
  project=$PROJECT
elif [[ "$dry_run" == "1" ]]; then
  project="PROJECT"
else
  project=$(gcloud config get-value project 2>/dev/null || true)
  [[ -n "$project" ]] || die "no project: set PROJECT or run \`gcloud config set project PROJECT\`"
fi

echo "tpu_vm: TPU_NAME=$tpu_name ZONE=$zone ACCELERATOR_TYPE=$accelerator_type" \
  "RUNTIME_VERSION=$runtime_version PROJECT=$project SPOT=$spot QUEUED=$queued" \
  "POD=$pod" >&2

location=(--zone="$zone" --project="$project")

# The trainer command line on a worker, each argument shell-quoted: it
# travels as one string through `gcloud ... ssh --command`.
remote_train_command() {
  local tpu_flag=--tpu=local
  ((pod == 1)) && tpu_flag=--tpu=$tpu_name
  local words=(python3 -m trainer.task "--config=$config" --strategy=tpu
    "$tpu_flag" "--data_dir=$DATA_DIR" "--model_dir=$MODEL_DIR" "$@")
  local quoted
  quoted=$(printf ' %q' "${words[@]}")
  printf 'cd ~/trainer &&%s 2>&1 | tee -a ~/train.log' "$quoted"
}

case "$subcommand" in
  create)
    extra=()
    if [[ "$spot" == "1" ]]; then extra+=(--spot); fi
    if [[ "$queued" == "1" ]]; then
      run gcloud compute tpus queued-resources create "$tpu_name" \
        --node-id="$tpu_name" "${location[@]}" \
        --accelerator-type="$accelerator_type" \
        --runtime-version="$runtime_version" "${extra[@]}"
    else
      run gcloud compute tpus tpu-vm create "$tpu_name" "${location[@]}" \
        --accelerator-type="$accelerator_type" \
        --version="$runtime_version" "${extra[@]}"
    fi
    ;;
  setup)
    [[ -d "$repo_dir" ]] || die "REPO_DIR=$repo_dir is not a directory"
    run gcloud compute tpus tpu-vm scp --recurse "$repo_dir" \
      "$tpu_name:~/trainer" "${location[@]}" --worker=all
    run gcloud compute tpus tpu-vm ssh "$tpu_name" "${location[@]}" \
      --worker=all --command='cd ~/trainer && pip install -e .'
    ;;
  train)
    for name in DATA_DIR MODEL_DIR; do
      value=${!name:-}
      [[ "$value" == gs://* ]] ||
        die "$name must be a gs:// URL (the TPU workers cannot read this machine's disk), got '${value}'"
    done
    run gcloud compute tpus tpu-vm ssh "$tpu_name" "${location[@]}" \
      --worker=0 --command="$(remote_train_command "$@")"
    ;;
  status)
    run gcloud compute tpus tpu-vm describe "$tpu_name" "${location[@]}"
    ;;
  logs)
    lines=${LINES:-200}
    [[ "$lines" =~ ^[0-9]+$ ]] || die "LINES must be a number, got '$lines'"
    run gcloud compute tpus tpu-vm ssh "$tpu_name" "${location[@]}" \
      --worker=0 --command="tail -n $lines ~/train.log"
    ;;
  ssh)
    worker=${WORKER:-0}
    [[ "$worker" =~ ^[0-9]+$ ]] || die "WORKER must be a worker index, got '$worker'"
    run gcloud compute tpus tpu-vm ssh "$tpu_name" "${location[@]}" \
      --worker="$worker"
    ;;
  delete)
    if [[ "${1:-}" != "--yes" && "$dry_run" != "1" ]]; then
      [[ -t 0 ]] || die "refusing to delete $tpu_name without a terminal: pass --yes"
      read -r -p "Delete TPU $tpu_name in $zone ($project)? [y/N] " answer
      [[ "$answer" == "y" || "$answer" == "Y" ]] || die "not deleted"
    fi
    if [[ "$queued" == "1" ]]; then
      run gcloud compute tpus queued-resources delete "$tpu_name" \
        "${location[@]}" --force --quiet
    else
      run gcloud compute tpus tpu-vm delete "$tpu_name" "${location[@]}" --quiet
    fi
    ;;
  *)
    die "unknown subcommand '$subcommand': see launch/tpu_vm.sh --help"
    ;;
esac
