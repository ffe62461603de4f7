"""memprobe: measured GPU-memory planning for 3D medical-image segmentation.

Importing memprobe is instant: estimates come from stored calibrations and never import
torch; only ``probe`` and ``calibrate`` do.
"""

from memprobe.__version__ import __version__
from memprobe.alternatives import Alternative
from memprobe.api import Estimate, calibrate, estimate, max_batch_size, max_patch_size, probe
from memprobe.compat import estimate_gpu_memory_required, suggest_batch_size
from memprobe.errors import MemprobeError, NothingFitsError
from memprobe.inference.api import max_sw_batch_size

__all__ = [
    "Alternative",
    "Estimate",
    "MemprobeError",
    "NothingFitsError",
    "__version__",
    "calibrate",
    "estimate",
    "estimate_gpu_memory_required",
    "max_batch_size",
    "max_patch_size",
    "max_sw_batch_size",
    "probe",
    "suggest_batch_size",
]
