#!/usr/bin/env bash
# CI's mutation step (called by .ci/run): mutmut on era_core's floor formulas, against tests/core.
# Fails when a mutant of these functions survives. The whole of era_core and the adapter files are run
# by hand with `python scripts/mutation.py <target>` (README, "Tests"): too slow for CI on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
# mutmut comes with the test extra (pip install -e ".[test]"), which scripts/test.sh installs.
PYTHON="${PYTHON:-python3}"
exec "$PYTHON" scripts/mutation.py era_core \
    'era_core.gaussian.x_gaussian_era_log_std*' \
    'era_core.gaussian.x_gaussian_entropy*' \
    'era_core.gaussian.x_max_feasible_target*' \
    'era_core.softmax.x__softmax_era_constants*' \
    'era_core.softmax.x_softmax_era_feasible_range*'
