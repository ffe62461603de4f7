"""Count live tensor storage the way the CUDA caching allocator counts ``allocated`` bytes.

Every tensor an op returns is looked at once; a storage not seen before is charged its size,
rounded up to the allocator's 512-byte block, and credited back when Python finalizes it.
This works the same on fake tensors (nothing is allocated) and on real CPU tensors.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

CUDA_BLOCK_BYTES = 512


def cuda_block_size(nbytes: int) -> int:
    """Round a request up the way the CUDA caching allocator does (0 stays 0)."""
    if nbytes <= 0:
        return 0
    return -(-nbytes // CUDA_BLOCK_BYTES) * CUDA_BLOCK_BYTES


class AllocationTracker(TorchDispatchMode):
    """Track current and peak live storage bytes, overall and per named phase."""

    def __init__(self) -> None:
        super().__init__()
        self.current_bytes = 0
        self.peak_bytes = 0
        self.phase_peaks_bytes: dict[str, int] = {}
        self._phase: str | None = None
        self._phase_peak = 0
        self._live: dict[int, int] = {}  # storage address -> charged bytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf)
        return out

    def track(self, tensor: torch.Tensor) -> None:
        """Charge the tensor's storage if it is new; views of a known storage cost nothing."""
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._live:
            return
        charged = cuda_block_size(storage.nbytes())
        self._live[key] = charged
        weakref.finalize(storage, self._release, key)
        self.current_bytes += charged
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        self._phase_peak = max(self._phase_peak, self.current_bytes)

    def track_module(self, module: torch.nn.Module) -> None:
        """Charge a module's parameters and buffers (made before tracking started)."""
        for tensor in [*module.parameters(), *module.buffers()]:
            self.track(tensor)

    def _release(self, key: int) -> None:
        self.current_bytes -= self._live.pop(key, 0)

    def reset_peak(self) -> None:
        """Start counting the peak afresh from what is live now."""
        self.peak_bytes = self.current_bytes
        self._phase_peak = self.current_bytes

    def start_phase(self, name: str | None) -> None:
        """Close the current phase (recording its peak) and start ``name``."""
        if self._phase is not None:
            self.phase_peaks_bytes[self._phase] = self._phase_peak
        self._phase = name
        self._phase_peak = self.current_bytes
