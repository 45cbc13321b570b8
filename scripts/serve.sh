#!/usr/bin/env bash
# Sets up what serving needs (if not done yet) and starts radrouter on the shipped default
# config: DICOM node RADROUTER on port 11112, HTTP API on 127.0.0.1:8080, data in ./var.
# Installs no test tools and no torch (scripts/test.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-serve.sh
exec .venv/bin/radrouter serve "$@"
