"""CUDA calls verify needs beyond the backend's ``CudaRuntime``: context size, memory history, cuDNN mode.

Tests and rehearsals inject their own ``CudaExtras``; ``TorchCudaExtras`` is the real one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from memprobe.verify.results import ContextSize

Snapshot = dict[str, Any]  # shaped like torch.cuda.memory._snapshot()
HISTORY_MAX_ENTRIES = 200_000
STACKS_VARIABLE = "MEMPROBE_VERIFY_STACKS"


class CudaExtras(Protocol):
    def available(self) -> bool:
        """Whether a CUDA GPU is present."""
        ...

    def context_size(self) -> ContextSize:
        """Measure the context: call before anything else in the process touches the GPU."""
        ...

    def record_history(self, run: Callable[[], object]) -> Snapshot:
        """Run ``run`` with the allocator's memory history on; return the snapshot taken after it."""
        ...

    def cudnn_benchmark(self, enabled: bool) -> contextlib.AbstractContextManager[None]:
        """Set ``torch.backends.cudnn.benchmark`` inside the block, restoring it after."""
        ...


def _nvml_used_bytes() -> int | None:
    """Device memory in use (all processes), read without creating a CUDA context."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML library or driver: the context size is then unknown
        return None


class TorchCudaExtras:
    """The real calls, on the current CUDA device."""

    def __init__(self, stacks: str | None = None) -> None:
        # C++ frames name cuDNN and cuBLAS workspaces exactly, but symbolising them at snapshot
        # time can take minutes: Python frames unless MEMPROBE_VERIFY_STACKS=all asks for both.
        self.stacks = stacks or os.environ.get(STACKS_VARIABLE, "python")

    def available(self) -> bool:
        import torch

        return torch.cuda.is_available()

    def context_size(self) -> ContextSize:
        import torch

        used_before = _nvml_used_bytes()
        torch.cuda.init()
        tiny = torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        reserved = torch.cuda.memory_reserved()
        del tiny
        return ContextSize(total, used_before, total - free, reserved)

    def record_history(self, run: Callable[[], object]) -> Snapshot:
        from torch.cuda import memory

        memory._record_memory_history(max_entries=HISTORY_MAX_ENTRIES, stacks=self.stacks)
        try:
            run()
            return memory._snapshot()  # type: ignore[no-any-return]
        finally:
            memory._record_memory_history(enabled=None)

    @contextlib.contextmanager
    def cudnn_benchmark(self, enabled: bool) -> Iterator[None]:
        import torch

        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = enabled
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = before
