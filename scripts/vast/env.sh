# Sourced by the scripts in this folder: picks the Python that preinstall.sh installed into
# (the active virtualenv/conda environment, else ./.venv) and runs from the project root.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
    PY=python
elif [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    echo "no Python environment: run 'bash preinstall.sh' first" >&2
    exit 1
fi
