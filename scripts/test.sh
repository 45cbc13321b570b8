#!/usr/bin/env bash
# Sets up everything (if needed: scripts/setup.sh, Debian test tools and dev extras included),
# then runs lint (ruff), types (mypy) and every test (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export TCP_NODELAY=1
echo "== ruff"; .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/python -m pytest "$@"
