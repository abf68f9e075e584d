#!/usr/bin/env bash
# Creates, sets up, trains on and deletes a Cloud TPU VM with gcloud: through
# the Cloud TPU API (API=tpu, every generation) or, for v5p and v6e, as
# Compute Engine resources (API=compute: an instance, or for a multi-host
# slice a managed instance group with a workload policy).
#
#   PROJECT=my-project launch/tpu_vm.sh create
#   launch/tpu_vm.sh setup
#   DATA_DIR=gs://BUCKET/arith MODEL_DIR=gs://BUCKET/runs/1 launch/tpu_vm.sh train
#   launch/tpu_vm.sh logs -f
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
  create           create the TPU VM (API=compute: a Compute Engine instance,
                   or a workload policy, instance template and managed
                   instance group of one VM per host; QUEUED=1: a queued resource, waited on
                   until ACTIVE unless WAIT=0); the runtime is the newest
                   TensorFlow PJRT runtime the zone lists for the accelerator
                   (-pod on a multi-host slice) unless RUNTIME_VERSION is set
  setup            ship this repository's HEAD (git archive) to every worker
                   and pip install it there (the VM's TensorFlow is kept;
                   API=compute: with the [tpu] extra, TensorFlow's TPU build)
  train [flags]    start `python3 -m trainer.task --strategy=tpu` on worker 0,
                   detached from the SSH session (--tpu=local on one host,
                   --tpu=$TPU_NAME on a pod); extra trainer flags are passed
                   through; output in ~/masked-attention-run/train.log
  status           the TPU's state (or the queued resource's) and the run's:
                   running, finished or failed with its exit status
  logs [-f]        the last LINES lines of the run's log (-f: follow)
  stop             SIGTERM to the run: it checkpoints and exits
  ssh              open a shell on worker WORKER
  delete [--yes]   delete the TPU (asks for confirmation unless --yes)
  recreate [--yes] after a Spot preemption: delete, create and setup again;
                   then the same `train` resumes from the gs:// checkpoint

Environment (default):
  TPU_NAME          masked-attention-tpu
  ZONE              us-central2-b
  ACCELERATOR_TYPE  v4-8 (v4-32, v5litepod-16, ... are multi-host slices)
  API               tpu (the Cloud TPU API); compute: Compute Engine, for
                    v5p and v6e only (machine types ct5p-hightpu-4t,
                    ct6e-standard-1t/4t/8t)
  TOPOLOGY          API=compute, multi-host: the workload policy's
                    accelerator topology (default: from ACCELERATOR_TYPE)
  RESERVATION       API=compute: consume this reservation (specific affinity)
  IMAGE_FAMILY      API=compute: ubuntu-accel-2204-amd64-tpu-v5e-v5p-v6e
  IMAGE_PROJECT     API=compute: ubuntu-os-accelerator-images
  RUNTIME_VERSION   the newest tpu-vm-tf-*-pjrt runtime that fits, from
                    `gcloud compute tpus tpu-vm versions list --zone=ZONE`
  PROJECT           gcloud's configured project
  SPOT              0; 1 creates a Spot (preemptible) TPU (API=compute:
                    provisioning model SPOT, terminated by a STOP)
  QUEUED            0; 1 creates through queued resources (for pods)
  WAIT              1; 0: create returns once a queued resource is accepted
  WAIT_TIMEOUT      create: seconds to wait for ACTIVE (default 3600)
  POLL_SECONDS      create: seconds between state checks (default 30)
  POD               auto (from ACCELERATOR_TYPE); 0 or 1 to force
  CONFIG            configs/tpu.py
  DATA_DIR          train: gs:// data set (required)
  MODEL_DIR         train: gs:// run directory (required)
  REPO_DIR          setup: the git checkout to ship (default: this repository)
  WORKER            ssh: worker index (default 0)
  LINES             logs: lines to print (default 200)
  DRY_RUN           1: print every gcloud command instead of running it
USAGE
}

select_subcommand "${1:-}" create setup train status logs stop ssh delete \
  recreate
shift

tpu_name=${TPU_NAME:-masked-attention-tpu}
zone=${ZONE:-us-central2-b}
accelerator_type=${ACCELERATOR_TYPE:-v4-8}
spot=${SPOT:-0}
queued=${QUEUED:-0}
wait_active=${WAIT:-1}
wait_timeout=${WAIT_TIMEOUT:-3600}
poll_seconds=${POLL_SECONDS:-30}
# One strategy drives every host of a slice, from worker 0.
strategy_for tpu 1
config=${CONFIG:-$default_config}
repo_dir=${REPO_DIR:-$repo_root}

