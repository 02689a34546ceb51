#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the default job: `hotprune run` plus any arguments given here.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/hotprune run "$@"
