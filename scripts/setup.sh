#!/usr/bin/env bash
# Installs everything radrouter and its tests need on a fresh Debian machine; idempotent.
#   Debian: orthanc (the test PACS), dcmtk (reference SCU/SCP), dicom3tools (dciodvfy),
#           chromium + chromium-driver (the headless browser the worklist page test drives).
#   Python: a virtual environment in .venv with radrouter and its dev extras (torch pinned).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -x /usr/sbin/Orthanc ] || [ -x /usr/bin/Orthanc ] || need_apt+=(orthanc)
[ -x /usr/bin/storescu ] || need_apt+=(dcmtk)
[ -x /usr/bin/dciodvfy ] || need_apt+=(dicom3tools)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
    # The Debian package may start a system Orthanc; tests start their own on free ports.
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.radrouter-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing Python packages (torch==2.13.0 CPU build)"
    .venv/bin/pip install -q --upgrade pip
    # torch first and pinned, so nothing pulls a CUDA build from the index.
    .venv/bin/pip install -q "torch==2.13.0"
    .venv/bin/pip install -q -e '.[dev]'
    touch "$stamp"
fi