# TPU VM workers of a slice: v2, v3, v4 and v5p types count TensorCores (8
# per VM: v4-8 is one, v4-32 four); v5litepod and v6e types count chips, one
# VM up to 8, else VMs of 4 chips (v5litepod-16: four). The v5e page's
# topology table counts 8-chip physical hosts (4x4: 2); the VMs of a
# multi-host v5e/v6e slice are its 4-chip VM type (ct5lp-hightpu-4t).
# What cannot run is refused here, for every generation and API (TPU7x: no
# TensorFlow; a runtime the generation does not run; an API that does not
# offer it), before the checks below and any gcloud call.
preflight tpu --accelerator_type="$accelerator_type" --api="${API:-tpu}" \
  ${RUNTIME_VERSION:+--runtime="$RUNTIME_VERSION"}
generation=${accelerator_type%-*}
size=${accelerator_type##*-}
[[ "$size" =~ ^[0-9]+$ && "$generation" =~ ^v[0-9] ]] ||
  die "ACCELERATOR_TYPE=$accelerator_type: expected a type like v4-8, v5p-16 or v5litepod-16"
case "$generation" in
  v2 | v3 | v4 | v5p) hosts=$(((size + 7) / 8)) ;;
  v5litepod | v5e | v6e) if ((size <= 8)); then hosts=1; else hosts=$((size / 4)); fi ;;
  *) die "ACCELERATOR_TYPE=$accelerator_type: unknown TPU generation '$generation' (v2, v3, v4, v5p, v5litepod, v6e)" ;;
esac
# API=compute: the machine type of each VM and, on several hosts, the
# accelerator topology of the workload policy. From Compute Engine's "TPU
# machine types" page and the v5p/v6e pages: v6e types count chips and a
# single-host slice is ct6e-standard-1t, -4t or -8t (1, 4, 8 chips); a
# multi-host v6e slice is VMs of ct6e-standard-4t (4 chips each), topology
# 4x4 for v6e-16 up to 16x16 for v6e-256. v5p types count TensorCores (2 a
# chip): each VM is ct5p-hightpu-4t (4 chips, v5p-8), v5p-16 is 2x2x2.
compute_machine_type() {
  topology=""
  case "$generation-$size" in
    v6e-1 | v6e-4 | v6e-8) machine_type=ct6e-standard-${size}t ;;
    v6e-*)
      machine_type=ct6e-standard-4t
      case "$size" in 16) topology=4x4 ;; 32) topology=4x8 ;; 64) topology=8x8 ;;
        128) topology=8x16 ;; 256) topology=16x16 ;; esac
      ;;
    v5p-*)
      machine_type=ct5p-hightpu-4t
      case "$size" in 8) topology=2x2x1 ;; 16) topology=2x2x2 ;; 32) topology=2x2x4 ;;
        64) topology=2x4x4 ;; 128) topology=4x4x4 ;; esac
      ;;
    *) die "ACCELERATOR_TYPE=$accelerator_type is not a Compute Engine TPU machine type (API=compute takes v5p-N and v6e-N): use API=tpu for $generation" ;;
  esac
  topology=${TOPOLOGY:-$topology}
  if ((hosts > 1)) && [[ -z "$topology" ]]; then
    die "ACCELERATOR_TYPE=$accelerator_type: no documented topology for it here: set TOPOLOGY (e.g. 4x8 for v6e-32, 2x2x4 for v5p-32)"
  fi
  [[ -z "$topology" || "$topology" =~ ^[0-9]+(x[0-9]+){1,2}$ ]] ||
    die "TOPOLOGY must look like 4x4 or 2x2x2, got '$topology'"
}

case "${POD:-auto}" in
  auto) if ((hosts > 1)); then pod=1; else pod=0; fi ;;
  0 | 1) pod=$POD ;;
  *) die "POD must be auto, 0 or 1, got '$POD'" ;;
esac
api=${API:-tpu}
reservation=${RESERVATION:-}
image_family=${IMAGE_FAMILY:-ubuntu-accel-2204-amd64-tpu-v5e-v5p-v6e}
image_project=${IMAGE_PROJECT:-ubuntu-os-accelerator-images}
case "$api" in
  tpu)
    [[ -z "$reservation" ]] || die "RESERVATION is for API=compute; the Cloud TPU API path takes no reservation here: unset it or set API=compute"
    ;;
  compute)
    [[ "$queued" != "1" ]] || die "QUEUED=1 is a Cloud TPU API queued resource: with API=compute leave QUEUED unset"
    compute_machine_type
    ;;
  *) die "API must be tpu or compute, got '$api'" ;;
