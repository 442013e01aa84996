#!/usr/bin/env bash
# The whole chain on the embedded demo corpus: build it under datasets/demo/, then run each demo
# config (config/vast/demo/) and print a summary. Extra arguments go to `python -m vast.demo`.
set -euo pipefail
source "$(dirname "$0")/env.sh"
exec "$PY" -m vast.demo "$@"
