#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint, then run the test suite in two processes (pytest-xdist): a service test
# spends much of its time waiting on its run's processes, and one process used about 1.1 of two cores.
# --dist loadfile keeps each file in one process, so a module's shared run is made once. Arguments go to
# pytest (e.g. `./scripts/test.sh -m "not slow"` for the fast unit tests alone, `-n 0` for one process).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python -m ruff check protocol service workers tests scripts
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
