#!/usr/bin/env bash
# Sets up (if needed) and starts radrouter on the shipped default config:
# DICOM node RADROUTER on port 11112, HTTP API on 127.0.0.1:8080, data in ./var.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/radrouter serve "$@"
