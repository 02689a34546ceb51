#!/usr/bin/env bash
# Create .venv (once) and install hotprune with its test extras into it.
# torch is pinned to 2.13.0 (pyproject.toml): on a CPU machine with its wheel at hand, nothing else is fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[test]"
