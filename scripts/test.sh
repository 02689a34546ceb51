#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint, then run the test suite; arguments go to pytest
# (e.g. `./scripts/test.sh -m "not slow"` for the fast unit tests alone).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python -m ruff check protocol service workers tests scripts
exec .venv/bin/python -m pytest -q "$@"
