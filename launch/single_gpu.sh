#!/usr/bin/env bash
# Trains on one GPU: python -m trainer.task --strategy=one_device.
#
#   launch/single_gpu.sh --data_dir=/data/arith --model_dir=/runs/1
#   GPU=1 launch/single_gpu.sh --config=configs/gpu.py
#
# Without a visible GPU it trains on the CPU, with a warning.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  cat <<'USAGE'
usage: launch/single_gpu.sh [trainer flags...]

Runs `python -m trainer.task --strategy=one_device [trainer flags]` on one GPU.

Environment:
  GPU      index of the GPU to use (default 0) as nvidia-smi numbers them,
           or its position in the CUDA_VISIBLE_DEVICES you set; the trainer
           gets CUDA_VISIBLE_DEVICES=<that GPU> and CUDA_DEVICE_ORDER=PCI_BUS_ID
  PYTHON   Python interpreter (default python3)
  DRY_RUN  1: print the command instead of running it
USAGE
  exit 0
fi
gpu=${GPU:-0}
python=${PYTHON:-python3}
[[ "$gpu" =~ ^[0-9]+$ ]] || die "GPU must be a GPU index (0, 1, ...), got '$gpu'"
gpu=$((10#$gpu))  # 08 is 8, not an octal error
visible_gpus
num_gpus=${#gpus[@]}
echo "single_gpu: GPU=$gpu PYTHON=$python ($num_gpus GPU(s) visible)" >&2
if ((num_gpus == 0)); then
  warn "no GPU visible ($gpus_none): training on the CPU"
  export CUDA_VISIBLE_DEVICES=""
elif ((gpu >= num_gpus)); then
  die "GPU=$gpu but only $num_gpus GPU(s) are visible (0..$((num_gpus - 1)))$gpus_set"
else
  export CUDA_VISIBLE_DEVICES=${gpus[gpu]}
fi
strategy_for one_gpu 1
run "$python" -m trainer.task "--strategy=$strategy" "$@"
