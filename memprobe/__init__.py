"""memprobe: measured GPU-memory planning for 3D medical-image segmentation.

Importing memprobe is instant: every name below is imported when first used, estimates come
from stored calibrations and never import torch; only ``probe`` and ``calibrate`` do.
"""

from __future__ import annotations

import importlib
from typing import Any

from memprobe.__version__ import __version__

# Public name -> the module that defines it.
_EXPORTS = {
    "estimate": "memprobe.api",
    "max_batch_size": "memprobe.api",
    "max_patch_size": "memprobe.api",
    "probe": "memprobe.api",
    "calibrate": "memprobe.api",
    "max_sw_batch_size": "memprobe.inference.api",
    "estimate_gpu_memory_required": "memprobe.compat",
    "suggest_batch_size": "memprobe.compat",
    "record_step": "memprobe.snapshots.record",
    "report": "memprobe.report_run",
    "check_snapshot": "memprobe.snapshots.check",
    "load_snapshot": "memprobe.snapshots.reader",
    # Results.
    "Estimate": "memprobe.api",
    "BatchPlan": "memprobe.size_planner",
    "PatchPlan": "memprobe.size_planner",
    "MemoryNeed": "memprobe.memory_need",
    "Measurement": "memprobe.measurement",
    "Calibration": "memprobe.calibrated_formula",
    "CalibrationReport": "memprobe.calibration_run",
    "Alternative": "memprobe.alternatives",
    "SnapshotCheck": "memprobe.snapshots.check",
    "ReportContent": "memprobe.report_content",
    # Errors.
    "MemprobeError": "memprobe.errors",
    "InvalidInputError": "memprobe.errors",
    "ModelError": "memprobe.errors",
    "DatabaseError": "memprobe.errors",
    "NoCalibrationError": "memprobe.errors",
    "DeviceUnavailableError": "memprobe.errors",
    "NothingFitsError": "memprobe.errors",
    "StandInCalibrationWarning": "memprobe.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'memprobe' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
