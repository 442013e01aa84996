#!/usr/bin/env bash
# Label a folder of videos into VAST-27M-style shards (subtitles, vision/audio captions, omni captions):
#   bash scripts/vast/label_corpus.sh VIDEO_DIR OUTPUT_DIR [--key value ...]
# Settings and their defaults: config/vast/captioner_cfg/label-corpus.json (every key is an option,
# e.g. --vision_captioner DIR --audio_captioner DIR --llm gemma3-270m --engine ray --shard_size 500).
# Paths are taken from the current folder (then from the project root). Exit status: 0 all labeled,
# 3 some files skipped (listed in OUTPUT_DIR/report.json), 2 a mistake in the input or settings.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
    PY=python
elif [ -x "$root/.venv/bin/python" ]; then
    PY="$root/.venv/bin/python"
else
    echo "no Python environment: run 'bash preinstall.sh' first" >&2
    exit 1
fi
exec "$PY" -m vast.labeling.pipeline "$@"
