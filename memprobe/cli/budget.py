"""The memory budget a plan is for: given, or what the detected GPU has free."""

from __future__ import annotations

from memprobe.core.errors import InvalidInputError
from memprobe.core.gpus import GpuInfo, detect_gpu
from memprobe.core.units import format_bytes


def resolve_budget(gpu_mem: int | None) -> tuple[int, GpuInfo | None]:
    """Bytes to plan for, and the GPU detected (if any).

    Without ``--gpu-mem``, the detected GPU's *free* memory: what other processes hold is
    not this run's to plan with.
    """
    gpu = detect_gpu()
    if gpu_mem is not None:  # bytes: click's ByteSize read the text
        return gpu_mem, gpu
    if gpu is None:
        raise InvalidInputError("no GPU detected here: give the memory to plan for, e.g. --gpu-mem 24GiB")
    return gpu.free_memory_bytes or gpu.total_memory_bytes, gpu


def budget_note(budget_bytes: int, gpu: GpuInfo | None, gpu_mem: int | None) -> str:
    """Say where the budget came from, with the card's total beside its free memory."""
    if gpu_mem is not None or gpu is None:
        return f"budget {format_bytes(budget_bytes)} (given)"
    return (
        f"budget {format_bytes(budget_bytes)}: free on {gpu.name} now "
        f"(total {format_bytes(gpu.total_memory_bytes)})"
    )
