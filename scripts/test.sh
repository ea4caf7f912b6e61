#!/usr/bin/env bash
# Installs era-rl with every adapter and the test tools, then runs the test suite (CI runs exactly this).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/core -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# Real Fashion-MNIST for the timm data test (Debian package); its test is skipped where it cannot be had.
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 ||
        echo "note: could not install dataset-fashion-mnist; its test will be skipped" >&2
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[all,test]"
export HF_HUB_OFFLINE=1
exec "$PYTHON" -m pytest -m "not slow" "$@"
