#!/usr/bin/env bash
# The main job: calibrate MedNeXt on the best device present, then suggest a batch for 128^3.
# With a GPU: CUDA, planning for that GPU. Without: the trace backend, planning for a 24 GiB card.
set -euo pipefail
cd "$(dirname "$0")/.."
MEMPROBE=${MEMPROBE:-.venv/bin/memprobe}
if .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  device=cuda; gpu_mem=()
else
  device=trace; gpu_mem=(--gpu-mem 24GiB)
fi
"$MEMPROBE" calibrate --arch mednext --device "$device"
"$MEMPROBE" suggest --arch mednext --patch 128 128 128 --calibrated-on "$( [ "$device" = cuda ] && .venv/bin/python -c 'import torch; print(torch.cuda.get_device_name())' || echo trace)" "${gpu_mem[@]}"
