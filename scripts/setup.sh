#!/usr/bin/env bash
# Create ./.venv with the package, the notebooks' and the tests' dependencies (idempotent),
# and install the offline Fashion-MNIST Debian package where apt-get is available.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist; } >/dev/null; then
    echo "note: could not install dataset-fashion-mnist; the first data access downloads it into data/ with torchvision" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[dev]"
"$VENV/bin/python" -c "import sar; print('sar', sar.__version__, 'installed in $VENV')"
