#!/usr/bin/env bash
# Create .venv (once) and install hotprune with its test extras into it, unless the last install saw the
# same pyproject.toml, this script and Python (the stamp): then pip would only spend seconds to change nothing.
# torch is pinned here, not in pyproject.toml: on a CPU machine with the 2.13.0 wheel at hand, nothing else is fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
STAMP=.venv/.hotprune-installed
wanted=$({ cat pyproject.toml scripts/setup.sh; .venv/bin/python -VV; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$wanted" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[test]"
  echo "$wanted" > "$STAMP"
fi
