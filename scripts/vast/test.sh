#!/usr/bin/env bash
# The test suite (what CI runs). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/env.sh"
exec "$PY" -m pytest -q tests "$@"
