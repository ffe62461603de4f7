#!/usr/bin/env bash
# The whole GPU truth run in one command: `memprobe verify --quick`, then CUDA calibrations of
# MedNeXt and BasicUNet at fp32 and bf16-mixed (24 GiB emulated), all under OUT_DIR.
#
#   scripts/gpu_truth.sh OUT_DIR
#
# Made for one 10-minute command on an H100/H200 that has torch with CUDA but not MONAI: the
# wheels in .whl/ (scripts/fetch_gpu_wheels.sh) are installed first. Every step stops before
# GPU_TRUTH_SECONDS (default 540) have passed since the start, and every measurement is kept
# as it is taken: run the same command again, on the same OUT_DIR, to continue. A failed step
# does not stop the others; the exit code is non-zero if any failed or was cut short.
#
# MEMPROBE_VERIFY_REHEARSAL=1 rehearses the flow on the CPU with a tiny network (no GPU truth).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_truth.sh OUT_DIR}
mkdir -p "$out"
PYTHON=${PYTHON:-python3}
deadline=$((SECONDS + ${GPU_TRUTH_SECONDS:-540}))
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

if [ -n "${MEMPROBE_VERIFY_REHEARSAL:-}" ]; then
  verify_args=(--rehearse --arch tests.tiny_models:tiny_net --precision fp32 --gpu-mem 16MiB)
  archs=(tests.tiny_models:tiny_net) precisions=(fp32) device=trace budget=16MiB
else
  verify_args=(--quick)
  archs=(mednext basicunet) precisions=(fp32 bf16-mixed) device=cuda budget=24GiB
fi

failed=()
# step NAME COMMAND...: run it with the time left, its output shown and kept in OUT_DIR/NAME.log.
step() {
  local name=$1 left=$((deadline - SECONDS))
  shift
  if [ "$left" -le 10 ]; then
    echo "== $name: skipped, out of time (run the same command again to continue)"
    failed+=("$name (not started)")
    return
  fi
  echo "== $name: $*"
  if timeout --signal=TERM --kill-after=15 "$left" "$@" 2>&1 | tee "$out/$name.log"; then
    echo "== $name: ok"
  else
    echo "== $name: FAILED or cut short (exit ${PIPESTATUS[0]}), see $out/$name.log"
    failed+=("$name")
  fi
}

{
  date -u
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  "$PYTHON" - <<'PY' 2>&1 || true
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
print("gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
import monai
print("monai", monai.__version__)
PY
} >"$out/environment.txt"

# Calibrations run in process: --isolate would start a child per probe (about 8 s of imports
# each), more than the slot allows; an OOM is a result either way.
memprobe=("$PYTHON" -m memprobe.cli.main)
step verify "${memprobe[@]}" verify "${verify_args[@]}" --out "$out/verify"
for arch in "${archs[@]}"; do
  for precision in "${precisions[@]}"; do
    step "calibrate_${arch##*:}_$precision" "${memprobe[@]}" calibrate --arch "$arch" --device "$device" \
      --precision "$precision" --gpu-mem "$budget" --db "$out/calibrations.sqlite"
  done
done
step export "${memprobe[@]}" db export --db "$out/calibrations.sqlite" --out "$out/calibrations.json"

if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_truth: ${#failed[@]} steps failed or were cut short: ${failed[*]}"
  exit 1
fi
echo "gpu_truth: all steps done; results in $out"
