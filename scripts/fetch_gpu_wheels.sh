#!/usr/bin/env bash
# Download into .whl/ the wheels memprobe needs that the GPU machine's image lacks.
#
# The device image ('cuda', /work/.library/device/KINDS.md) has Python 3.12 with torch (CUDA),
# numpy, scipy, pandas, click, tabulate, pyyaml, einops, nvidia-ml-py and matplotlib, but not
# MONAI (the networks) or platformdirs (the default database location, imported by
# `memprobe calibrate`). Both are pure-Python wheels; MONAI needs only torch and numpy.
# Run here, where pip reaches PyPI; scripts/gpu_truth.sh installs them there (.whl is in .gitignore).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
mkdir -p .whl
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  "monai==${MONAI_VERSION:-1.6.1}" "platformdirs==${PLATFORMDIRS_VERSION:-4.14.8}"
ls -l .whl
