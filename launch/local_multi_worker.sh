#!/usr/bin/env bash
# Starts N MultiWorkerMirroredStrategy workers of the trainer on this machine,
# each with its own TF_CONFIG on localhost ports, to try multi-worker training
# before running it on several machines.
#
#   launch/local_multi_worker.sh 2 --config=configs/smoke.py --model_dir=/tmp/mw
#
# Worker 0 (the chief) prints to the console; every worker's output is also in
# $LOG_DIR/worker-<i>.log. The script ends when every worker has ended:
# - a worker fails: the others get SIGTERM (SIGKILL 10 s later: without
#   that worker they can neither train nor save), and the script exits with
#   the first failed worker's status;
# - Ctrl-C or SIGTERM: every worker gets SIGTERM, saves a checkpoint at the
#   end of its host loop and exits; the script waits for them (SIGKILL 60 s
#   later), then exits 130 (Ctrl-C) or 143 (SIGTERM). A second Ctrl-C kills
#   them at once (SIGKILL).
# The ports stay reserved from the start (a process binds them with
# SO_REUSEPORT until the script ends; the trainers bind them too because of
# TF_GRPC_REUSE_PORT=1), so no other program can take one in between.
set -euo pipefail

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

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

If a worker fails, the others are stopped and the script exits with the
failed worker's status. Ctrl-C (or SIGTERM) stops every worker with a
checkpoint, waits for them, and exits 130 (143); Ctrl-C again kills them.
EOF
}

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  usage
  [[ $# -ge 1 ]] && exit 0 || exit 2
fi
num_workers=$1
shift
[[ "$num_workers" =~ ^[1-9][0-9]*$ ]] ||
  die "N must be a positive integer, got '$num_workers'"
# `wait -n -p` (which worker ended) is new in bash 5.1.
((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 501)) ||
  die "bash 5.1 or newer is needed, this is $BASH_VERSION"
python=${PYTHON:-python3}
command -v "$python" >/dev/null 2>&1 ||
  die "PYTHON=$python is not an executable on PATH"
# How long stopped workers get to end before SIGKILL: after a signal, time
# to finish a host loop and save; after a failure, the others cannot (a
# collective needs every worker), and TensorFlow ignores SIGTERM while a
# worker waits for the others to start (measured: 2.21).
signal_timeout_s=60
failure_timeout_s=10

# Holds N free ports (bound with SO_REUSEPORT, not listening) and prints
# them, until the script ends or sends SIGTERM. Another program cannot bind
# them; a trainer with TF_GRPC_REUSE_PORT=1 (gRPC binding with SO_REUSEPORT,
# as the same user) can. Without SO_REUSEADDR here: with it, a program
# using SO_REUSEADDR could bind a port too.
port_holder=$(cat <<'EOF'
import os, signal, socket, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the script decides when
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
  s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
  s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets), flush=True)
os.close(1)
parent = os.getppid()
while os.getppid() == parent:  # the script is gone (even by SIGKILL)
  time.sleep(1)
EOF
)
exec {ports_fd}< <(exec "$python" -c "$port_holder" "$num_workers")
holder_pid=$!

pids=()        # trainer pid of worker i
running=()     # pids not waited for yet
tee_pid=""     # copies worker 0's output to its log
deadline_pid=""  # a `sleep` that ends when stopped workers get SIGKILL
stop_timeout_s=""  # its length
stop_signal=""   # INT or TERM, once the script got one

