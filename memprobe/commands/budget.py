"""The memory budget a plan is for: given, or the detected GPU's."""

from __future__ import annotations

from memprobe.errors import InvalidInputError
from memprobe.gpu_info import GpuInfo, detect_gpu
from memprobe.units import parse_bytes


def resolve_budget(gpu_mem: str | None) -> tuple[int, GpuInfo | None]:
    """Bytes to plan for, and the GPU detected (if any)."""
    gpu = detect_gpu()
    if gpu_mem is not None:
        return parse_bytes(gpu_mem), gpu
    if gpu is None:
        raise InvalidInputError("no GPU detected here: give the memory to plan for, e.g. --gpu-mem 24GiB")
    return gpu.total_memory_bytes, gpu
