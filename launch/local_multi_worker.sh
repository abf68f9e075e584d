#!/usr/bin/env bash
# Starts N MultiWorkerMirroredStrategy workers of the trainer on this machine,
# each with its own TF_CONFIG on free localhost ports, to try multi-worker
# training before running it on several machines.
#
#   launch/local_multi_worker.sh 2 --config=configs/smoke.py --model_dir=/tmp/mw
#
# Worker 0 (the chief) prints to the console; every worker's output is also in
# $LOG_DIR/worker-<i>.log. If a worker fails, the others are stopped and the
# script exits with the failed worker's status. Ctrl-C stops them all.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/local_multi_worker.sh N [trainer flags...]

Starts N workers of `python -m trainer.task --strategy=multi_worker_mirrored`
on 127.0.0.1, each with a TF_CONFIG naming all N and its own index.

Environment:
  PYTHON   Python interpreter (default: python3)
  LOG_DIR  directory for worker-<i>.log (default: a new temporary directory)
  DRY_RUN  1: print each worker's command and TF_CONFIG, run nothing

Every trainer flag is passed to every worker unchanged, e.g. --config,
--data_dir, --model_dir (all workers must see the same data_dir and
model_dir: a local path works here because they share this machine).
EOF
}

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  usage
  [[ $# -ge 1 ]] && exit 0 || exit 2
fi
num_workers=$1
shift
if ! [[ "$num_workers" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: N must be a positive integer, got '$num_workers'" >&2
  exit 2
fi
python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1; then
  echo "error: PYTHON=$python is not an executable on PATH" >&2
  exit 2
fi
dry_run=${DRY_RUN:-0}
if [[ "$dry_run" == "1" ]]; then
  log_dir="(none: DRY_RUN)"
else
  log_dir=${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/multi_worker.XXXXXX")}
  mkdir -p "$log_dir"
fi

# N free ports, all held open together so that none is handed out twice.
ports=$("$python" - "$num_workers" <<'EOF'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
EOF
)
read -r -a port_list <<<"$ports"
workers=""
for port in "${port_list[@]}"; do
  workers+="${workers:+, }\"127.0.0.1:$port\""
done

echo "workers: $num_workers on 127.0.0.1 ports ${port_list[*]}; logs in $log_dir" >&2
pids=()
stop_all() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM

for ((i = 0; i < num_workers; i++)); do
  tf_config="{\"cluster\": {\"worker\": [$workers]}, \"task\": {\"type\": \"worker\", \"index\": $i}}"
  command=("$python" -m trainer.task --strategy=multi_worker_mirrored "$@")
  if [[ "$dry_run" == "1" ]]; then
    printf "TF_CONFIG='%s'" "$tf_config"
    printf ' %q' "${command[@]}"
    printf '\n'
    continue
  fi
  if ((i == 0)); then
    TF_CONFIG=$tf_config "${command[@]}" 2>&1 | tee "$log_dir/worker-$i.log" &
  else
    TF_CONFIG=$tf_config "${command[@]}" >"$log_dir/worker-$i.log" 2>&1 &
  fi
  pids+=($!)
done
[[ "$dry_run" == "1" ]] && exit 0

# Wait for all; the first failure stops the rest (they would otherwise wait
# for it until the collective timeout).
status=0
for ((i = 0; i < num_workers; i++)); do
  finished=""
  wait -n -p finished || status=$?
  if ((status != 0)); then
    for index in "${!pids[@]}"; do
      [[ "${pids[$index]}" == "$finished" ]] && break
    done
    echo "error: worker $index exited with status $status; stopping the" \
      "others (logs in $log_dir)" >&2
    stop_all
    break
  fi
done
wait || true
exit "$status"
