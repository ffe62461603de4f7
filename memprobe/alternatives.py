"""What would make a configuration fit: the same patch and budget with one thing changed.

Each alternative is planned from a calibration of that exact configuration (another precision,
activation checkpointing, SGD, a smaller patch, gradient accumulation), never guessed: one
without a calibration is listed with the command that would calibrate it. No torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from memprobe.core.config import Setup
from memprobe.core.enums import OptimizerName, Precision
from memprobe.core.errors import NoCalibrationError, NothingFitsError
from memprobe.core.gpus import target_gpu
from memprobe.planning.size_search import BatchPlan, PatchPlan

ALTERNATIVE_PATCH_BATCH = 2


@dataclass(frozen=True)
class Alternative:
    """One change to the configuration asked for, and its plan; ``unavailable`` says why there is none."""

    change: str
    plan: BatchPlan | PatchPlan | None
    unavailable: str | None = None

    @property
    def fits(self) -> bool:
        return self.plan is not None

    def __repr__(self) -> str:
        outcome = f"batch {self.plan.batch}" if self.plan is not None else f"none ({self.unavailable})"
        return f"Alternative({self.change}: {outcome})"


def _attempt(change: str, plan: Callable[[], BatchPlan | PatchPlan]) -> Alternative:
    try:
        return Alternative(change, plan())
    except (NoCalibrationError, NothingFitsError) as error:
        return Alternative(change, None, str(error))


def alternatives(
    setup: str | Setup,
    patch: Sequence[int],
    gpu_mem: str | int | float,
    precision: str | None = None,
    *,
    effective_batch: int | None = None,
    db: str | Path | None = None,
    device: str | None = None,
    safety: float | None = None,
    **overrides: Any,
) -> list[Alternative]:
    """The alternatives to ``setup`` at ``patch`` within ``gpu_mem``: each ``replace(setup, ...)``.

    Args:
        setup: an architecture (with ``overrides``: Setup's fields) or a Setup.
        precision: the precision asked for; default the Setup's, or the default rule's.
        device: whose calibrations answer (as ``memprobe.max_batch_size``).

    Returns:
        Other precisions, activation checkpointing, SGD instead of AdamW, the largest patch at
        batch 2 and, with ``effective_batch``, accumulation to reach it; each with its plan, or
        with why it has none (no calibration: what to run; nothing fits: the smallest need).
    """
    from memprobe.api import max_batch_size, max_patch_size

    given = {} if precision is None and isinstance(setup, Setup) else {"precision": precision}
    asked = Setup.of(setup, gpu=target_gpu(device), **{**overrides, **given})
    sources: dict[str, Any] = dict(db=db, device=device, **({} if safety is None else {"safety": safety}))
    batch = lambda changed, **options: lambda: max_batch_size(changed, patch, gpu_mem, **sources, **options)
    found = [
        _attempt(f"{other.value} instead of {asked.precision.value}", batch(replace(asked, precision=other)))
        for other in Precision
        if other is not asked.precision
    ]
    if not asked.checkpointing:
        found.append(_attempt("activation checkpointing", batch(replace(asked, checkpointing=True))))
    if asked.optimizer is OptimizerName.ADAMW:
        found.append(_attempt("SGD instead of AdamW", batch(replace(asked, optimizer=OptimizerName.SGD))))
    found.append(
        _attempt(
            f"largest patch at batch {ALTERNATIVE_PATCH_BATCH}",
            lambda: max_patch_size(asked, ALTERNATIVE_PATCH_BATCH, gpu_mem, **sources),
        )
    )
    if effective_batch is not None:
        found.append(
            _attempt(
                f"gradient accumulation to reach batch {effective_batch}",
                batch(asked, effective_batch=effective_batch),
            )
        )
    return found
