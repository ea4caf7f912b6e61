#!/usr/bin/env bash
# Installs era-rl with its SB3 adapter, then trains SAC-ERA on a MuJoCo task for a short budget with a
# progress bar, evaluates it and writes results JSON and a learning-curve plot.
# Extra arguments go to `python -m sb3_era.main` (see `--help`), e.g. `bash scripts/main.sh --baseline`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[sb3]"
exec "$PYTHON" -m sb3_era.main "$@"
