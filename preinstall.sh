#!/usr/bin/env bash
# Installs what vast needs: Debian packages (ffmpeg, espeak-ng, sox, a Java runtime for caption
# metrics, chromium for the browser test) when missing, and the pinned Python stack into ./.venv, or into the active
# virtualenv/conda environment when one is active. Idempotent: a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")"

# --- system packages -------------------------------------------------------------------------
missing=()
command -v ffmpeg >/dev/null || missing+=(ffmpeg)
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v sox >/dev/null || missing+=(sox)
command -v java >/dev/null || missing+=(default-jre-headless)
command -v chromium >/dev/null || missing+=(chromium)  # the search page's browser test (Playwright drives it)
if [ ${#missing[@]} -gt 0 ]; then
    echo "preinstall: installing Debian packages: ${missing[*]}"
    sudo_cmd=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "preinstall: need root or sudo to install ${missing[*]}" >&2; exit 1; }
        sudo_cmd=(sudo)
    fi
    "${sudo_cmd[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- python environment ----------------------------------------------------------------------
if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
    python=python
    echo "preinstall: using the active environment ($(command -v python))"
else
    if [ ! -x .venv/bin/python ]; then
        base_python=${PYTHON:-python3}
        "$base_python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
            || { echo "preinstall: Python 3.10 or newer is needed ($base_python is older)" >&2; exit 1; }
        "$base_python" -m venv .venv
    fi
    python=.venv/bin/python
fi

prefix=$("$python" -c 'import sys; print(sys.prefix)')
stamp="$prefix/.vast-preinstall"
wanted=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && "$python" -c 'import vast' 2>/dev/null; then
    echo "preinstall: already up to date ($prefix)"
    exit 0
fi

"$python" -m pip install -q --upgrade pip
"$python" -m pip install -q -r requirements.txt
"$python" -m pip install -q --no-deps -e .
echo "$wanted" > "$stamp"
echo "preinstall: done ($prefix)"
