"""Deprecated: PyTorch Connectomics' planner API moved to ``memprobe.integrations.pytc.compat``.

Scripts that import ``memprobe.compat`` keep working, warned once; a later release removes it.
"""

from __future__ import annotations

import warnings

from memprobe.integrations.pytc.compat import *  # noqa: F403
from memprobe.integrations.pytc.compat import __all__  # noqa: F401

warnings.warn(
    "memprobe.compat is deprecated: import memprobe.integrations.pytc.compat",
    DeprecationWarning,
    stacklevel=2,
)
