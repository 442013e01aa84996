#!/usr/bin/env bash
# Caption your videos with the VAST vision captioner (3 sampled captions per clip, 8 frames):
#   bash scripts/vast/vision_captioner.sh [--pretrain_dir output/vast/vision_captioner] [--key value ...]
# Reads datasets/annotations/yourdata/meta.json ([{"video_id": ...}]) and datasets/srcdata/yourdata/videos;
# writes output/vast/vision_captioner/generation/log/captions_*.json. Settings:
# config/vast/captioner_cfg/caption-generation-vision.json. To label a whole corpus (captions,
# subtitles, omni captions into shards) use label_corpus.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
config=config/vast/captioner_cfg/caption-generation-vision.json
pretrain_dir=output/vast/vision_captioner
if [ "${1:-}" = "--pretrain_dir" ]; then pretrain_dir="$2"; shift 2; fi
"$PY" -m vast.preflight --config "$config" --pretrain_dir "$pretrain_dir" "$@" || exit 2
exec bash scripts/vast/train.sh --config "$config" --pretrain_dir "$pretrain_dir" \
    --output_dir "$pretrain_dir/generation" "$@"