on_exit() {
  # Normally nothing is left but the holder; after an error in this script
  # the workers get SIGTERM rather than outliving it unnoticed.
  if ((${#running[@]})); then
    kill -TERM "${running[@]}" 2>/dev/null || true
  fi
  kill -TERM "$holder_pid" ${deadline_pid:+"$deadline_pid"} 2>/dev/null ||
    true
  wait "$holder_pid" 2>/dev/null || true  # no zombie left to init
}
at_exit on_exit

ports=""
read -r -u "$ports_fd" ports || true
exec {ports_fd}<&-
read -r -a port_list <<<"$ports"
((${#port_list[@]} == num_workers)) ||
  die "could not reserve $num_workers ports on 127.0.0.1 with $python"
workers=""
for port in "${port_list[@]}"; do
  workers+="${workers:+, }\"127.0.0.1:$port\""
done

# SIGTERM to every running worker (once); they get $1 seconds to end.
stop_workers() {
  [[ -z "$stop_timeout_s" ]] || return 0
  stop_timeout_s=$1
  if ((${#running[@]})); then
    kill -TERM "${running[@]}" 2>/dev/null || true
  fi
  sleep "$stop_timeout_s" &
  deadline_pid=$!
}

on_signal() {
  if [[ -n "$stop_signal" ]]; then
    if [[ "$1" == INT ]] && ((${#running[@]})); then
      echo "interrupted again: killing the workers (SIGKILL), without" \
        "saving" >&2
      kill -KILL "${running[@]}" 2>/dev/null || true
    fi
    return 0
  fi
  stop_signal=$1
  local again=""
  [[ "$1" != INT ]] || again="; Ctrl-C again: kill them"
  echo "SIG$1: stopping the workers (SIGTERM): each saves a checkpoint at" \
    "the end of its host loop$again" >&2
  stop_workers "$signal_timeout_s"
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

if [[ "$dry_run" == "1" ]]; then
  log_dir="(none: DRY_RUN)"
else
  log_dir=${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/multi_worker.XXXXXX")}
  mkdir -p "$log_dir"
fi
echo "workers: $num_workers on 127.0.0.1 ports ${port_list[*]}; logs in $log_dir" >&2

for ((i = 0; i < num_workers; i++)); do
  [[ -z "$stop_signal" ]] || break  # the trap stopped those started
  tf_config="{\"cluster\": {\"worker\": [$workers]}, \"task\": {\"type\": \"worker\", \"index\": $i}}"
  environment=("TF_CONFIG=$tf_config" TF_GRPC_REUSE_PORT=1)
  command=("$python" -m trainer.task --strategy=multi_worker_mirrored "$@")
  if [[ "$dry_run" == "1" ]]; then
    run env "${environment[@]}" "${command[@]}"
    continue
  fi
  log=$log_dir/worker-$i.log
  if ((i == 0)); then
    # tee is started first so that $! below is the trainer itself. The
    # trainer holds the only write end of tee's pipe once this script closes
    # its own, so tee ends right after the trainer; -i: Ctrl-C in the
    # terminal reaches tee too, which must outlive the chief's last lines.
    exec {console_fd}> >(exec tee -i "$log")
    tee_pid=$!
    env "${environment[@]}" "${command[@]}" >&"$console_fd" 2>&1 &
    exec {console_fd}>&-
  else
    env "${environment[@]}" "${command[@]}" >"$log" 2>&1 &
  fi
  pids+=($!)
  running+=($!)
done
[[ "$dry_run" == "1" ]] && exit 0

# Wait for every worker. The first failure stops the others (they would
# otherwise notice it themselves 10-30 s later, through TensorFlow's
# coordination service); it is the one reported, not the failures it causes.
failed_index=""
failed_status=0
statuses=()  # exit status of worker i
while ((${#running[@]})); do
  finished=""
  status=0
  # 2>/dev/null: without bash's own line for a worker ended by a signal.
  wait -n -p finished "${running[@]}" ${deadline_pid:+"$deadline_pid"} \
    2>/dev/null || status=$?
  # A signal (its trap ran) leaves `finished` unset.
  [[ -n "${finished:-}" ]] || continue
  if [[ "$finished" == "$deadline_pid" ]]; then
    echo "workers still running ${stop_timeout_s} s after SIGTERM: killing" \
      "them (SIGKILL)" >&2
    kill -KILL "${running[@]}" 2>/dev/null || true
    deadline_pid=""
    continue
  fi
  left=()
  for pid in "${running[@]}"; do
    [[ "$pid" == "$finished" ]] || left+=("$pid")
  done
  running=("${left[@]}")
  for index in "${!pids[@]}"; do
    [[ "${pids[$index]}" == "$finished" ]] && break
  done
  statuses[index]=$status
  if ((status != 0)) && [[ -z "$failed_index" && -z "$stop_signal" ]]; then
    failed_index=$index
    failed_status=$status
    if ((${#running[@]})); then
      echo "worker $index exited with status $status: stopping the other" \
        "workers (SIGTERM)" >&2
    fi
    stop_workers "$failure_timeout_s"
  fi
done
if [[ -n "$deadline_pid" ]]; then
  kill -TERM "$deadline_pid" 2>/dev/null || true
  wait "$deadline_pid" 2>/dev/null || true
  deadline_pid=""
fi
wait "$tee_pid" || true  # worker 0's log and console output are complete

# A failure before a signal is what ended the run: it is reported.
if [[ -n "$failed_index" ]]; then
  last_line=$(tr '\r' '\n' <"$log_dir/worker-$failed_index.log" |
    grep -v '^[[:space:]]*$' | tail -n 1 || true)
  echo "error: worker $failed_index exited with status $failed_status:" \
    "${last_line:-(its log is empty)}" >&2
  echo "logs: $log_dir/worker-<i>.log (worker exit statuses:" \
    "${statuses[*]})" >&2
  exit "$failed_status"
fi
if [[ -n "$stop_signal" ]]; then
  echo "stopped by SIG$stop_signal (worker exit statuses: ${statuses[*]});" \
    "logs in $log_dir" >&2
  [[ "$stop_signal" == INT ]] && exit 130 || exit 143
fi
