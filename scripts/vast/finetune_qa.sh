#!/usr/bin/env bash
# Question-answering fine-tuning recipes of the paper, from the pretrained VAST run:
#   bash scripts/vast/finetune_qa.sh [RECIPE ...] [--pretrain_dir output/vast/pretrain_vast] [--key value ...]
# e.g. NPROC_PER_NODE=8 bash scripts/vast/finetune_qa.sh VQA-msrvtt
# Every setting (learning rate, frames, epochs, batch size, decoding) is in the recipe's file under
# config/vast/finetune_cfg/; results go to <pretrain_dir>/downstream/<recipe>. VQA-vqav2 also writes
# its test-dev submission (log/submission_*.json).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/recipes.sh"
run_recipes "VQA-msrvtt VQA-msvd VQA-tgif VQA-activitynet VQA-music VQA-vqav2" "$@"
