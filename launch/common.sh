#!/usr/bin/env bash
# Shared by the launch scripts (sourced, not run): DRY_RUN, errors, checks.

# Runs a command, or with DRY_RUN=1 prints it (shell-quoted) instead.
run() {
  if [[ "${DRY_RUN:-0}" == "1" ]]; then
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

# Number of NVIDIA GPUs visible (0 without nvidia-smi or a driver).
count_gpus() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
  else
    echo 0
  fi
}

# Checks that gcloud is installed and authenticated (skipped with DRY_RUN=1),
# and sets `project` from PROJECT or gcloud's configuration.
require_gcloud() {
  if [[ "${DRY_RUN:-0}" != "1" ]]; then
    command -v gcloud >/dev/null 2>&1 ||
      die "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"
    if [[ -z "$(gcloud auth list --filter=status:ACTIVE --format='value(account)' 2>/dev/null)" ]]; then
      die "gcloud is not authenticated: run \`gcloud auth login\`"
    fi
  fi
  if [[ -n "${PROJECT:-}" ]]; then
    project=$PROJECT
  elif [[ "${DRY_RUN:-0}" == "1" ]]; then
    project="PROJECT"
  else
    project=$(gcloud config get-value project 2>/dev/null || true)
    [[ -n "$project" ]] || die "no project: set PROJECT or run \`gcloud config set project PROJECT\`"
  fi
}

# Writes the package (setup.py, README.md, trainer/, configs/ of the git HEAD
# of REPO, as pip installs it) to OUT_DIR and prints the archive's path. Only
# committed files ship: uncommitted changes get a warning.
build_package() {
  local repo=$1 out_dir=$2 commit name
  git -C "$repo" rev-parse --git-dir >/dev/null 2>&1 ||
    die "$repo is not a git checkout: the package is built from its HEAD (git archive)"
  commit=$(git -C "$repo" rev-parse --short=12 HEAD)
  if [[ -n "$(git -C "$repo" status --porcelain -- setup.py README.md trainer configs)" ]]; then
    warn "uncommitted changes in $repo are not shipped: the package is HEAD ($commit)"
  fi
  name=masked-attention-trainer-$commit.tar.gz
  git -C "$repo" archive --format=tar.gz --prefix=masked-attention-trainer/ \
    -o "$out_dir/$name" HEAD setup.py README.md trainer configs
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
