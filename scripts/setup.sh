#!/usr/bin/env bash
# Create ./.venv with the package, the notebooks', the tests' and the book's dependencies
# (idempotent), and install the offline Fashion-MNIST Debian package and Chromium (for the
# book's browser test) where apt-get is available.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

apt_install() {  # apt_install PACKAGE...: install Debian packages, quietly, where apt-get can
  command -v apt-get >/dev/null || return 1
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } >/dev/null
}

if [ ! -d /usr/share/datasets/fashion-mnist ] && ! apt_install dataset-fashion-mnist; then
  echo "note: could not install dataset-fashion-mnist; the first data access downloads it into data/ with torchvision" >&2
fi
if ! { command -v chromium && command -v chromedriver; } >/dev/null && ! apt_install chromium chromium-driver; then
  echo "note: could not install chromium and chromium-driver; tests/test_book.py skips its browser checks (in CI it fails)" >&2
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[dev,docs]"
"$VENV/bin/python" -c "import sar; print('sar', sar.__version__, 'installed in $VENV')"
