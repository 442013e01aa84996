#!/usr/bin/env bash
# Pretrain VAST on the paper's seven corpora (config/vast/pretrain_cfg/pretrain_vast.json: VAST-27M,
# VALOR-1M, CC4M, CC12M, LAION, AudioSet-SL, FreeSound with their step budgets) into
# output/vast/pretrain_vast, the run the fine-tuning recipes start from:
#   NNODES=4 NODE_RANK=0 NPROC_PER_NODE=8 MASTER_ADDR=node0 bash scripts/vast/pretrain_vast.sh [--key value ...]
# (run the same command on every node with its NODE_RANK; add --resume true to continue a stopped run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
config=config/vast/pretrain_cfg/pretrain_vast.json
"$PY" -m vast.preflight --config "$config" "$@" || exit 2
exec bash scripts/vast/train.sh --config "$config" --output_dir output/vast/pretrain_vast "$@"
