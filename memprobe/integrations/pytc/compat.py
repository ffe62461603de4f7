"""Drop-in replacements for the PyTorch Connectomics planner's API, answered from calibrations.

Same names and parameters as ``connectomics.config`` (``gpu_utils`` and ``auto_config``): replace
``from connectomics.config import ...`` by ``from memprobe.integrations.pytc.compat import ...``. The analytic guess
is replaced by the calibrated formula of ``arch`` (MedNeXt, the planner's default network).
``mixed_precision=True`` means fp16 autocast, as the planner's "16-mixed".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from memprobe.api import estimate, max_batch_size
from memprobe.core.checks import check_bool, check_fraction, check_gigabytes
from memprobe.core.errors import NothingFitsError
from memprobe.integrations.pytc.config_file import auto_plan_config
from memprobe.integrations.pytc.gpu import get_gpu_info, print_gpu_info
from memprobe.integrations.pytc.planner import AutoConfigPlanner, AutoPlanResult
from memprobe.integrations.pytc.schema import Config

__all__ = [
    "AutoConfigPlanner",
    "AutoPlanResult",
    "Config",
    "auto_plan_config",
    "estimate_gpu_memory_required",
    "get_gpu_info",
    "print_gpu_info",
    "suggest_batch_size",
]

_GB = 1024**3  # the planner's "GB" is 1024^3 bytes


def _precision(mixed_precision: bool) -> str:
    return "fp16-mixed" if check_bool(mixed_precision, "mixed_precision") else "fp32"


def estimate_gpu_memory_required(
    patch_size: Sequence[int],
    batch_size: int,
    in_channels: int = 1,
    out_channels: int = 2,
    base_features: int = 32,
    num_pool_stages: int = 4,
    deep_supervision: bool = False,
    mixed_precision: bool = True,
    *,
    arch: str = "mednext",
    db: str | Path | None = None,
    device: str | None = None,
) -> float:
    """Estimated GPU memory in GB for training (``base_features``/``num_pool_stages`` are fixed by ``arch``)."""
    result = estimate(
        arch,
        patch_size,
        batch_size,
        _precision(mixed_precision),
        in_channels=in_channels,
        out_channels=out_channels,
        deep_supervision=deep_supervision,
        db=db,
        device=device,
    )
    return result.peak_allocated_bytes / _GB


def suggest_batch_size(
    patch_size: Sequence[int],
    in_channels: int,
    out_channels: int,
    available_gpu_memory_gb: float,
    base_features: int = 32,
    num_pool_stages: int = 4,
    deep_supervision: bool = False,
    mixed_precision: bool = True,
    safety_margin: float = 0.85,
    *,
    arch: str = "mednext",
    db: str | Path | None = None,
    device: str | None = None,
) -> int:
    """The largest batch that fits ``available_gpu_memory_gb * safety_margin``, at least 1 as the planner gives."""
    try:
        plan = max_batch_size(
            arch,
            patch_size,
            check_gigabytes(available_gpu_memory_gb, "available_gpu_memory_gb") * _GB,
            _precision(mixed_precision),
            safety=check_fraction(safety_margin, "safety_margin"),
            in_channels=in_channels,
            out_channels=out_channels,
            deep_supervision=deep_supervision,
            db=db,
            device=device,
        )
    except NothingFitsError:
        return 1  # the replaced planner's contract: at least 1, even when it will not fit
    return plan.batch
