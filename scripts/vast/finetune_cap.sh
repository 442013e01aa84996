#!/usr/bin/env bash
# Captioning fine-tuning recipes of the paper, from the pretrained VAST run:
#   bash scripts/vast/finetune_cap.sh [RECIPE ...] [--pretrain_dir output/vast/pretrain_vast] [--key value ...]
# e.g. NPROC_PER_NODE=8 bash scripts/vast/finetune_cap.sh caption-msrvtt
# Every setting (learning rate, frames, epochs, batch size, beam size) is in the recipe's file under
# config/vast/finetune_cfg/; results go to <pretrain_dir>/downstream/<recipe>.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/recipes.sh"
run_recipes "caption-msrvtt caption-msvd caption-youcook caption-valor32k caption-tv caption-vatex \
caption-clothov2 caption-audiocaps caption-mscoco caption-tvc" "$@"