esac
[[ "$wait_timeout" =~ ^[0-9]+$ ]] || die "WAIT_TIMEOUT must be a number of seconds, got '$wait_timeout'"
[[ "$poll_seconds" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "POLL_SECONDS must be a number, got '$poll_seconds'"

require_gcloud
echo "tpu_vm: TPU_NAME=$tpu_name ZONE=$zone ACCELERATOR_TYPE=$accelerator_type" \
  "($hosts host(s)) PROJECT=$project API=$api SPOT=$spot QUEUED=$queued POD=$pod" >&2
# API=compute, several hosts: the resources that make the slice (a managed
# instance group in the zone, its template, a workload policy in the region).
region=${zone%-*}
template_name=$tpu_name-template
policy_name=$tpu_name-policy

location=(--zone="$zone" --project="$project")
# On every worker: the run's directory (log, pid, exit status) and the code.
# The ~ is expanded there, by the worker's shell.
# shellcheck disable=SC2088
run_dir='~/masked-attention-run'
# shellcheck disable=SC2088
code_dir='~/masked-attention-trainer'

# The runtimes that fit this accelerator, newest first: TensorFlow PJRT
# runtimes, `-pod` exactly on multi-host slices, and of accelerator-specific
# variants (tpu-vm-tf-X.Y.Z[-pod]-pjrt-SUFFIX) only those naming this
# generation.
fitting_runtimes() {
  local listed=$1 version pod_part suffix
  while read -r version; do
    [[ "$version" =~ ^tpu-vm-tf-([0-9]+[.][0-9]+[.][0-9]+)(-pod)?-pjrt(-(.+))?$ ]] || continue
    pod_part=${BASH_REMATCH[2]}
    suffix=${BASH_REMATCH[4]}
    if ((pod == 1)) && [[ -z "$pod_part" ]]; then continue; fi
    if ((pod == 0)) && [[ -n "$pod_part" ]]; then continue; fi
    if [[ -n "$suffix" ]]; then
      case "$generation:$suffix" in
        v5litepod:*v5e* | v5e:*v5e* | v6e:*v6*) ;;
        v2:*v5p-and-below* | v3:*v5p-and-below* | v4:*v5p-and-below*) ;;
        v5p:*v5p*) ;;
        *) continue ;;
      esac
    fi
    # Sort key: the TensorFlow version, then variants for this generation
    # before generic runtimes of the same version.
    printf '%s %d %s\n' "${BASH_REMATCH[1]}" "$((${#suffix} > 0))" "$version"
  done <<<"$listed" | sort -k1,1Vr -k2,2nr | awk '{print $3}'
}

# Prints the runtime version to create: RUNTIME_VERSION if the zone lists it
# (and it fits single- or multi-host), else the newest fitting runtime.
choose_runtime() {
  local listed fitting
  if [[ "$dry_run" == "1" ]]; then
    # Nothing is asked of gcloud in a dry run.
    echo "${RUNTIME_VERSION:-NEWEST_FITTING_TF_RUNTIME}"
    return
  fi
  listed=$(gcloud compute tpus tpu-vm versions list "${location[@]}" \
    --format='value(version)') || die "cannot list the TPU software versions of zone $zone (see above)"
  [[ -n "$listed" ]] || die "zone $zone lists no TPU software versions: is it a TPU zone? (gcloud compute tpus locations list)"
  fitting=$(fitting_runtimes "$listed")
  if [[ -n "${RUNTIME_VERSION:-}" ]]; then
    if ! grep -qxF -- "$RUNTIME_VERSION" <<<"$listed"; then
      die "RUNTIME_VERSION=$RUNTIME_VERSION is not offered in $zone; closest listed for $accelerator_type: $(closest_runtimes "$RUNTIME_VERSION" "${fitting:-$listed}")"
    fi
    if ((pod == 1)) && [[ "$RUNTIME_VERSION" == tpu-vm-tf-* && "$RUNTIME_VERSION" != *-pod* ]]; then
      die "RUNTIME_VERSION=$RUNTIME_VERSION is a single-host runtime, but $accelerator_type has $hosts hosts: use a -pod runtime, e.g. $(head -n 1 <<<"$fitting")"
    fi
    if ((pod == 0)) && [[ "$RUNTIME_VERSION" == *-pod* ]]; then
      die "RUNTIME_VERSION=$RUNTIME_VERSION is a multi-host (-pod) runtime, but $accelerator_type is a single host: use e.g. $(head -n 1 <<<"$fitting")"
    fi
    echo "$RUNTIME_VERSION"
    return
  fi
  [[ -n "$fitting" ]] ||
    die "zone $zone lists no TensorFlow PJRT runtime for $accelerator_type ($hosts host(s)); listed: $(tr '\n' ' ' <<<"$listed")- set RUNTIME_VERSION or pick another ZONE"
  head -n 1 <<<"$fitting"
}

