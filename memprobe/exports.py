"""Plans as fragments training configurations take: PyTorch Connectomics keys, nnU-Net plans."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def pytc_config(
    patch: Sequence[int], batch: int, precision_lightning: str, accumulate: int
) -> dict[str, Any]:
    """Dotted keys of a PyTorch Connectomics (Hydra) config."""
    return {
        "data.batch_size": batch,
        "data.patch_size": list(patch),
        "training.precision": precision_lightning,
        "training.accumulate_grad_batches": accumulate,
    }


def nnunet_plans(patch: Sequence[int], batch: int) -> dict[str, Any]:
    """The fields of an nnU-Net plans.json configuration that memory decides."""
    return {"batch_size": batch, "patch_size": list(patch)}
