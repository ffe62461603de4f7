"""`memprobe verify`: trace against a real GPU on a fixed table, and `suggest` answers run for real.

``build_plan`` says what to run, ``run_verify`` runs it with injected tools (``cuda_tools`` on
a GPU), appending each result to a log a rerun resumes from; ``write_outputs`` writes the files.
"""

from memprobe.verify.log import LOG_NAME, ResultLog
from memprobe.verify.results import (
    ContextSize,
    HistoryDiff,
    SafetyRow,
    UnseenAllocation,
    VerifyResult,
    VerifyRow,
)
from memprobe.verify.table import VerifyPlan, build_plan

__all__ = [
    "LOG_NAME",
    "ContextSize",
    "HistoryDiff",
    "ResultLog",
    "SafetyRow",
    "UnseenAllocation",
    "VerifyPlan",
    "VerifyResult",
    "VerifyRow",
    "build_plan",
]
