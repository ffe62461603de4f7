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
    "suggest": "memprobe.suggestion",
    "probe": "memprobe.api",
    "calibrate": "memprobe.api",
    "probe_ranks": "memprobe.api",
    "max_sw_batch_size": "memprobe.inference.api",
    "probe_inference": "memprobe.inference.api",
    "calibrate_inference": "memprobe.inference.api",
    "estimate_gpu_memory_required": "memprobe.integrations.pytc.compat",
    "suggest_batch_size": "memprobe.integrations.pytc.compat",
    "record_step": "memprobe.snapshots.record",
    "report": "memprobe.reporting.run",
    "check_snapshot": "memprobe.snapshots.check",
    "load_snapshot": "memprobe.snapshots.reader",
    "load_measurements": "memprobe.store.frames",
    "load_calibrations": "memprobe.store.frames",
    # Results.
    "Estimate": "memprobe.api",
    "BatchPlan": "memprobe.planning.size_search",
    "PatchPlan": "memprobe.planning.size_search",
    "MemoryNeed": "memprobe.planning.need",
    "MemoryPlan": "memprobe.planning.need",
    "InferencePlan": "memprobe.planning.inference_plan",
    "PeakMeasurement": "memprobe.core.measurement",
    "Measurement": "memprobe.core.measurement",
    "InferenceMeasurement": "memprobe.core.inference_measurement",
    "Calibration": "memprobe.formula.calibration",
    "InferenceCalibration": "memprobe.formula.inference_calibration",
    "CalibrationReport": "memprobe.calibration_run",
    "InferenceCalibrationReport": "memprobe.inference.calibration_run",
    "Alternative": "memprobe.alternatives",
    "Suggestion": "memprobe.suggestion",
    "SnapshotCheck": "memprobe.snapshots.check",
    "ReportContent": "memprobe.reporting.content",
    # Errors.
    "MemprobeError": "memprobe.core.errors",
    "InvalidInputError": "memprobe.core.errors",
    "ModelError": "memprobe.core.errors",
    "DatabaseError": "memprobe.core.errors",
    "NoCalibrationError": "memprobe.core.errors",
    "DeviceUnavailableError": "memprobe.core.errors",
    "NothingFitsError": "memprobe.core.errors",
    "StandInCalibrationWarning": "memprobe.core.errors",
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
