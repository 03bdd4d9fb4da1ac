#!/usr/bin/env bash
# Fill .gpu/ (git-ignored) with what scripts/gpu_check.sh needs on the offline GPU machine:
#   .gpu/wheels/        the wheels pinned in scripts/gpu_payload.txt (CPython 3.12, manylinux
#                       x86_64, no dependencies: the image already has PyTorch and the rest)
#   .gpu/fashion-mnist/ the four Fashion-MNIST files (from /usr/share/datasets/fashion-mnist)
# then checks the folder (scripts/gpu_payload.py check) and prints what would travel: the
# repository plus .gpu must stay under the device tool's 64 MiB.
#
#   bash scripts/prepare_gpu_payload.sh          # here, with PyPI reachable; idempotent
#
# Then, through the device tool (a GPU slot of ~15 minutes, machine start included), from the
# checkout the session was started in (the tool sends that checkout, not a helper's worktree):
#   run(command="bash scripts/gpu_check.sh", carry=[".gpu"], timeout_s=540)
# The check writes results/gpu/ there and copies REPORT.md and gpu_results.tgz to $OUT; its
# stdout ends with the report. Steps can be rerun in a second slot:
#   run(command="bash scripts/gpu_check.sh --only notebook", carry=[".gpu"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
FASHION_MNIST_DIR="${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
LIMIT_MIB=64
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64)

download_wheels() {
  # into a fresh folder, so that a version dropped from the list leaves no stale wheel behind
  rm -rf .gpu/wheels.new
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]/#/--platform=}" -d .gpu/wheels.new \
    -r scripts/gpu_payload.txt
  rm -rf .gpu/wheels
  mv .gpu/wheels.new .gpu/wheels
}

copy_fashion_mnist() {
  mkdir -p .gpu/fashion-mnist
  for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
              t10k-labels-idx1-ubyte; do
    cp -u "$FASHION_MNIST_DIR/$name.gz" .gpu/fashion-mnist/
  done
}

find_python312() {
  local candidate
  for candidate in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      command -v "$candidate"
      return
    fi
  done
}

import_binaries_with_python312() {
  # the compiled wheels must load on CPython 3.12: try them where such an interpreter exists
  local py312 site
  py312="$(find_python312)"
  if [ -z "$py312" ]; then
    echo "no python3.12 here: the compiled wheels are checked by their tags only"
    return
  fi
  site="$(mktemp -d)"
  "$py312" -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile \
    --target "$site" .gpu/wheels/*.whl
  # only the compiled ones: the pure-Python wheels import what the image has and this lacks
  PYTHONPATH="$site" "$py312" -c "import zmq, tornado.speedups, rpds, wcwidth
print('CPython 3.12 ($py312) loads the compiled wheels: pyzmq', zmq.__version__,
      '| tornado', tornado.version, '| rpds-py | wcwidth', wcwidth.__version__)"
  rm -rf "$site"
}

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

report_size() {
  # what the device tool sends: tracked and untracked-not-ignored files, plus the carried .gpu
  local tree payload total
  tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null \
         | tail -1 | cut -f1)
  payload=$(du -sb .gpu | cut -f1)
  total=$((tree + payload))
  echo "travels: repository $(mib "$tree") MiB + .gpu $(mib "$payload") MiB" \
       "(wheels $(mib "$(du -sb .gpu/wheels | cut -f1)"), Fashion-MNIST" \
       "$(mib "$(du -sb .gpu/fashion-mnist | cut -f1)")) = $(mib "$total") MiB of $LIMIT_MIB MiB"
  if [ "$total" -ge $((LIMIT_MIB * 1048576)) ]; then
    echo "too large for the device tool: carry less" >&2
    return 1
  fi
}

mkdir -p .gpu
git rev-parse --short HEAD > .gpu/commit 2>/dev/null || true  # the GPU copy has no .git
echo "[prepare] downloading the wheels in scripts/gpu_payload.txt"
download_wheels
echo "[prepare] copying Fashion-MNIST from $FASHION_MNIST_DIR"
copy_fashion_mnist
echo "[prepare] checking .gpu/"
"$PYTHON" scripts/gpu_payload.py check .gpu
import_binaries_with_python312
report_size
