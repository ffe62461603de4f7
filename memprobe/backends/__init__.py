"""Measuring backends: run a training step or a sliding-window inference and report its peak memory; chosen by name here."""

from __future__ import annotations

from memprobe.backends.base import Backend, InferenceBackend
from memprobe.core.enums import DeviceKind, parse_enum
from memprobe.core.errors import DeviceUnavailableError

__all__ = [
    "Backend",
    "InferenceBackend",
    "cuda_available",
    "default_device_kind",
    "get_backend",
    "get_inference_backend",
]


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def default_device_kind() -> DeviceKind:
    """CUDA when a GPU is present, else the trace backend."""
    return DeviceKind.CUDA if cuda_available() else DeviceKind.TRACE


def get_backend(
    device: str | DeviceKind | None = None,
    *,
    budget_bytes: int | None = None,
    isolate: bool = False,
    bucket_cap_mb: float | None = None,
    gradient_as_bucket_view: bool = False,
) -> Backend:
    """Create the backend named ``device`` (default: cuda if available, else trace).

    ``budget_bytes`` caps the memory a CUDA step may use; trace and cpu steps report their
    peak, and callers compare it with the budget. ``isolate`` runs each probe in a child
    process, so a crash of the step becomes a failed measurement instead of ending the run.
    ``bucket_cap_mb`` and ``gradient_as_bucket_view`` are DDP's, for a step that is one rank
    of DDP (its configuration says: ``StepConfig.strategy``).
    """
    ddp: dict[str, object] = {"gradient_as_bucket_view": gradient_as_bucket_view}
    if bucket_cap_mb is not None:
        ddp["bucket_cap_mb"] = bucket_cap_mb
    kind = default_device_kind() if device is None else parse_enum(DeviceKind, str(device), "device")
    if isolate:
        from memprobe.backends.isolated import IsolatedBackend

        return IsolatedBackend(get_backend(kind, budget_bytes=budget_bytes), budget_bytes=budget_bytes)
    if kind is DeviceKind.CUDA:
        if not cuda_available():
            raise DeviceUnavailableError(
                "no CUDA GPU is available here: use --device trace to measure without a GPU"
            )
        from memprobe.backends.rank_launcher import PooledCudaBackend

        # Data-parallel configurations share one pool of ranks, started on the first and kept
        # until the backend is closed (or collected): a calibration starts its ranks once.
        return PooledCudaBackend(budget_bytes=budget_bytes, **ddp)  # type: ignore[arg-type]
    from memprobe.backends.trace_backend import CpuBackend, TraceBackend

    return (TraceBackend if kind is DeviceKind.TRACE else CpuBackend)(**ddp)  # type: ignore[arg-type]


def get_inference_backend(
    device: str | DeviceKind | None = None, *, isolate: bool = False
) -> InferenceBackend:
    """The sliding-window inference backend on ``device`` (default: cuda if available, else trace).

    ``isolate`` runs each inference in a child process, as it runs a training step's.
    """
    kind = default_device_kind() if device is None else parse_enum(DeviceKind, str(device), "device")
    if isolate:
        from memprobe.backends.isolated import IsolatedBackend

        return IsolatedBackend(get_inference_backend(kind))
    from memprobe.backends.sliding_window import SlidingWindowBackend

    return SlidingWindowBackend(kind)
