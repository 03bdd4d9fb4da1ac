#!/usr/bin/env bash
# Every check that needs a GPU, in one command (steps and outputs: scripts/gpu_check.py).
#
#   bash scripts/gpu_check.sh                  # CUDA machine: results/gpu/, at most 8 minutes
#   bash scripts/gpu_check.sh --cpu-dry-run    # tiny, on the CPU: results/gpu_dry_run/, < 3 min
#   bash scripts/gpu_check.sh --only notebook  # some steps again, e.g. in a second slot
#
# The GPU machine is offline and lacks smp, nbval and the Jupyter kernel: first, here, run
# `bash scripts/prepare_gpu_payload.sh` (fills the git-ignored .gpu/), then with the device tool,
# from the checkout the session was started in (the tool sends that one):
#   run(command="bash scripts/gpu_check.sh", carry=[".gpu"], timeout_s=540)
# On that machine the wheels go to /tmp/sar-site with pip --target --no-deps (the machine's own
# PyTorch is never touched) and sar is imported from this checkout through PYTHONPATH (it is
# not pip-installed: its dependencies would pull another torch). When $OUT is set (the device
# tool's folder that comes back), REPORT.md and gpu_results.tgz are copied there.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export SAR_SITE="${SAR_SITE:-/tmp/sar-site}"

dry_run=0
for arg in "$@"; do [ "$arg" = "--cpu-dry-run" ] && dry_run=1; done
out_dir=results/gpu
[ "$dry_run" = 1 ] && out_dir=results/gpu_dry_run

install_payload() {
  echo "[gpu_check.sh] installing $(ls .gpu/wheels/*.whl | wc -l) wheels into $SAR_SITE"
  "$PYTHON" -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$SAR_SITE" .gpu/wheels/*.whl \
    || echo "[gpu_check.sh] the payload install failed; the payload step will say what is missing"
  export PYTHONPATH="$SAR_SITE${PYTHONPATH:+:$PYTHONPATH}"
}

copy_to_device_out() {
  if [ -n "${OUT:-}" ] && [ -d "$OUT" ] && [ -f "$out_dir/REPORT.md" ]; then
    cp "$out_dir/REPORT.md" "$OUT/"
    tar -czf "$OUT/gpu_results.tgz" --exclude=work -C "$(dirname "$out_dir")" \
      "$(basename "$out_dir")"
  fi
}

if [ "$dry_run" = 0 ] && [ -d .gpu/wheels ]; then install_payload; fi
if [ -d .gpu/fashion-mnist ] && [ -z "${SAR_DATA_DIR:-}" ]; then
  export SAR_DATA_DIR="$PWD/.gpu/fashion-mnist"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PYTHON" scripts/gpu_check.py "$@"
status=$?
copy_to_device_out
exit "$status"
