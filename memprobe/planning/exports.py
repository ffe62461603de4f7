"""Plans as fragments training configurations take: PyTorch Connectomics keys, nnU-Net plans."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memprobe.formula.calibration import Calibration


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


# DistributedDataParallel's defaults, which every DDP rank memprobe calibrates is measured with
# (memprobe.backends.distributed holds the same values beside torch; planning stays torch-free).
DDP_DEFAULT_BUCKET_CAP_MB = 25
DDP_DEFAULT_GRADIENT_AS_BUCKET_VIEW = False


def ddp_buckets(calibration: Calibration) -> dict[str, Any] | None:
    """The DDP bucket settings a calibration of a DDP layout was measured with; None for other layouts.

    They are not part of the calibration's key: a calibration that recorded them (its
    environment's ``ddp_buckets``) gives them as ``measured``; one that did not was made by
    `memprobe calibrate`, which takes no bucket settings, so DDP's defaults are ``assumed``.
    """
    if calibration.strategy != "ddp":
        return None
    recorded = calibration.environment.get("ddp_buckets")
    if isinstance(recorded, Mapping) and {"bucket_cap_mb", "gradient_as_bucket_view"} <= set(recorded):
        return {
            "bucket_cap_mb": recorded["bucket_cap_mb"],
            "gradient_as_bucket_view": bool(recorded["gradient_as_bucket_view"]),
            "source": "measured",
        }
    return {
        "bucket_cap_mb": DDP_DEFAULT_BUCKET_CAP_MB,
        "gradient_as_bucket_view": DDP_DEFAULT_GRADIENT_AS_BUCKET_VIEW,
        "source": "assumed",
    }


def ddp_buckets_note(buckets: Mapping[str, Any]) -> str:
    """One line on the DDP bucket settings a plan rests on, and how to check others."""
    settings = (
        f"bucket_cap_mb={buckets['bucket_cap_mb']:g}, "
        f"gradient_as_bucket_view={buckets['gradient_as_bucket_view']}"
    )
    if buckets["source"] == "measured":
        why = "as its calibration was measured"
    else:
        why = "DDP's defaults, assumed: the calibration does not record them and `memprobe calibrate` measures with no others"
    return (
        f"ddp buckets: {settings} ({why}); other settings change the need: "
        "`memprobe probe --gpus N --strategy ddp --bucket-cap-mb MB --gradient-as-bucket-view` measures them"
    )


def ddp_buckets_text(buckets: Mapping[str, Any]) -> str:
    """A few words for a table cell: the bucket settings and whether they were measured."""
    views = "as views" if buckets["gradient_as_bucket_view"] else "not as views"
    return f"ddp buckets {buckets['bucket_cap_mb']:g} MB, gradients {views} ({buckets['source']})"