# Up to three of the runtimes in $2 closest to $1: by TensorFlow version
# when $1 names one, in the order given otherwise.
closest_runtimes() {
  local wanted=$1 candidates=$2 version target=-1 key
  if [[ "$wanted" =~ ^tpu-vm-tf-([0-9]+)[.]([0-9]+)[.]([0-9]+) ]]; then
    target=$((BASH_REMATCH[1] * 10000 + BASH_REMATCH[2] * 100 + BASH_REMATCH[3]))
  fi
  local order=0
  while read -r version; do
    [[ -n "$version" ]] || continue
    order=$((order + 1))
    key=$order
    if ((target >= 0)) && [[ "$version" =~ ^tpu-vm-tf-([0-9]+)[.]([0-9]+)[.]([0-9]+) ]]; then
      key=$((BASH_REMATCH[1] * 10000 + BASH_REMATCH[2] * 100 + BASH_REMATCH[3] - target))
      key=$(((key < 0 ? -key : key) * 1000 + order))
    fi
    printf '%d %s\n' "$key" "$version"
  done <<<"$candidates" | sort -k1,1n | head -n 3 | awk '{print $2}' | paste -sd ',' - | sed 's/,/, /g'
}

# Runs a gcloud create command (its output shows as it comes: gcloud's
# "Waiting for operation ..." progress while Cloud TPU provisions); when it
# fails, adds one line naming the cause and what to do, and exits 1.
run_create() {
  local what=$1 log_dir status=0 message
  shift
  if [[ "$dry_run" == "1" ]]; then
    run "$@"
    return
  fi
  make_temp_dir log_dir
  # stderr through tee (a copy to read), stdout as it is (fd 3).
  {
    if "$@" 2>&1 >&3 3>&- | tee "$log_dir/stderr" >&2 3>&-; then
      status=0
    else
      status=${PIPESTATUS[0]}
    fi
  } 3>&1
  ((status == 0)) && return
  # gcloud's error: "ERROR: (gcloud.X) STATUS: message" for a refused
  # request, or the failed operation's {"code": N, "message": ...}.
  message=$(sed -n 's/^ERROR: ([^)]*) //p; s/^ *"message": "\(.*\)"$/\1/p' "$log_dir/stderr" |
    tail -n 1 | sed 's/\\"/"/g')
  local quota
  quota=$(grep -o "Quota limit '[^']*'" "$log_dir/stderr" | head -n 1 | cut -d"'" -f2) || true
  if [[ -n "$quota" ]]; then
    echo "error: $what: quota $quota is used up in $zone ($project): request more at https://console.cloud.google.com/iam-admin/quotas?project=$project, or ask for a smaller ACCELERATOR_TYPE or another ZONE" >&2
  elif grep -qE '"code": 8,|RESOURCE_EXHAUSTED|no more capacity' "$log_dir/stderr"; then
    echo "error: $what: no $accelerator_type capacity in $zone right now: try another ZONE that offers $accelerator_type, QUEUED=1 (waits in line for capacity) or SPOT=1" >&2
  else
    echo "error: $what failed: ${message:-gcloud exited with status $status (see above)}" >&2
  fi
  exit 1
}

create_tpu() {
  if [[ "$api" == "compute" ]]; then
    create_compute
    return
  fi
  local runtime_version extra=()
  runtime_version=$(choose_runtime)
  echo "tpu_vm: RUNTIME_VERSION=$runtime_version" >&2
  if [[ "$spot" == "1" ]]; then extra+=(--spot); fi
  if [[ "$queued" != "1" ]]; then
    # gcloud waits for the create operation: the node is READY after this.
    run_create "creating TPU $tpu_name" \
      gcloud compute tpus tpu-vm create "$tpu_name" "${location[@]}" \
      --accelerator-type="$accelerator_type" \
      --version="$runtime_version" "${extra[@]}"
    return
  fi
  run_create "queuing TPU $tpu_name" \
    gcloud compute tpus queued-resources create "$tpu_name" \
    --node-id="$tpu_name" "${location[@]}" \
    --accelerator-type="$accelerator_type" \
    --runtime-version="$runtime_version" "${extra[@]}"
  if [[ "$wait_active" == "1" && "$dry_run" != "1" ]]; then
    wait_until_active
  fi
}

# API=compute. Flags every TPU VM takes (Compute Engine's "Create TPU VMs"
# pages): the accelerator image family, no live migration (TPU hosts are
# terminated for maintenance), and for Spot the SPOT provisioning model with
# the termination action Google's "Request TPU Spot VMs" page gives (STOP).
compute_vm_flags() {
  vm_flags=(--machine-type="$machine_type" --image-family="$image_family"
    --image-project="$image_project" --maintenance-policy=TERMINATE)
  if [[ "$spot" == "1" ]]; then
    vm_flags+=(--provisioning-model=SPOT --instance-termination-action=STOP)
  fi
  if [[ -n "$reservation" ]]; then
    vm_flags+=(--reservation-affinity=specific --reservation="$reservation")
  fi
}

