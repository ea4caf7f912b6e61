#!/usr/bin/env bash
# Installs era-rl with every adapter and the test tools, then runs the test suite (CI runs exactly this).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/core -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[all,test]"
export HF_HUB_OFFLINE=1
exec "$PYTHON" -m pytest -m "not slow" "$@"
