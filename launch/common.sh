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
