#!/usr/bin/env bash
# Runs the trainer as a Vertex AI custom job from a container image of this
# repository (launch/Dockerfile, built by Cloud Build into Artifact Registry:
# no local Docker), and follows, inspects or cancels it.
#
#   DATA_DIR=gs://BUCKET/arith MODEL_DIR=gs://BUCKET/runs/v1 \
#     launch/vertex_ai.sh submit       # builds the image first if needed
#   launch/vertex_ai.sh build gpu      # or build an image ahead of time
#   launch/vertex_ai.sh tune study.txt   # a hyperparameter tuning job
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
  tune STUDY [flags]
                   create a hyperparameter tuning job: its trials are the
                   job submit would create (same image, machines and flags),
                   each given the study's parameters as --config.* flags;
                   STUDY is a file of lines (# comments):
                     metric accuracy maximize     (or: metric loss minimize)
                     max_trials 12
                     parallel_trials 3
                     param config.train.learning_rate double 1e-4 1e-2 log
                     param config.train.warmup_steps integer 0 500
                     param config.model.hidden_size categorical 12,15,24
                     param config.train.min_learning_rate_ratio discrete 0,0.01,0.1
                     algorithm random             (optional: grid, random;
                                                   default Vertex AI's Bayesian)
                   scales: linear (default), log, reverse_log. Each trial
                   writes under MODEL_DIR/TRIAL_ID/; prints the job id
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
  DATA_DIR           submit, tune: gs:// data set (required)
  MODEL_DIR          submit, tune: gs:// output directory of the job (required)
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
  SPOT               submit, tune: 0; 1 runs the job on Spot VMs (cheaper, can
                     be preempted: the trainer checkpoints on SIGTERM)
  FLEX_START         submit, tune: 0; 1 queues the job with Dynamic Workload
                     Scheduler until all its GPUs are free at once (GPU
                     machines only, TIMEOUT at most 7d; not with SPOT)
  MAX_WAIT           with FLEX_START=1: how long the job may wait for its
                     machines (Vertex AI's default 1 day; 0: no limit)
  TIMEOUT            submit, tune: the longest the job (each trial) may run
                     (Vertex AI's default 7 days)
                     TIMEOUT and MAX_WAIT: seconds, or a number with s, m, h
                     or d (90m, 24h, 7d)
  RESTART_ON_WORKER_RESTART
                     submit, tune: 0; 1 restarts the whole job when one of
                     its machines restarts (e.g. a preempted Spot VM): every
                     worker then resumes from MODEL_DIR/checkpoints
  DRY_RUN            1: print every command (the build config and the job
                     spec too), run nothing; the image counts as missing
USAGE
}

select_subcommand "${1:-}" build submit tune status logs cancel
shift
case "$subcommand" in
  build)
    [[ $# -le 1 ]] || die "usage: launch/vertex_ai.sh build [cpu|gpu|tpu]" ;;
  submit) ;;
  tune)
    [[ $# -ge 1 && "$1" != -* ]] || die "usage: launch/vertex_ai.sh tune STUDY [trainer flags]" ;;
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
spot=${SPOT:-0}
flex_start=${FLEX_START:-0}
max_wait=${MAX_WAIT:-}
timeout=${TIMEOUT:-}
restart_on_worker_restart=${RESTART_ON_WORKER_RESTART:-0}

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

# Prints the seconds of duration VALUE of variable NAME: a whole number of
# seconds, or one with a unit s, m, h or d (90m, 24h, 7d); dies otherwise.
duration_seconds() {
  local name=$1 value=$2 number unit
  [[ "$value" =~ ^([0-9]{1,9})([smhd]?)$ ]] ||
    die "$name must be a duration: seconds or a number with s, m, h or d (e.g. 86400, 90m, 24h, 7d), got '$value'"
  number=$((10#${BASH_REMATCH[1]}))
  unit=${BASH_REMATCH[2]}
  case "$unit" in
    m) number=$((number * 60)) ;;
    h) number=$((number * 3600)) ;;
    d) number=$((number * 86400)) ;;
  esac
  echo "$number"
}

# Sets `scheduling` to the job spec's "scheduling" entry (JSON, with its
# leading comma) from SPOT, FLEX_START, MAX_WAIT, TIMEOUT and
# RESTART_ON_WORKER_RESTART; empty when none is set. Durations go as the
# API's Duration strings ("86400s").
scheduling_checks() {
  local name entries=() seconds
  for name in SPOT FLEX_START RESTART_ON_WORKER_RESTART; do
    case "${!name:-0}" in
      0 | 1) ;;
      *) die "$name must be 0 or 1, got '${!name}'" ;;
    esac
  done
  if [[ "$spot" == 1 && "$flex_start" == 1 ]]; then
    die "SPOT=1 and FLEX_START=1 are two scheduling strategies: choose one"
  fi
  if [[ "$flex_start" == 1 && "$kind" != gpu ]]; then
    die "FLEX_START=1 queues GPU machines (Dynamic Workload Scheduler): set ACCELERATOR_TYPE, or drop FLEX_START"
  fi
  [[ "$spot" != 1 ]] || entries+=('"strategy": "SPOT"')
  [[ "$flex_start" != 1 ]] || entries+=('"strategy": "FLEX_START"')
  if [[ -n "$max_wait" ]]; then
    [[ "$flex_start" == 1 ]] ||
      die "MAX_WAIT=$max_wait is the wait for FLEX_START=1 machines: set FLEX_START=1, or drop MAX_WAIT"
    seconds=$(duration_seconds MAX_WAIT "$max_wait") || exit 2
    entries+=("\"maxWaitDuration\": \"${seconds}s\"")
  fi
  if [[ -n "$timeout" ]]; then
    seconds=$(duration_seconds TIMEOUT "$timeout") || exit 2
    ((seconds > 0)) || die "TIMEOUT must be above 0 (unset: Vertex AI's 7 days), got '$timeout'"
    if [[ "$flex_start" == 1 ]] && ((seconds > 7 * 86400)); then
      die "TIMEOUT=$timeout: a FLEX_START=1 job runs at most 7d; lower TIMEOUT"
    fi
    entries+=("\"timeout\": \"${seconds}s\"")
  fi
  [[ "$restart_on_worker_restart" != 1 ]] || entries+=('"restartJobOnWorkerRestart": true')
  scheduling=''
  if ((${#entries[@]})); then
    local joined
    joined=$(printf ', %s' "${entries[@]}")
    scheduling=",
  \"scheduling\": {${joined:2}}"
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
  scheduling_checks
  # The machine, its accelerator and the image (IMAGE, or the variant
  # `kind` picks), through the table of what runs where, before any call.
  preflight vertex --machine_type="$machine_type" \
    ${accelerator_type:+--accelerator_type="$accelerator_type"} \
    --image="${IMAGE:-$kind}"
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

# Sets `pools` to the job's worker pools (JSON: the chief pool, then the
# workers'), running the image (built first when missing, or IMAGE) with
# the trainer's flags: --config, --strategy, --data_dir, then the arguments.
job_pools() {
  local strategy default_config
  strategy_for "$kind" "$workers"
  local config=${CONFIG:-$default_config}
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
  pools=$(worker_pool 1 "${trainer_args[@]}")
  if ((workers > 1)); then
    pools+=","$'\n'$(worker_pool $((workers - 1)) "${trainer_args[@]}")
  fi
}

submit() {
  local pools
  job_pools "$@"
  # The job spec (JSON is YAML): the chief pool, then the workers' pool. The
  # trainer finds its output directories in AIP_MODEL_DIR,
  # AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR, which Vertex AI sets from
  # baseOutputDirectory.
  local job_name=${JOB_NAME:-masked-attention-$(date +%Y%m%d-%H%M%S)}
  local work_dir
  make_temp_dir work_dir
  local spec=$work_dir/job.yaml err=$work_dir/gcloud.err
  cat >"$spec" <<SPEC
{
  "workerPoolSpecs": [
$pools
  ],
  "baseOutputDirectory": {"outputUriPrefix": $(json_string "$MODEL_DIR")}$scheduling
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

# A number of a study (a decimal, with an exponent or not), as JSON; dies
# naming WHERE (FILE:LINE) and WHAT otherwise.
study_number() {
  local value=$1 where=$2 what=$3
  [[ "$value" =~ ^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$ ]] ||
    die "$where: $what must be a number, got '$value'"
  # %.15g: a JSON number (1e-4 becomes 0.0001), every decimal digit a double
  # keeps; an exponent gets a mantissa with a dot and a signed exponent
  # (1e-10 becomes 1.0e-10): gcloud reads the file as YAML 1.1, where 1e-10
  # is not a number (measured: ruamel warns, MantissaNoDotYAML1_1Warning).
  local number
  number=$(LC_ALL=C printf '%.15g' "$value")
  [[ "$number" != *e* || "$number" == *.* ]] || number=${number/e/.0e}
  echo "$number"
}

# Reads the study file $1 (see usage) into `study` (the JSON of a StudySpec),
# `max_trials` and `parallel_trials`; the trainer flags after it ($2...) may
# not set a parameter of the study (Vertex AI adds its own value of each to
# the same command line). Every mistake is one line naming the file's line.
# The parameters are config fields: the ones docs/configuration.md lists.
read_study() {
  local file=$1 line number=0 word rest words
  shift
  [[ -f "$file" && -r "$file" ]] || die "study file '$file' not found"
  local metric='' algorithm='' parameters=() ids=' ' kinds=' '
  max_trials='' parallel_trials=''
  local fields=$repo_root/docs/configuration.md
  while IFS= read -r line || [[ -n "$line" ]]; do
    number=$((number + 1))
    line=${line%%#*}
    read -r -a words <<<"$line"
    ((${#words[@]})) || continue
    local where="$file:$number" key=${words[0]}
    case "$key" in
      metric)
        [[ -z "$metric" ]] || die "$where: a second metric (a study here has one)"
        ((${#words[@]} == 3)) || die "$where: usage: metric accuracy|loss maximize|minimize"
        [[ "${words[1]}" == accuracy || "${words[1]}" == loss ]] ||
          die "$where: the metric is accuracy or loss (what each evaluation reports), got '${words[1]}'"
        case "${words[2]}" in
          maximize | minimize) ;;
          *) die "$where: the goal is maximize or minimize, got '${words[2]}'" ;;
        esac
        metric="{\"metricId\": \"${words[1]}\", \"goal\": \"${words[2]^^}\"}" ;;
      max_trials | parallel_trials)
        ((${#words[@]} == 2)) && [[ "${words[1]}" =~ ^[1-9][0-9]{0,5}$ ]] ||
          die "$where: usage: $key N (a positive number of trials)"
        printf -v "$key" '%s' "${words[1]}" ;;
      algorithm)
        ((${#words[@]} == 2)) || die "$where: usage: algorithm grid|random"
        case "${words[1]}" in
          grid) algorithm=GRID_SEARCH ;;
          random) algorithm=RANDOM_SEARCH ;;
          *) die "$where: the algorithm is grid or random (or no line: Vertex AI's default), got '${words[1]}'" ;;
        esac ;;
      param)
        parameters+=("$(study_parameter "$where" "${words[@]:1}")") || exit 2
        [[ "$ids" != *" ${words[1]} "* ]] || die "$where: ${words[1]} is a parameter twice"
        ids+="${words[1]} "
        kinds+="${words[2]} " ;;
      *) die "$where: unknown line '$key' (metric, max_trials, parallel_trials, param, algorithm)" ;;
    esac
  done <"$file"
  [[ -n "$metric" ]] || die "$file: no metric line (e.g. metric accuracy maximize)"
  ((${#parameters[@]})) || die "$file: no param line: nothing to tune"
  [[ -n "$max_trials" ]] || die "$file: no max_trials line (the number of trials)"
  parallel_trials=${parallel_trials:-1}
  ((parallel_trials <= max_trials)) ||
    die "$file: parallel_trials $parallel_trials is more than max_trials $max_trials"
  if [[ "$algorithm" == GRID_SEARCH && "$kinds" == *" double "* ]]; then
    die "$file: grid search takes integer, discrete and categorical parameters only, not double ones"
  fi
  for word in "$@"; do
    rest=${word#--}
    rest=${rest%%=*}
    [[ "$ids" != *" $rest "* ]] ||
      die "$word: $rest is a parameter of the study in $file (each trial gets its own value)"
  done
  [[ -f "$fields" ]] || fields=''
  for word in $ids; do
    [[ -z "$fields" ]] || grep -qF "| \`$word\` |" "$fields" ||
      die "$file: $word is not a config field (every field: docs/configuration.md)"
  done
  local joined
  joined=$(IFS=,; echo "${parameters[*]}")
  study="{\"metrics\": [$metric], \"parameters\": [$joined]${algorithm:+, \"algorithm\": \"$algorithm\"}}"
}

# One parameter of a study as JSON: WHERE NAME TYPE VALUES... [SCALE].
study_parameter() {
  local where=$1 name=${2:-} type=${3:-} scale_type='' low high values=() value json
  shift 3 2>/dev/null || die "$where: usage: param config.SECTION.FIELD double|integer|discrete|categorical ..."
  [[ "$name" =~ ^config\.[a-z0-9_]+(\.[a-z0-9_]+)+$ ]] ||
    die "$where: a parameter is a config field, e.g. config.train.learning_rate, got '$name'"
  case "$type" in
    double | integer)
      (($# == 2 || $# == 3)) || die "$where: usage: param $name $type MIN MAX [linear|log|reverse_log]"
      low=$(study_number "$1" "$where" "MIN") || exit 2
      high=$(study_number "$2" "$where" "MAX") || exit 2
      if [[ "$type" == integer ]]; then
        [[ "$1" =~ ^[+-]?[0-9]+$ && "$2" =~ ^[+-]?[0-9]+$ ]] ||
          die "$where: an integer parameter's MIN and MAX are integers, got '$1' '$2'"
      fi
      awk -v a="$low" -v b="$high" 'BEGIN { exit !(a < b) }' ||
        die "$where: MIN $1 must be below MAX $2"
      json="\"${type}ValueSpec\": {\"minValue\": $low, \"maxValue\": $high}"
      shift 2 ;;
    discrete | categorical)
      local scales=''
      [[ "$type" == categorical ]] || scales=' [linear|log|reverse_log]'
      (($# == 1 || $# == 2)) || die "$where: usage: param $name $type V1,V2,...$scales"
      IFS=, read -r -a values <<<"$1"
      ((${#values[@]})) || die "$where: no values"
      local listed=()
      for value in "${values[@]}"; do
        if [[ "$type" == discrete ]]; then
          listed+=("$(study_number "$value" "$where" "each value")") || exit 2
        else
          [[ -n "$value" ]] || die "$where: an empty value in '$1'"
          listed+=("$(json_string "$value")")
        fi
      done
      json="\"${type}ValueSpec\": {\"values\": [$(IFS=,; echo "${listed[*]}")]}"
      shift ;;
    *) die "$where: the type is double, integer, discrete or categorical, got '$type'" ;;
  esac
  if (($#)); then
    [[ "$type" != categorical ]] || die "$where: a categorical parameter has no scale"
    case "$1" in
      linear) scale_type=UNIT_LINEAR_SCALE ;;
      log) scale_type=UNIT_LOG_SCALE ;;
      reverse_log) scale_type=UNIT_REVERSE_LOG_SCALE ;;
      *) die "$where: the scale is linear, log or reverse_log, got '$1'" ;;
    esac
    if [[ "$scale_type" != UNIT_LINEAR_SCALE && "$type" != discrete ]]; then
      awk -v a="$low" 'BEGIN { exit !(a > 0) }' ||
        die "$where: a $1 scale needs MIN above 0, got $low"
    fi
  elif [[ "$type" != categorical ]]; then
    scale_type=UNIT_LINEAR_SCALE
  fi
  echo "{\"parameterId\": \"$name\", $json${scale_type:+, \"scaleType\": \"$scale_type\"}}"
}

tune() {
  local study_file=$1 pools
  shift
  job_pools "$@"
  local job_name=${JOB_NAME:-masked-attention-tune-$(date +%Y%m%d-%H%M%S)}
  local work_dir
  make_temp_dir work_dir
  local spec=$work_dir/tuning_job.yaml err=$work_dir/gcloud.err
  # A HyperparameterTuningJob (JSON is YAML): every trial is a custom job
  # of trialJobSpec, its command line the pools' args and then
  # --PARAMETER=VALUE for each parameter of the study; Vertex AI sets each
  # trial's AIP_* directories under MODEL_DIR/TRIAL_ID/.
  cat >"$spec" <<SPEC
{
  "studySpec": $study,
  "maxTrialCount": $max_trials,
  "parallelTrialCount": $parallel_trials,
  "trialJobSpec": {
    "workerPoolSpecs": [
$pools
    ],
    "baseOutputDirectory": {"outputUriPrefix": $(json_string "$MODEL_DIR")}${scheduling//$'\n'/$'\n  '}
  }
}
SPEC
  if [[ "$dry_run" == "1" ]]; then
    echo "# $spec (from $study_file):"
    sed 's/^/# /' "$spec"
  fi
  local name
  name=$(run gcloud ai hp-tuning-jobs create "${location[@]}" \
    --display-name="$job_name" --config="$spec" --format='value(name)' 2>"$err") ||
    die "Vertex AI refused the tuning job: $(gcloud_error "$err")"
  if [[ "$dry_run" == "1" ]]; then
    echo "$name"
    return
  fi
  local job_id=${name##*/}
  [[ "$job_id" =~ ^[0-9]+$ ]] || die "gcloud did not return a tuning job name (got '$name')"
  echo "tuning job: $job_id ($max_trials trials, $parallel_trials at a time)"
  echo "next: gcloud ai hp-tuning-jobs describe $job_id ${location[*]}; each trial's outputs in ${MODEL_DIR%/}/TRIAL_ID/{model,checkpoints,logs}"
}

# Settings first: a mistake is one line before any gcloud call.
case "$subcommand" in
  submit)
    submit_checks
    [[ -n "${IMAGE:-}" ]] || build_checks ;;
  tune)
    read_study "$@"
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

cmd_tune() {
  tune "$@"
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
