#!/usr/bin/env bash
# Sets up what serving needs, and nothing more; idempotent.
#   Python: a virtual environment in .venv with radrouter installed (editable) from this
#   checkout: onnxruntime and the DICOM, HTTP and worklist libraries. No torch, no test tools,
#   no Debian packages beyond Python's own venv module.
# scripts/setup.sh adds what the tests need to the same .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: radrouter needs Python 3.11 or newer (set PYTHON=...)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        echo "setup: installing Debian package python3-venv"
        SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    fi
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi

stamp=.venv/.radrouter-serve
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing radrouter (serving only: no torch, no test tools)"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e .
    touch "$stamp"
fi
