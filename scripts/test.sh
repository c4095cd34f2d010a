#!/usr/bin/env bash
# Set up (if needed) and run the test suite:  bash scripts/test.sh [pytest args]
set -euo pipefail
source "$(dirname "$0")/_env.sh"
cd "$REPO"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec python -m pytest -q -ra "$@" tests
