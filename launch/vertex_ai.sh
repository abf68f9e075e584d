#!/usr/bin/env bash
# Runs the trainer as a Vertex AI custom job from a container image of this
# repository (launch/Dockerfile, built by Cloud Build into Artifact Registry:
# no local Docker), and follows, inspects or cancels it.
#
#   DATA_DIR=gs://BUCKET/arith MODEL_DIR=gs://BUCKET/runs/v1 \
#     launch/vertex_ai.sh submit       # builds the image first if needed
#   launch/vertex_ai.sh build gpu      # or build an image ahead of time
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
  build [VARIANT]  build the image VARIANT (cpu, gpu or tpu; default: the one
                   MACHINE_TYPE and ACCELERATOR_TYPE need) of the git HEAD
                   with Cloud Build: the HEAD's files (git archive) go to
                   Cloud Build, which runs `docker build -f launch/Dockerfile
                   --build-arg TF_EXTRA=VARIANT .` and pushes
                     REGION-docker.pkg.dev/PROJECT/REPOSITORY/trainer-VARIANT:COMMIT
                   (COMMIT: the HEAD's 12-digit hash). Skipped when that tag
                   exists; the repository is created when missing. Prints the
                   build's progress every POLL_SECONDS and how long it took.
  submit [flags]   create a custom job whose machines run that image (built
                   first when its tag is missing) or IMAGE; the container's
                   entry point is `python -m trainer.task` and its arguments
                   are --config, --strategy, --data_dir and the flags given
                   here; prints the job id and its console URL
  status JOB_ID    the job's state, and its error if it failed, on one line
  logs JOB_ID      stream the job's logs
  cancel JOB_ID    cancel the job

What runs where:
  MACHINE_TYPE a TPU type (ct5lp-*, ct6e-*, cloud-tpu)  --strategy=tpu, one machine,
                                                        image trainer-tpu
  ACCELERATOR_TYPE set (GPUs), WORKERS=1                --strategy=mirrored, trainer-gpu
  WORKERS=N > 1 (CPU or GPU machines)                   --strategy=multi_worker_mirrored,
                                                        a chief pool and N-1 workers
  otherwise                                             --strategy=default, trainer-cpu
The trainer writes to Vertex AI's directories under MODEL_DIR (the job's
baseOutputDirectory): model/ (SavedModel, config.json, metrics.json),
checkpoints/ (a restarted job resumes from them) and logs/ (TensorBoard).
Cloud Build reads the source from STAGING_DIR/source, or without STAGING_DIR
from gcloud's default gs://PROJECT_cloudbuild/source (created when missing);
its log is in the Cloud Console (the URL is printed) and in
`gcloud builds log BUILD_ID --region=REGION`.

Environment (default):
  PROJECT            gcloud's configured project
  REGION             us-central1 (jobs, the image repository and its builds)
  REPOSITORY         masked-attention: the Artifact Registry docker repository
  IMAGE              submit: run this image instead (no build); its entry
                     point must take the trainer's flags, with --config
                     paths relative to its working directory
  DATA_DIR           submit: gs:// data set (required)
  MODEL_DIR          submit: gs:// output directory of the job (required)
  STAGING_DIR        build: gs:// directory for the uploaded source (see above)
  POLL_SECONDS       build: seconds between build status checks (default 30)
  MACHINE_TYPE       n1-standard-8 (TPU: e.g. ct5lp-hightpu-4t)
  ACCELERATOR_TYPE   none; e.g. NVIDIA_TESLA_T4, NVIDIA_L4 (GPUs per machine)
  ACCELERATOR_COUNT  1 when ACCELERATOR_TYPE is set
  WORKERS            1 (machines)
  TPU_TOPOLOGY       TPU machine types: the slice's topology, e.g. 2x2
  CONFIG             configs/default.py (gpu.py with GPUs, tpu.py on TPUs)
  JOB_NAME           masked-attention-<date>-<time> (the display name)
  REPO_DIR           the git checkout to build (default: this repository)
  DRY_RUN            1: print every command (the build config and the job
                     spec too), run nothing; the image counts as missing
