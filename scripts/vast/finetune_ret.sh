#!/usr/bin/env bash
# Retrieval fine-tuning recipes of the paper, from the pretrained VAST run:
#   bash scripts/vast/finetune_ret.sh [RECIPE ...] [--pretrain_dir output/vast/pretrain_vast] [--key value ...]
# e.g. NPROC_PER_NODE=8 bash scripts/vast/finetune_ret.sh retrieval-msrvtt
# Every setting (learning rate, frames, epochs, batch size) is in the recipe's file under
# config/vast/finetune_cfg/; results go to <pretrain_dir>/downstream/<recipe>.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/recipes.sh"
run_recipes "retrieval-msrvtt retrieval-vatex retrieval-valor32k retrieval-lsmdc retrieval-youcook \
retrieval-didemo retrieval-activitynet retrieval-clothov2 retrieval-audiocaps retrieval-mscoco retrieval-flickr \
retrieval-msvd" "$@"