create_compute() {
  local vm_flags
  compute_vm_flags
  if ((hosts == 1)); then
    run_create "creating instance $tpu_name" \
      gcloud compute instances create "$tpu_name" "${location[@]}" "${vm_flags[@]}"
    return
  fi
  echo "tpu_vm: $hosts x $machine_type, topology $topology: workload policy $policy_name ($region), template $template_name, managed instance group $tpu_name" >&2
  run_create "creating workload policy $policy_name" \
    gcloud compute resource-policies create workload-policy "$policy_name" \
    --region="$region" --project="$project" --type=HIGH_THROUGHPUT \
    --accelerator-topology="$topology"
  run_create "creating instance template $template_name" \
    gcloud compute instance-templates create "$template_name" \
    --project="$project" "${vm_flags[@]}"
  run_create "creating managed instance group $tpu_name" \
    gcloud compute instance-groups managed create "$tpu_name" "${location[@]}" \
    --template="$template_name" --size="$hosts" \
    --workload-policy="projects/$project/regions/$region/resourcePolicies/$policy_name"
}

# API=compute: the slice's VMs, one name a line, worker 0 first (a managed
# group's instances in name order). A dry run names them by index.
compute_hosts() {
  if ((hosts == 1)); then
    echo "$tpu_name"
  elif [[ "$dry_run" == "1" ]]; then
    seq -f "$tpu_name-WORKER%g" 0 $((hosts - 1))
  else
    gcloud compute instance-groups managed list-instances "$tpu_name" \
      "${location[@]}" --format='value(instance.basename())' | sort ||
      die "no managed instance group $tpu_name in $zone ($project): create it with \`API=compute launch/tpu_vm.sh create\`"
  fi
}

# Runs the lines of $1 (commands): the first alone, then the others at once
# in the background, and waits for all; the exit status is the first failing
# one's. (The first `compute ssh`/`scp` may add the user's key to the
# project's metadata: run concurrently, several would race to update it.) A
# dry run prints them in order.
run_each() {
  local pids=() status=0 pid line first
  if [[ "$dry_run" == "1" ]]; then
    while read -r line; do eval "$line"; done <<<"$1"
    return
  fi
  first=${1%%$'\n'*}
  eval "$first" || return
  [[ "$1" == *$'\n'* ]] || return 0
  while read -r line; do
    eval "$line" &
    pids+=("$!")
  done <<<"${1#*$'\n'}"
  for pid in "${pids[@]}"; do
    wait "$pid" || { local s=$?; ((status)) || status=$s; }
  done
  return "$status"
}

# Runs COMMAND on worker WORKER (a number) or on every worker (all), through
# the API's ssh: `tpu-vm ssh --worker`, or `compute ssh` to each VM (to all
# at once, as `tpu-vm ssh --worker=all` does).
on_workers() {
  local worker=$1 command=$2 name index=0
  if [[ "$api" == "tpu" ]]; then
    run gcloud compute tpus tpu-vm ssh "$tpu_name" "${location[@]}" \
      --worker="$worker" --command="$command"
    return
  fi
  local names commands=""
  names=$(compute_hosts)
  while read -r name; do
    if [[ "$worker" == "all" || "$worker" == "$index" ]]; then
      commands+="run gcloud compute ssh $(printf '%q' "$name") \"\${location[@]}\" --command=$(printf '%q' "$command") </dev/null"$'\n'
    fi
    index=$((index + 1))
  done <<<"$names"
  if [[ "$worker" != "all" ]] && ((worker >= index)); then
    die "WORKER=$worker: the slice has $index worker(s) (0 to $((index - 1)))"
  fi
  run_each "${commands%$'\n'}"
}

# API=compute, several hosts: the trainer's --tpu, every VM's TPU worker
# address (grpc://INTERNAL_IP:8470, worker 0 first), which TensorFlow's
# TPUClusterResolver takes instead of asking the Cloud TPU API for a node.
compute_tpu_endpoints() {
  local name names ip endpoints=()
  names=$(compute_hosts)
  while read -r name; do
    if [[ "$dry_run" == "1" ]]; then
      ip=INTERNAL_IP_OF_$name
    else
      ip=$(gcloud compute instances describe "$name" "${location[@]}" \
        --format='value(networkInterfaces[0].networkIP)')
    fi
    endpoints+=("grpc://$ip:8470")
  done <<<"$names"
  local IFS=,
  echo "${endpoints[*]}"
}

# Copies FILE to ~/DEST on every worker.
copy_to_workers() {
  local file=$1 dest=$2 name names
  if [[ "$api" == "tpu" ]]; then
    run gcloud compute tpus tpu-vm scp "$file" "$tpu_name:$dest" \
      "${location[@]}" --worker=all
    return
  fi
  local commands=""
  names=$(compute_hosts)
  while read -r name; do
    commands+="run gcloud compute scp $(printf '%q' "$file") $(printf '%q' "$name:$dest") \"\${location[@]}\" </dev/null"$'\n'
  done <<<"$names"
  run_each "${commands%$'\n'}"
}