USAGE
}

select_subcommand "${1:-}" build submit status logs cancel
shift
case "$subcommand" in
  build)
    [[ $# -le 1 ]] || die "usage: launch/vertex_ai.sh build [cpu|gpu|tpu]" ;;
  submit) ;;
  *)
    [[ $# -eq 1 && "$1" =~ ^[0-9]+$ ]] ||
      die "usage: launch/vertex_ai.sh $subcommand JOB_ID (the number submit printed)" ;;
esac

region=${REGION:-us-central1}
repository=${REPOSITORY:-masked-attention}
machine_type=${MACHINE_TYPE:-n1-standard-8}
accelerator_type=${ACCELERATOR_TYPE:-}
accelerator_count=${ACCELERATOR_COUNT:-}
workers=${WORKERS:-1}
tpu_topology=${TPU_TOPOLOGY:-}
repo_dir=${REPO_DIR:-$repo_root}
poll_seconds=${POLL_SECONDS:-30}

# The machines' kind (tpu, gpu, cpu) in `kind`: it picks the strategy and
# the image variant.
machine_checks() {
  [[ "$workers" =~ ^[1-9][0-9]*$ ]] || die "WORKERS must be a positive number of machines, got '$workers'"
  case "$machine_type" in
    ct5lp-* | ct6e-* | cloud-tpu | tpu7x-*) kind=tpu ;;
    *) if [[ -n "$accelerator_type" ]]; then kind=gpu; else kind=cpu; fi ;;
  esac
  if [[ "$kind" == tpu ]]; then
    ((workers == 1)) || die "WORKERS=$workers: a TPU job runs on one machine (the slice is its TPU_TOPOLOGY)"
    [[ "$machine_type" == cloud-tpu || -n "$tpu_topology" ]] ||
      die "MACHINE_TYPE=$machine_type needs TPU_TOPOLOGY (e.g. 2x2 for ct5lp-hightpu-4t)"
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

submit_checks() {
  local name value
  for name in DATA_DIR MODEL_DIR; do
    value=${!name:-}
    [[ -n "$value" ]] || die "$name is required for submit (a gs:// URL)"
    require_gs "$name" "$value" "a Vertex AI job cannot read this machine's disk"
  done
  machine_checks
}

build_checks() {
  [[ "$poll_seconds" =~ ^[0-9]+$ ]] || die "POLL_SECONDS must be a number of seconds, got '$poll_seconds'"
  [[ -z "${STAGING_DIR:-}" ]] ||
    require_gs STAGING_DIR "$STAGING_DIR" "Cloud Build reads the source from Cloud Storage"
  git -C "$repo_dir" rev-parse --git-dir >/dev/null 2>&1 ||
    die "$repo_dir is not a git checkout: the image is built from its HEAD (git archive)"
  git -C "$repo_dir" cat-file -e HEAD:launch/Dockerfile 2>/dev/null ||
    die "launch/Dockerfile is not in the HEAD of $repo_dir: commit it (the image is built from HEAD)"
}

# One line from a failed gcloud's stderr (a file): its ERROR message, lines
# joined, without gcloud's command prefix and its note on the account.
gcloud_error() {
  local text
  text=$(sed -n '/^ERROR: /,$p' "$1")
  [[ -n "$text" ]] || text=$(grep -v '^[[:space:]]*$' "$1" | tail -n 1)
  text=$(sed -E '1s/^ERROR: (\(gcloud[.a-z_-]*\) )?//; s/\.? This command is authenticated as .*//' <<<"$text" |
    awk '{ gsub(/\t/, " "); gsub(/^ +| +$/, "") } NF { printf "%s%s", sep, $0; sep = "; " }')
  echo "${text:-gcloud failed without a message}"
}

elapsed() {
  local seconds=$((SECONDS - $1))
  printf '%dm%02ds' $((seconds / 60)) $((seconds % 60))
}

# Sets `image` to the Artifact Registry URI of image VARIANT of the HEAD of
# REPO_DIR, building it with Cloud Build unless its tag exists. Messages go
# to stderr.
ensure_image() {
  local variant=$1 commit
  commit=$(git -C "$repo_dir" rev-parse --short=12 HEAD)
  if [[ -n "$(git -C "$repo_dir" status --porcelain -- setup.py README.md LICENSE trainer configs launch/Dockerfile .dockerignore)" ]]; then
    warn "uncommitted changes in $repo_dir are not in the image: it is built from HEAD ($commit)"
  fi
  local image_path=$region-docker.pkg.dev/$project/$repository/trainer-$variant
  image=$image_path:$commit
  local work_dir
  make_temp_dir work_dir
  local err=$work_dir/gcloud.err tags
  if [[ "$dry_run" == "1" ]]; then
    run gcloud artifacts docker tags list "$image_path" --format='value(tag.basename())'
  elif tags=$(gcloud artifacts docker tags list "$image_path" --format='value(tag.basename())' 2>"$err"); then
    if grep -qxF "$commit" <<<"$tags"; then
      echo "vertex_ai: image $image exists (built from $commit): not rebuilt" >&2
      return
    fi
  elif grep -q 'NOT_FOUND' "$err"; then
    create_repository "$work_dir"
  else
    die "cannot list the tags of $image_path: $(gcloud_error "$err")"
  fi
  [[ "$dry_run" != "1" ]] || create_repository "$work_dir"
  cloud_build "$variant" "$commit" "$work_dir"
}

create_repository() {
  local err=$1/gcloud.err
  echo "vertex_ai: creating the docker repository $repository in $region" >&2
  run gcloud artifacts repositories create "$repository" --location="$region" \
    --project="$project" --repository-format=docker \
    --description="masked-attention trainer images (launch/vertex_ai.sh)" 2>"$err" ||
    grep -q 'ALREADY_EXISTS' "$err" ||
    die "cannot create the docker repository $repository in $region: $(gcloud_error "$err")"
}

# Builds and pushes `image` (VARIANT, COMMIT) with Cloud Build from a git
# archive of HEAD in WORK_DIR, polling until the build ends.
cloud_build() {
  local variant=$1 commit=$2 work_dir=$3 start=$SECONDS
  local source=$work_dir/source-$commit.tar.gz config=$work_dir/cloudbuild.yaml
  local err=$work_dir/gcloud.err
  # The whole tree: the build context is the repository root and
  # .dockerignore picks what the image gets.
  git -C "$repo_dir" archive --format=tar.gz -o "$source" HEAD
  cat >"$config" <<CONFIG
steps:
- name: gcr.io/cloud-builders/docker
  args: [build, -f, launch/Dockerfile, --build-arg, TF_EXTRA=$variant, -t, $(json_string "$image"), .]
images: [$(json_string "$image")]
timeout: 3600s
CONFIG
  echo "vertex_ai: building $image (TF_EXTRA=$variant, commit $commit) with Cloud Build in $region" >&2
  local staging=()
  [[ -z "${STAGING_DIR:-}" ]] || staging=(--gcs-source-staging-dir="${STAGING_DIR%/}/source")
  if [[ "$dry_run" == "1" ]]; then
    echo "# $config:"
    sed 's/^/# /' "$config"
  fi
  local submitted
  submitted=$(run gcloud builds submit "$source" --config="$config" --region="$region" \
    --project="$project" "${staging[@]}" --async --format='value(id,logUrl)' 2>"$err") ||
    die "Cloud Build refused the build of $image: $(gcloud_error "$err")"
  if [[ "$dry_run" == "1" ]]; then
    echo "$submitted"
    run gcloud builds describe BUILD_ID --region="$region" --project="$project" \
      --format='value(status,failureInfo.detail,statusDetail)'
    return
  fi
  local build_id log_url
  IFS=$'\t' read -r build_id log_url <<<"$submitted"
  [[ -n "$build_id" ]] || die "gcloud did not return a build id (got '$submitted')"
  echo "vertex_ai: build $build_id; log: $log_url" >&2
  local status detail status_detail
  while :; do
    IFS=$'\t' read -r status detail status_detail < <(gcloud builds describe "$build_id" --region="$region" \
      --project="$project" --format='value(status,failureInfo.detail,statusDetail)' 2>"$err") ||
      true
    [[ -n "$status" ]] || die "cannot read the state of build $build_id: $(gcloud_error "$err")"
    case "$status" in
      SUCCESS) break ;;
      QUEUED | PENDING | WORKING)
        echo "vertex_ai: build $build_id $status, $(elapsed "$start")" >&2
        sleep "$poll_seconds" ;;
      *)
        detail=${detail:-$status_detail}
        die "the build of $image ended $status after $(elapsed "$start")${detail:+: $detail} (log: $log_url)" ;;
    esac
  done
  echo "vertex_ai: built $image in $(elapsed "$start") (Cloud Build $build_id)" >&2
}

