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


def data_parallel(per_rank_batch: int, strategy: str, world_size: int) -> dict[str, Any]:
    """The per-rank and global batch, and how nnU-Net and Lightning each take a batch size.

    nnU-Net's DDP trainer splits the plans' (global) ``batch_size`` across its GPUs; Lightning's
    ``batch_size`` is per device, the global batch being it times ``devices``.
    """
    global_batch = per_rank_batch * world_size
    return {
        "strategy": strategy,
        "world_size": world_size,
        "per_rank_batch": per_rank_batch,
        "global_batch": global_batch,
        "nnunet": {"batch_size": global_batch, "num_gpus": world_size},
        "lightning": {"batch_size": per_rank_batch, "devices": world_size, "strategy": strategy},
    }


def data_parallel_note(per_rank_batch: int, strategy: str, world_size: int) -> str:
    """One line on the batch under data parallelism, in each convention."""
    global_batch = per_rank_batch * world_size
    return (
        f"{strategy} x{world_size}: batch {per_rank_batch} per GPU, {global_batch} global; "
        f"nnU-Net: batch_size {global_batch} in the plans (its DDP splits it across the "
        f"{world_size} GPUs); Lightning: batch_size={per_rank_batch} (per device), devices={world_size}"
    )


def batch_exports(
    patch: Sequence[int], per_rank_batch: int, strategy: str, world_size: int
) -> dict[str, Any]:
    """nnU-Net's plans (whose batch is the global one) and, on several GPUs, the batch in each convention."""
    result: dict[str, Any] = {"nnunet_plans": nnunet_plans(patch, per_rank_batch * world_size)}
    if strategy != "single":
        result["data_parallel"] = data_parallel(per_rank_batch, strategy, world_size)
    return result
