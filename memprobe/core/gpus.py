"""Detect the GPU without importing torch (NVML), so planning stays instant."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuInfo:
    name: str
    total_memory_bytes: int
    compute_capability: tuple[int, int] | None = None
    free_memory_bytes: int | None = None  # at detection time; other processes may hold the rest

    @property
    def supports_bf16(self) -> bool:
        """bf16 tensor cores arrived with Ampere (compute capability 8.0).

        A GPU named but not detected (planning for another machine) has no capability: its
        name decides, for the Ampere-or-later families people name.
        """
        if self.compute_capability is not None:
            return self.compute_capability >= (8, 0)
        return any(family in f" {self.name.upper()} " for family in _BF16_FAMILIES)


# Ampere and later data-centre and workstation names, as NVML spells them (" A100-SXM4-80GB").
_BF16_FAMILIES = (
    " A100", " A800", " A10", " A30", " A40", " A16", " A2 ", " H100", " H200", " H800", " H20",
    " GH200", " B100", " B200", " GB200", " L4", " L40", " RTX 30", " RTX 40", " RTX 50", " RTX A",
    " ADA GENERATION",
)  # fmt: skip


def detect_gpu(index: int = 0) -> GpuInfo | None:
    """The first GPU's name, memory and capability via NVML; None without a GPU or driver.

    ``MEMPROBE_NO_GPU_DETECT=1`` hides any GPU (tests, and planning for another machine).
    """
    if os.environ.get("MEMPROBE_NO_GPU_DETECT") or not _nvidia_driver_present():
        return None
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            return _read_gpu(pynvml, pynvml.nvmlDeviceGetHandleByIndex(index))
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None


def detect_gpus() -> list[GpuInfo]:
    """Every GPU's name, memory (total and free) and capability via NVML; empty without a GPU or driver."""
    if os.environ.get("MEMPROBE_NO_GPU_DETECT") or not _nvidia_driver_present():
        return []
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
            return [_read_gpu(pynvml, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return []


def _read_gpu(pynvml: Any, handle: Any) -> GpuInfo:
    name = pynvml.nvmlDeviceGetName(handle)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        capability = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
    except pynvml.NVMLError:
        capability = None
    return GpuInfo(
        name.decode() if isinstance(name, bytes) else name,
        int(memory.total),
        capability,  # type: ignore[arg-type]
        int(memory.free),
    )


def _nvidia_driver_present() -> bool:
    """Skip loading NVML (tens of milliseconds) where no NVIDIA driver is installed."""
    if sys.platform != "linux":
        return True  # no cheap check elsewhere: ask NVML
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def nvml_driver_version() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML library or no driver: the version is simply unknown
        return None
    return version.decode() if isinstance(version, bytes) else str(version)


def nvml_process_used_bytes(pid: int, index: int = 0) -> int | None:
    """Device memory NVML reports for process ``pid`` on GPU ``index``; None where it cannot say."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML, no driver, or a container that hides processes
        return None
    used = [p.usedGpuMemory for p in processes if p.pid == pid and p.usedGpuMemory]
    return int(used[0]) if used else None


def target_gpu(device: str | None) -> GpuInfo | None:
    """The GPU a plan is for: the detected one by default, one named by ``device``, or none (trace)."""
    if device is None:
        return detect_gpu()
    if device in ("trace", "cpu"):
        return None
    detected = detect_gpu()
    return detected if detected and detected.name == device else GpuInfo(device, 0)


def measuring_gpu(device: str | None) -> GpuInfo | None:
    """The GPU a measurement on ``device`` runs on (its precision default follows it): none on trace or cpu."""
    if device in ("trace", "cpu"):
        return None
    return detect_gpu()
