#!/usr/bin/env bash
# Shared by the launch scripts (sourced, not run): DRY_RUN, errors,
# subcommands, checks, temporary directories, the strategy for a machine.

# 1: print commands instead of running them (DRY_RUN=1).
dry_run=${DRY_RUN:-0}
# The repository the scripts belong to (what REPO_DIR defaults to).
# shellcheck disable=SC2034
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The script as its messages name it, e.g. launch/tpu_vm.sh.
script_name=launch/${0##*/}

# Runs a command, or with DRY_RUN=1 prints it (shell-quoted) instead.
run() {
  if [[ "$dry_run" == "1" ]]; then
    printf '%q' "$1"
    shift
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# Prints "error: ..." on stderr and exits with status 2.
die() {
  echo "error: $*" >&2
  exit 2
}

warn() {
  echo "warning: $*" >&2
}

# Cleanup at exit. The EXIT trap is this file's alone (a script setting its
# own would drop the temporary directories): a script adds a step with
# `at_exit FUNCTION`. The exit status stays the script's.
exit_steps=()
temp_dirs=()
run_exit_steps() {
  local step
  for step in "${exit_steps[@]}"; do
    "$step" || true
  done
  if ((${#temp_dirs[@]})); then
    rm -rf -- "${temp_dirs[@]}" || true
  fi
}
trap run_exit_steps EXIT

at_exit() {
  exit_steps+=("$1")
}

# Sets the variable named $1 to a new temporary directory, removed when the
# script exits (not in a command substitution: the list would be lost).
make_temp_dir() {
  local dir
  dir=$(mktemp -d "${TMPDIR:-/tmp}/launch.XXXXXX") ||
    die "cannot create a temporary directory in ${TMPDIR:-/tmp}"
  temp_dirs+=("$dir")
  printf -v "$1" '%s' "$dir"
}

# For a script with subcommands: `select_subcommand "${1:-}" NAME...` sets
# `subcommand` to its first argument when that is one of the NAMEs. Empty:
# the usage (the script's `usage` function) and exit 2; -h or --help: the
# usage and exit 0; any other word: one error line and exit 2. Once the
# script has shifted it away and made its checks, `run_subcommand "$@"`
# calls the function cmd_<subcommand> with the arguments left.
select_subcommand() {
  local word=$1 name
  shift
  if [[ -z "$word" || "$word" == "-h" || "$word" == "--help" ]]; then
    usage
    [[ -n "$word" ]] && exit 0 || exit 2
  fi
  for name in "$@"; do
    if [[ "$word" == "$name" ]]; then
      subcommand=$word
      return 0
    fi
  done
  die "unknown subcommand '$word': see $script_name --help"
}

run_subcommand() {
  "cmd_$subcommand" "$@"
}

# Refuses a value that is not a gs:// URL with a bucket: NAME VALUE WHY,
# WHY saying who cannot read a local path.
require_gs() {
  local name=$1 value=$2 why=$3
  [[ "$value" == gs://?* ]] ||
    die "$name must be a gs:// URL ($why), got '$value'"
}

# The trainer's --strategy for a kind of machine and a number of workers
# (machines, or processes), in `strategy`, and its default --config in
# `default_config`: the one place that pairs them.
#   tpu      a TPU VM or slice, driven as one (any number of hosts)  tpu
#   gpu      every GPU of a machine                                  mirrored
#   one_gpu  one GPU                                                 one_device
#   cpu      the CPU                                                 default
# Several workers of GPU or CPU machines: multi_worker_mirrored (the config
# stays the machine's).
# shellcheck disable=SC2034  # strategy, default_config: the caller's
strategy_for() {
  local kind=$1 workers=$2
  case "$kind" in
    tpu) strategy=tpu; default_config=configs/tpu.py ;;
    gpu) strategy=mirrored; default_config=configs/gpu.py ;;
    one_gpu) strategy=one_device; default_config=configs/gpu.py ;;
    cpu) strategy=default; default_config=configs/default.py ;;
    *) die "strategy_for: unknown machine kind '$kind' (tpu, gpu, one_gpu, cpu)" ;;
  esac
  if [[ "$kind" != tpu ]] && ((workers > 1)); then
    strategy=multi_worker_mirrored
  fi
}

# The GPUs a script may hand the trainer, in the array `gpus`: the entries
# of CUDA_VISIBLE_DEVICES when the caller set it (a scheduler's allocation),
# else the indices of the NVIDIA GPUs nvidia-smi lists; none without
# nvidia-smi or a driver. `gpus_none` says why there are none; `gpus_set`
# is " (CUDA_VISIBLE_DEVICES=...)" for the caller's set, for messages.
# Exports CUDA_DEVICE_ORDER=PCI_BUS_ID: otherwise CUDA numbers the devices
# fastest first, not in nvidia-smi's (PCI bus) order.
# shellcheck disable=SC2034  # gpus, gpus_none, gpus_set: the caller's
visible_gpus() {
  local count=0
  if command -v nvidia-smi >/dev/null 2>&1; then
    count=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  fi
  export CUDA_DEVICE_ORDER=PCI_BUS_ID
  gpus=()
  gpus_none="nvidia-smi finds none"
  gpus_set=""
  if ((count > 0)) && [[ -v CUDA_VISIBLE_DEVICES ]]; then
    IFS=, read -ra gpus <<<"$CUDA_VISIBLE_DEVICES"
    gpus_none="CUDA_VISIBLE_DEVICES is empty"
    gpus_set=" (CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES)"
  elif ((count > 0)); then
    mapfile -t gpus < <(seq 0 $((count - 1)))
  fi
}

# Checks that gcloud is installed and authenticated (skipped with DRY_RUN=1),
# and sets `project` from PROJECT or gcloud's configuration.
require_gcloud() {
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
}

# Asks the table of what runs where (trainer/cloud/preflight.py) whether a
# TPU slice or a Vertex AI machine and image can run the trainer, before any
# cloud call: its one line `error: ...` and exit 2 when they cannot. It runs
# on this machine with the standard library alone (python3 -S: no
# TensorFlow, no site-packages), from this checkout.
# Its flags' names in the line become the launchers' variables.
preflight() {
  local message
  if ! command -v python3 >/dev/null 2>&1; then
    warn "python3 not found: what runs where (trainer/cloud/preflight.py) is not checked"
    return
  fi
  if message=$(PYTHONPATH="$repo_root" python3 -S -m trainer.cloud.preflight "$@" 2>&1); then
    return
  fi
  sed -e 's/--accelerator_type/ACCELERATOR_TYPE/g; s/--runtime/RUNTIME_VERSION/g' \
    -e 's/--machine_type/MACHINE_TYPE/g; s/--api/API/g; s/--image/IMAGE/g' <<<"$message" >&2
  exit 2
}

# Writes the package (setup.py, README.md, LICENSE, trainer/, configs/ of the git HEAD
# of REPO, as pip installs it) to OUT_DIR and prints the archive's path. Only
# committed files ship: uncommitted changes get a warning.
build_package() {
  local repo=$1 out_dir=$2 commit name
  git -C "$repo" rev-parse --git-dir >/dev/null 2>&1 ||
    die "$repo is not a git checkout: the package is built from its HEAD (git archive)"
  commit=$(git -C "$repo" rev-parse --short=12 HEAD)
  if [[ -n "$(git -C "$repo" status --porcelain -- setup.py README.md LICENSE trainer configs)" ]]; then
    warn "uncommitted changes in $repo are not shipped: the package is HEAD ($commit)"
  fi
  name=masked-attention-trainer-$commit.tar.gz
  git -C "$repo" archive --format=tar.gz --prefix=masked-attention-trainer/ \
    -o "$out_dir/$name" HEAD setup.py README.md LICENSE trainer configs
  echo "$out_dir/$name"
}

# Prints its argument as a JSON string (quotes, backslashes, control
# characters escaped).
json_string() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/\\t}
  s=${s//$'\r'/\\r}
  printf '"%s"' "$s"
}
