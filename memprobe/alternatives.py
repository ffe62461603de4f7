"""What would make a configuration fit: the same patch and budget with one thing changed.

Each alternative is planned from a calibration of that exact configuration (another precision,
activation checkpointing, SGD, a smaller patch, gradient accumulation), never guessed: one
without a calibration is listed with the command that would calibrate it. No torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memprobe.core.enums import OptimizerName, Precision, parse_enum
from memprobe.core.errors import NoCalibrationError, NothingFitsError
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
    arch: str,
    patch: Sequence[int],
    gpu_mem: str | int | float,
    precision: str = "fp32",
    *,
    optimizer: str = "adamw",
    effective_batch: int | None = None,
    checkpointing: bool = False,
    db: str | Path | None = None,
    **common: Any,
) -> list[Alternative]:
    """The alternatives to (``arch``, ``patch``, ``precision``, ``optimizer``) within ``gpu_mem``.

    Args:
        common: passed to every plan: ``safety``, ``in_channels``, ``out_channels``,
            ``deep_supervision``, ``step``, ``device``.

    Returns:
        Other precisions, activation checkpointing, SGD instead of AdamW, the largest patch at
        batch 2 and, with ``effective_batch``, accumulation to reach it; each with its plan, or
        with why it has none (no calibration: what to run; nothing fits: the smallest need).
    """
    from memprobe.api import max_batch_size, max_patch_size

    asked = parse_enum(Precision, precision, "precision")
    optimizer_name = parse_enum(OptimizerName, optimizer, "optimizer")
    base: dict[str, Any] = dict(optimizer=optimizer_name.value, checkpointing=checkpointing, db=db, **common)
    batch = lambda **changes: (
        lambda: max_batch_size(arch, patch, gpu_mem, **{"precision": asked.value, **base, **changes})
    )
    found = [
        _attempt(f"{other.value} instead of {asked.value}", batch(precision=other.value))
        for other in Precision
        if other is not asked
    ]
    if not checkpointing:
        found.append(_attempt("activation checkpointing", batch(checkpointing=True)))
    if optimizer_name is OptimizerName.ADAMW:
        found.append(_attempt("SGD instead of AdamW", batch(optimizer=OptimizerName.SGD.value)))
    found.append(
        _attempt(
            f"largest patch at batch {ALTERNATIVE_PATCH_BATCH}",
            lambda: max_patch_size(arch, ALTERNATIVE_PATCH_BATCH, gpu_mem, asked.value, **base),
        )
    )
    if effective_batch is not None:
        found.append(
            _attempt(
                f"gradient accumulation to reach batch {effective_batch}",
                batch(effective_batch=effective_batch),
            )
        )
    return found
