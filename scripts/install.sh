#!/usr/bin/env bash
# Create .venv and install memprobe with the right PyTorch build for this machine.
#
# Torch choice, in order:
#   1. a torch the environment already has (a user's CUDA build is kept as it is);
#   2. an NVIDIA GPU present: the default PyPI build (CUDA);
#   3. no GPU: the CPU build, from a local wheel if pip can find one, else from PyTorch's CPU index.
# An unpinned `pip install torch` on a machine without a GPU would pull several GB of CUDA libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${MEMPROBE_VENV:-.venv}
TORCH_CPU_VERSION=${MEMPROBE_TORCH_CPU_VERSION:-2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  # System site-packages stay visible so a torch the user already installed is reused.
  "$PY" -m venv --system-site-packages "$VENV"
fi
pip() { "$VENV/bin/python" -m pip "$@"; }

if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "memprobe install: using the installed torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "memprobe install: NVIDIA GPU found, installing the CUDA build of torch"
  pip install -q torch
else
  echo "memprobe install: no GPU found, installing the CPU build of torch"
  # A CPU wheel that pip's find-links already hold is preferred (no download); else PyTorch's CPU index.
  if pip download -q --no-deps --no-index -d "$(mktemp -d)" "torch==$TORCH_CPU_VERSION+cpu" >/dev/null 2>&1; then
    pip install -q "torch==$TORCH_CPU_VERSION+cpu"
  else
    # Only torch itself comes from PyTorch's CPU index; its dependencies from the configured index.
    pip install -q --no-deps "torch==$TORCH_CPU_VERSION+cpu" --index-url https://download.pytorch.org/whl/cpu
    pip install -q "torch==$TORCH_CPU_VERSION+cpu"
  fi
fi
# Everything is installed against the torch chosen above (the constraint pins it).
constraint=$(mktemp)
"$VENV/bin/python" -c 'import torch; print(f"torch=={torch.__version__}")' > "$constraint"
torch_before=$(cat "$constraint")

# The nnunet extra (MEMPROBE_NNUNET=1, which `make install` sets) is resolved with the rest in
# one pip run. nnunetv2 pulls timm and torchvision, whose PyPI builds target CUDA torch: a
# torchvision that cannot load beside the installed torch (a CUDA build next to a CPU torch) is
# removed with timm, since nnU-Net's planners, networks and predictor import neither.
if [ "${MEMPROBE_NNUNET:-0}" = "1" ]; then
  if ! pip install -q -c "$constraint" -e ".[dev,nnunet]"; then
    echo "memprobe install: nnunetv2 cannot be installed beside this torch; installing its network library only"
    pip install -q -c "$constraint" -e ".[dev]"
    pip install -q -c "$constraint" --no-deps dynamic-network-architectures
  fi
  if ! "$VENV/bin/python" -c "import torchvision" >/dev/null 2>&1 && pip show -q torchvision >/dev/null 2>&1; then
    echo "memprobe install: the torchvision build does not match $torch_before; removing torchvision and timm (nnU-Net does not need them)"
    pip uninstall -q -y torchvision timm
  fi
else
  pip install -q -c "$constraint" -e ".[dev]"
fi
torch_after=$("$VENV/bin/python" -c 'import torch; print(f"torch=={torch.__version__}")')
rm -f "$constraint"
if [ "$torch_after" != "$torch_before" ]; then
  echo "memprobe install: installing memprobe changed $torch_before to $torch_after" >&2
  exit 1
fi
