"""PyTorch Connectomics' ``get_gpu_info`` and ``print_gpu_info``, read through NVML without torch."""

from __future__ import annotations

import os
from typing import Any

from memprobe.core.gpus import GpuInfo, detect_gpus

_GB = 1024**3  # the planner's "GB" is 1024^3 bytes


def gpu_info_dict(gpus: list[GpuInfo]) -> dict[str, Any]:
    """The dictionary PyTorch Connectomics' ``get_gpu_info`` returns, for ``gpus``."""
    return {
        "cuda_available": bool(gpus),
        "num_gpus": len(gpus),
        "gpu_names": [gpu.name for gpu in gpus],
        "total_memory_gb": [gpu.total_memory_bytes / _GB for gpu in gpus],
        "available_memory_gb": [
            (gpu.free_memory_bytes if gpu.free_memory_bytes is not None else gpu.total_memory_bytes) / _GB
            for gpu in gpus
        ],
        "compute_capability": [gpu.compute_capability for gpu in gpus],
    }


def get_gpu_info() -> dict[str, Any]:
    """GPU count, names and memory, as PyTorch Connectomics' ``get_gpu_info`` gives them.

    Keys: ``cuda_available``, ``num_gpus``, ``gpu_names``, ``total_memory_gb`` and
    ``available_memory_gb`` (lists, one entry a GPU, in GB of 1024^3 bytes), and
    ``compute_capability``. Read by NVML, so torch is never imported and no CUDA context is
    created; ``cuda_available`` means an NVIDIA driver sees at least one GPU, and
    ``available_memory_gb`` is the memory no process holds right now.
    """
    return gpu_info_dict(detect_gpus())


def system_memory_gb() -> tuple[float, float] | None:
    """Total and available RAM in GB, where the OS says (Linux, macOS); else None."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        available = os.sysconf("SC_AVPHYS_PAGES") * page
    except (AttributeError, ValueError, OSError):
        return None
    return total / _GB, available / _GB


def format_gpu_info(info: dict[str, Any], ram: tuple[float, float] | None) -> str:
    """The text ``print_gpu_info`` prints: each GPU, then system RAM."""
    lines = ["=" * 60, "GPU Information", "=" * 60]
    if not info["cuda_available"]:
        lines.append("No NVIDIA GPU detected. Training will use the CPU.")
    else:
        lines += [f"Number of GPUs: {info['num_gpus']}", ""]
        for index in range(info["num_gpus"]):
            lines += [
                f"GPU {index}:",
                f"  Name: {info['gpu_names'][index]}",
                f"  Total Memory: {info['total_memory_gb'][index]:.2f} GB",
                f"  Available Memory: {info['available_memory_gb'][index]:.2f} GB",
                "",
            ]
    if ram is not None:
        lines.append(f"System RAM: {ram[0]:.1f} GB total, {ram[1]:.1f} GB available")
    lines.append("=" * 60)
    return "\n".join(lines)


def print_gpu_info() -> None:
    """Print the GPUs and system RAM, as PyTorch Connectomics' ``print_gpu_info`` does."""
    print(format_gpu_info(get_gpu_info(), system_memory_gb()))