# One worker pool of the job spec, as JSON: REPLICAS, then the container's
# arguments (the trainer's flags).
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
      "containerSpec": {
        "imageUri": $(json_string "$image"),
        "args": [$joined]
      }
    }
POOL
}

submit() {
  local strategy default_config
  strategy_for "$kind" "$workers"
  local config=${CONFIG:-$default_config}
  local job_name=${JOB_NAME:-masked-attention-$(date +%Y%m%d-%H%M%S)}
  local trainer_args=("--config=$config" "--strategy=$strategy")
  [[ "$strategy" == tpu ]] && trainer_args+=(--tpu=local)
  trainer_args+=("--data_dir=$DATA_DIR" "$@")
  if [[ -n "${IMAGE:-}" ]]; then
    image=$IMAGE
  else
    ensure_image "$kind"
  fi
  echo "vertex_ai: PROJECT=$project REGION=$region MACHINE_TYPE=$machine_type" \
    "ACCELERATOR=${accelerator_type:-none}${accelerator_type:+ x$accelerator_count}" \
    "WORKERS=$workers${tpu_topology:+ TPU_TOPOLOGY=$tpu_topology} IMAGE=$image" >&2

  # The job spec (JSON is YAML): the chief pool, then the workers' pool. The
  # trainer finds its output directories in AIP_MODEL_DIR,
  # AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR, which Vertex AI sets from
  # baseOutputDirectory.
  local work_dir
  make_temp_dir work_dir
  local spec=$work_dir/job.yaml err=$work_dir/gcloud.err pools
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
    --display-name="$job_name" --config="$spec" --format='value(name)' 2>"$err") ||
    die "Vertex AI refused the job: $(gcloud_error "$err")"
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

