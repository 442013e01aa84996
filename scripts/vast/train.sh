#!/usr/bin/env bash
# Train or evaluate with run.py on this node, as one node of a (multi-node) torchrun job:
#   bash scripts/vast/train.sh --config FILE [--key value ...]
#   NNODES=2 NODE_RANK=0 NPROC_PER_NODE=8 MASTER_ADDR=node0 MASTER_PORT=29500 bash scripts/vast/train.sh --config FILE
# Environment (defaults): NNODES (1), NODE_RANK (0), NPROC_PER_NODE (the GPUs this node has, 1
# without), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500). Under SLURM, with one task per node
# (srun --ntasks-per-node 1), NNODES, NODE_RANK and MASTER_ADDR default to the job's values.
# Every node runs the same command; the recipes in this folder call it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

if [ -n "${SLURM_JOB_ID:-}" ]; then
    NNODES="${NNODES:-${SLURM_JOB_NUM_NODES:-1}}"
    NODE_RANK="${NODE_RANK:-${SLURM_NODEID:-0}}"
    if [ -z "${MASTER_ADDR:-}" ] && command -v scontrol > /dev/null; then
        MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
    fi
fi
if [ -z "${NPROC_PER_NODE:-}" ]; then
    NPROC_PER_NODE="$("$PY" -c 'import torch; print(max(1, torch.cuda.device_count()))')"
fi
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"

exec "$PY" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK" \
    --nproc_per_node "$NPROC_PER_NODE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    run.py "$@"