# Polls the queued resource until ACTIVE; a failed or suspended one, or the
# timeout, ends the script with the state it was in.
wait_until_active() {
  local state reason start elapsed
  start=$SECONDS
  while true; do
    # The state, and why it failed (state.failedData.error), tab-separated.
    state=$(gcloud compute tpus queued-resources describe "$tpu_name" \
      "${location[@]}" --format='value(state.state,state.failedData.error.message)')
    reason=""
    if [[ "$state" == *$'\t'* ]]; then
      reason=${state#*$'\t'}
      state=${state%%$'\t'*}
    fi
    elapsed=$((SECONDS - start))
    case "$state" in
      ACTIVE)
        echo "tpu_vm: queued resource $tpu_name is ACTIVE after ${elapsed}s" >&2
        return
        ;;
      FAILED | SUSPENDING | SUSPENDED)
        echo "error: queued resource $tpu_name is $state${reason:+ ($reason)}: see \`launch/tpu_vm.sh status\`; delete it (\`QUEUED=1 launch/tpu_vm.sh delete\`) before creating it again" >&2
        exit 1
        ;;
    esac
    if ((elapsed >= wait_timeout)); then
      echo "error: queued resource $tpu_name is still ${state:-in an unknown state} after ${elapsed}s (WAIT_TIMEOUT=$wait_timeout): it stays queued; check it with \`launch/tpu_vm.sh status\`" >&2
      exit 1
    fi
    echo "tpu_vm: queued resource $tpu_name is ${state:-not yet visible}; waiting (${elapsed}s of ${wait_timeout}s)" >&2
    sleep "$poll_seconds"
  done
}

# The remote shell snippet that succeeds when a run is alive on that worker.
alive_check="[ -f $run_dir/train.pid ] && kill -0 \"\$(cat $run_dir/train.pid)\" 2>/dev/null"

setup_workers() {
  local package_dir package remote
  [[ -d "$repo_dir" ]] || die "REPO_DIR=$repo_dir is not a directory"
  make_temp_dir package_dir
  package=$(build_package "$repo_dir" "$package_dir")
  echo "tpu_vm: shipping $(basename "$package") to every worker" >&2
  copy_to_workers "$package" masked-attention-trainer.tar.gz
  # Replaces the code directory whole (a re-run does not nest copies), then
  # installs the package and its light dependencies; TensorFlow is not a
  # dependency of the base package, so the VM's own stays as it is. A
  # Compute Engine image has no TensorFlow: there the [tpu] extra brings
  # TensorFlow's TPU build (and libtpu) first.
  local tpu_extra=""
  if [[ "$api" == "compute" ]]; then
    tpu_extra="python3 -m pip --version >/dev/null 2>&1 || { sudo apt-get update -qq && sudo apt-get install -y -qq python3-pip; }
python3 -m pip install --quiet --user \"\$HOME/${code_dir#\~/}[tpu]\""
  fi
  remote="set -e
if $alive_check; then echo \"error: a run is going on \$(hostname) (pid \$(cat $run_dir/train.pid)): stop it first (launch/tpu_vm.sh stop)\" >&2; exit 2; fi
rm -rf $code_dir.new && mkdir -p $code_dir.new
tar -xzf ~/masked-attention-trainer.tar.gz -C $code_dir.new --strip-components=1
rm -rf $code_dir && mv $code_dir.new $code_dir
$tpu_extra
tf_version=\$(python3 -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null) || { echo \"error: no TensorFlow on \$(hostname): create the TPU with a tpu-vm-tf-* runtime, or pip install the package's [tpu] extra there\" >&2; exit 2; }
python3 -m pip install --quiet --user --force-reinstall --no-deps $code_dir
python3 -m pip install --quiet --user $code_dir
echo \"setup: \$(hostname): trainer installed; TensorFlow \$tf_version\""
  on_workers all "$remote"
}

# The command that starts the trainer on worker 0 detached from the SSH
# session (setsid: a dropped connection sends no SIGHUP to it), its output in
# train.log, its pid in train.pid and, when it ends, its exit status in
# train.exit. A run still alive is refused.
remote_train_command() {
  local tpu_flag=--tpu=local environment=""
  if ((pod == 1)) && [[ "$api" == "compute" ]]; then
    tpu_flag=--tpu=$(compute_tpu_endpoints)
    environment="export TPU_LOAD_LIBRARY=0;"
  elif ((pod == 1)); then
    tpu_flag=--tpu=$tpu_name
    # TensorFlow on a multi-host slice: the TPU is driven from worker 0 by
    # name; the TPU library is loaded by the TPU workers, not this process.
    environment="export TPU_NAME=$(printf '%q' "$tpu_name") TPU_LOAD_LIBRARY=0;"
  fi
  local words=(python3 -m trainer.task "--config=$config" "--strategy=$strategy"
    "$tpu_flag" "--data_dir=$DATA_DIR" "--model_dir=$MODEL_DIR" "$@")
  local trainer detached
  trainer=$(printf ' %q' "${words[@]}")
  # The detached shell: ignores SIGHUP (and so does the trainer it starts),
  # outlives a SIGTERM to its process group so that the trainer's exit
  # status is recorded after the trainer has checkpointed.
  detached=$(printf '%q' "echo \$\$ > $run_dir/train.pid; trap '' HUP; trap : TERM;$trainer; echo \$? > $run_dir/train.exit")
  cat <<REMOTE
set -e
if $alive_check; then echo "error: a run is already going (pid \$(cat $run_dir/train.pid)): see launch/tpu_vm.sh status; launch/tpu_vm.sh stop ends it" >&2; exit 2; fi
[ -d $code_dir ] || { echo "error: the trainer is not installed on this worker: run launch/tpu_vm.sh setup" >&2; exit 2; }
mkdir -p $run_dir && rm -f $run_dir/train.exit
cd $code_dir
$environment
rm -f $run_dir/train.pid
setsid bash -c $detached >> $run_dir/train.log 2>&1 < /dev/null &
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -s $run_dir/train.pid ] && break; sleep 0.5; done
echo "train: started on \$(hostname) (pid \$(cat $run_dir/train.pid)); log: $run_dir/train.log"
REMOTE
}