# Settings first: a mistake is one line before any gcloud call.
case "$subcommand" in
  submit)
    submit_checks
    [[ -n "${IMAGE:-}" ]] || build_checks ;;
  build)
    case "${1:-}" in
      cpu | gpu | tpu) ;;
      '') machine_checks ;;
      *) die "unknown image variant '$1': cpu, gpu or tpu" ;;
    esac
    build_checks ;;
esac
require_gcloud
location=(--region="$region" --project="$project")

cmd_build() {
  local variant=${1:-$kind}
  ensure_image "$variant"
  echo "image: $image"
}

cmd_submit() {
  submit "$@"
}

cmd_status() {
  local work_dir
  make_temp_dir work_dir
  local err=$work_dir/gcloud.err state message
  if [[ "$dry_run" == "1" ]]; then
    run gcloud ai custom-jobs describe "$1" "${location[@]}" --format='value(state,error.message)'
    return
  fi
  IFS=$'\t' read -r state message < <(gcloud ai custom-jobs describe "$1" "${location[@]}" \
    --format='value(state,error.message)' 2>"$err" | tr '\n' ' ') || true
  [[ -n "$state" ]] || die "cannot read job $1: $(gcloud_error "$err")"
  message=$(sed -E 's/ +$//' <<<"$message")
  echo "$state${message:+: $message}"
}

cmd_logs() {
  run gcloud ai custom-jobs stream-logs "$1" "${location[@]}"
}

cmd_cancel() {
  run gcloud ai custom-jobs cancel "$1" "${location[@]}"
}

run_subcommand "$@"
