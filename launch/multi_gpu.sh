#!/usr/bin/env bash
# Trains on all visible GPUs (or NUM_GPUS of them) of this machine:
# python -m trainer.task --strategy=mirrored.
#
#   launch/multi_gpu.sh --config=configs/gpu.py --data_dir=/data/arith --model_dir=/runs/1
#   NUM_GPUS=4 launch/multi_gpu.sh --config=configs/gpu.py
#
# Without a visible GPU it trains on the CPU, with a warning.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  cat <<'USAGE'
usage: launch/multi_gpu.sh [trainer flags...]

Runs `python -m trainer.task --strategy=mirrored --num_gpus=N [trainer flags]`.

Environment:
  NUM_GPUS  GPUs to use (default: all visible); the first NUM_GPUS are used,
            as nvidia-smi numbers them or as listed in the
            CUDA_VISIBLE_DEVICES you set; the trainer gets them as
            CUDA_VISIBLE_DEVICES, with CUDA_DEVICE_ORDER=PCI_BUS_ID
  PYTHON    Python interpreter (default python3)
  DRY_RUN   1: print the command instead of running it
USAGE
  exit 0
fi
python=${PYTHON:-python3}
visible_gpus
visible=${#gpus[@]}
num_gpus=${NUM_GPUS:-$visible}
[[ "$num_gpus" =~ ^[0-9]+$ ]] || die "NUM_GPUS must be a number, got '$num_gpus'"
num_gpus=$((10#$num_gpus))  # 08 is 8, not an octal error
echo "multi_gpu: NUM_GPUS=$num_gpus PYTHON=$python ($visible GPU(s) visible)" >&2
if ((visible == 0)); then
  warn "no GPU visible ($gpus_none): training on the CPU"
  export CUDA_VISIBLE_DEVICES=""
  num_gpus=0
elif ((num_gpus == 0 || num_gpus > visible)); then
  die "NUM_GPUS=$num_gpus but $visible GPU(s) are visible$gpus_set"
else
  CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${gpus[*]:0:num_gpus}")
  export CUDA_VISIBLE_DEVICES
fi
strategy_for gpu 1
run "$python" -m trainer.task "--strategy=$strategy" --num_gpus="$num_gpus" "$@"