run_status_command() {
  cat <<REMOTE
if $alive_check; then echo "run: running (pid \$(cat $run_dir/train.pid))"; tail -n 3 $run_dir/train.log
elif [ -f $run_dir/train.exit ]; then s=\$(cat $run_dir/train.exit)
  if [ "\$s" = 0 ]; then echo "run: finished (exit status 0)"; else echo "run: failed (exit status \$s)"; fi; tail -n 5 $run_dir/train.log
elif [ -f $run_dir/train.pid ]; then echo "run: ended without an exit status (killed, or the VM restarted)"; tail -n 5 $run_dir/train.log
else echo "run: none started"; fi
REMOTE
}

confirm_delete() {
  if [[ "${1:-}" != "--yes" && "$dry_run" != "1" ]]; then
    [[ -t 0 ]] || die "refusing to delete $tpu_name without a terminal: pass --yes"
    local what="TPU $tpu_name"
    if [[ "$api" == "compute" ]] && ((hosts == 1)); then
      what="Compute Engine instance $tpu_name"
    elif [[ "$api" == "compute" ]]; then
      what="managed instance group $tpu_name ($hosts VMs), template $template_name and workload policy $policy_name"
    fi
    read -r -p "Delete $what in $zone ($project)? [y/N] " answer
    [[ "$answer" == "y" || "$answer" == "Y" ]] || die "not deleted"
  fi
}

delete_tpu() {
  if [[ "$api" == "compute" ]] && ((hosts == 1)); then
    run gcloud compute instances delete "$tpu_name" "${location[@]}" --quiet
  elif [[ "$api" == "compute" ]]; then
    # The group first (it deletes its VMs), then what it used.
    run gcloud compute instance-groups managed delete "$tpu_name" "${location[@]}" --quiet
    run gcloud compute instance-templates delete "$template_name" --project="$project" --quiet
    run gcloud compute resource-policies delete "$policy_name" --region="$region" \
      --project="$project" --quiet
  elif [[ "$queued" == "1" ]]; then
    run gcloud compute tpus queued-resources delete "$tpu_name" \
      "${location[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$tpu_name" "${location[@]}" --quiet
  fi
}

cmd_create() {
  create_tpu
}

cmd_setup() {
  setup_workers
}

cmd_train() {
  local why="the TPU workers cannot read this machine's disk"
  require_gs DATA_DIR "${DATA_DIR:-}" "$why"
  require_gs MODEL_DIR "${MODEL_DIR:-}" "$why"
  local command
  command=$(remote_train_command "$@")
  on_workers 0 "$command"
}

# API=compute: the VMs' states (the group's too on several hosts), then the
# run's on worker 0 when it is RUNNING.
status_compute() {
  local names name state first="" line
  if [[ "$dry_run" == "1" ]]; then
    if ((hosts > 1)); then
      run gcloud compute instance-groups managed list-instances "$tpu_name" \
        "${location[@]}" --format='value(instance.basename(),instanceStatus)'
    else
      run gcloud compute instances describe "$tpu_name" "${location[@]}" --format='value(status)'
    fi
    on_workers 0 "$(run_status_command)"
    return
  fi
  if ((hosts > 1)); then
    names=$(gcloud compute instance-groups managed list-instances "$tpu_name" \
      "${location[@]}" --format='value(instance.basename(),instanceStatus)' 2>/dev/null) ||
      die "no managed instance group $tpu_name in $zone ($project): create it with \`API=compute launch/tpu_vm.sh create\`"
    echo "group: $tpu_name, $(grep -c . <<<"$names") of $hosts VMs"
    while read -r line; do
      name=${line%%$'\t'*}
      state=${line#*$'\t'}
      echo "vm: $name ${state:-(no status yet)}"
      [[ -n "$first" ]] || first=$state
    done <<<"$(sort <<<"$names")"
    state=$first
  else
    state=$(gcloud compute instances describe "$tpu_name" "${location[@]}" \
      --format='value(status)' 2>/dev/null) ||
      die "no instance $tpu_name in $zone ($project): create it with \`API=compute launch/tpu_vm.sh create\`"
    echo "vm: $tpu_name $state"
  fi
  case "$state" in
    RUNNING) on_workers 0 "$(run_status_command)" ;;
    TERMINATED | STOPPED) echo "vm: stopped (a Spot preemption or maintenance): \`API=compute launch/tpu_vm.sh recreate\`, then the same \`train\` resumes from the last checkpoint" ;;
  esac
}

cmd_status() {
  local state
  if [[ "$api" == "compute" ]]; then
    status_compute
    return
  fi
  if [[ "$dry_run" == "1" ]]; then
    if [[ "$queued" == "1" ]]; then
      run gcloud compute tpus queued-resources describe "$tpu_name" \
        "${location[@]}" --format='value(state.state)'
    fi
    run gcloud compute tpus tpu-vm describe "$tpu_name" "${location[@]}" \
      --format='value(state)'
    run gcloud compute tpus tpu-vm ssh "$tpu_name" "${location[@]}" \
      --worker=0 --command="$(run_status_command)"
    return
  fi
  if [[ "$queued" == "1" ]]; then
    # The node exists only once the queued resource is ACTIVE.
    state=$(gcloud compute tpus queued-resources describe "$tpu_name" \
      "${location[@]}" --format='value(state.state)' 2>/dev/null) ||
      die "no queued resource $tpu_name in $zone ($project): create it with \`QUEUED=1 launch/tpu_vm.sh create\`"
    echo "queued resource: $state"
    case "$state" in
      ACTIVE) ;;
      SUSPENDED | SUSPENDING) echo "queued resource: its TPU is gone (a Spot preemption or maintenance): \`QUEUED=1 launch/tpu_vm.sh recreate\`, then the same \`train\` resumes"; return ;;
      *) return ;;
    esac
  fi
  state=$(gcloud compute tpus tpu-vm describe "$tpu_name" "${location[@]}" \
    --format='value(state)' 2>/dev/null) ||
    die "no TPU $tpu_name in $zone ($project): create it with \`launch/tpu_vm.sh create\`"
  echo "tpu: $state"
  case "$state" in
    READY) gcloud compute tpus tpu-vm ssh "$tpu_name" "${location[@]}" \
      --worker=0 --command="$(run_status_command)" ;;
    PREEMPTED) echo "tpu: preempted (Spot): \`launch/tpu_vm.sh recreate\`, then the same \`train\` resumes from the last checkpoint" ;;
  esac
}

cmd_logs() {
  local lines=${LINES:-200} follow=""
  [[ "$lines" =~ ^[0-9]+$ ]] || die "LINES must be a number, got '$lines'"
  case "${1:-}" in
    "") ;;
    -f) follow=" -f" ;;
    *) die "logs takes -f (follow) or nothing, got '$1'" ;;
  esac
  on_workers 0 "if [ -f $run_dir/train.log ]; then tail -n $lines$follow $run_dir/train.log; else echo 'error: no run log on worker 0 yet: launch/tpu_vm.sh train starts a run' >&2; exit 2; fi"
}

cmd_stop() {
  on_workers 0 "if $alive_check; then kill -TERM -- -\"\$(ps -o pgid= -p \"\$(cat $run_dir/train.pid)\" | tr -d ' ')\" && echo 'stop: SIGTERM sent: the run checkpoints at the end of its host loop and exits'; else echo 'stop: no run is going'; fi"
}

cmd_ssh() {
  local worker=${WORKER:-0}
  [[ "$worker" =~ ^[0-9]+$ ]] || die "WORKER must be a worker index, got '$worker'"
  if [[ "$api" == "compute" ]]; then
    local names
    names=$(compute_hosts)
    ((worker < $(wc -l <<<"$names"))) || die "WORKER=$worker: the slice has $(wc -l <<<"$names") worker(s)"
    run gcloud compute ssh "$(sed -n "$((worker + 1))p" <<<"$names")" "${location[@]}"
    return
  fi
  run gcloud compute tpus tpu-vm ssh "$tpu_name" "${location[@]}" \
    --worker="$worker"
}

cmd_delete() {
  confirm_delete "${1:-}"
  delete_tpu
}

cmd_recreate() {
  confirm_delete "${1:-}"
  delete_tpu
  create_tpu
  setup_workers
  echo "tpu_vm: recreated; run the same \`train\` to resume from the checkpoint in MODEL_DIR" >&2
}

run_subcommand "$@"
