"""The estimates memprobe is compared against in the benchmarks: no torch, no measurement.

- :func:`seed_estimate_bytes` is the hand-written formula of the planner memprobe replaces
  (PyTorch Connectomics' ``estimate_gpu_memory_required``), reproduced line by line.
- :func:`nnunet_proxy_bytes` is nnU-Net's planning proxy: the feature-map volume of the
  network, compared against one configuration whose memory is known.
- :func:`fit_feature_map_model` is the same proxy in a fair form: scale and intercept of the
  feature-map volume fitted by least squares on the design points memprobe fits its formula to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from memprobe.core.archs.registry import ArchSpec
from memprobe.formula.terms import stage_voxels

SEED_GB = 1024**3  # the seed's "GB" divides by 1024**3
SEED_MAX_FEATURES = 320
SEED_PARAMETER_GB = 0.1
SEED_OPTIMIZER_FACTOR = 2.0  # AdamW: two moments per parameter
SEED_WORKSPACE_FACTOR = 0.2  # "cuDNN overhead": 20% of activations and gradients


def seed_estimate_gb(
    patch: Sequence[int],
    batch: int,
    in_channels: int,
    out_channels: int,
    base_features: int = 32,
    num_pool_stages: int = 4,
    deep_supervision: bool = False,
    mixed_precision: bool = True,
) -> float:
    """The seed's ``estimate_gpu_memory_required``, in its own "GB" (1024**3 bytes).

    Feature maps: every stage (``num_pool_stages + 1`` of them, each dimension halved per
    stage, widths doubling from ``base_features`` up to 320) holds voxels x features x 3 per
    sample, plus the logits of a deep-supervision head below full resolution. Activations
    are those elements at 2 (mixed precision) or 4 bytes; gradients as much again;
    parameters a flat 0.1 GB, AdamW state twice that; workspace 20% of activations and
    gradients. ``in_channels`` is accepted, as in the seed, and does not enter the sum.
    """
    size = [float(s) for s in patch]  # the seed halves a numpy array: sizes become fractional
    features = base_features
    total_voxels = 0.0
    for stage in range(num_pool_stages + 1):
        total_voxels += math.prod(size) * features * 3 * batch
        if deep_supervision and stage > 0:
            total_voxels += math.prod(size) * out_channels * batch
        size = [s / 2 for s in size]
        features = min(features * 2, SEED_MAX_FEATURES)
    bytes_per_element = 2 if mixed_precision else 4
    activation_gb = total_voxels * bytes_per_element / SEED_GB
    gradient_gb = activation_gb
    parameter_gb = SEED_PARAMETER_GB
    optimizer_gb = parameter_gb * SEED_OPTIMIZER_FACTOR
    workspace_gb = (activation_gb + gradient_gb) * SEED_WORKSPACE_FACTOR
    return activation_gb + gradient_gb + parameter_gb + optimizer_gb + workspace_gb


def seed_estimate_bytes(
    patch: Sequence[int],
    batch: int,
    in_channels: int,
    out_channels: int,
    base_features: int = 32,
    num_pool_stages: int = 4,
    deep_supervision: bool = False,
    mixed_precision: bool = True,
) -> float:
    """The seed formula's estimate in bytes (its default assumes mixed precision, as the seed's does).

    The seed knows nothing of the architecture: every network is a U-Net with 32 base
    features and 4 poolings. Use ``mixed_precision=False`` to compare with fp32 steps.
    """
    return (
        seed_estimate_gb(
            patch,
            batch,
            in_channels,
            out_channels,
            base_features,
            num_pool_stages,
            deep_supervision,
            mixed_precision,
        )
        * SEED_GB
    )


def feature_map_volume(spec: ArchSpec, patch: Sequence[int], batch: int) -> float:
    """Sum over resolution stages of voxels x channel width, times the batch: nnU-Net's VRAM proxy.

    nnU-Net (``compute_approx_vram_consumption``) counts the feature maps of every stage,
    with a fixed number of convolutions per stage, and never the parameters or optimizer
    state; the fixed multiplier is absorbed by the reference in :func:`nnunet_proxy_bytes`.
    """
    widths = spec.stage_features or (1,)
    voxels = stage_voxels(patch, len(widths)) if spec.stage_features else [math.prod(patch)]
    return float(batch * sum(v * w for v, w in zip(voxels, widths, strict=True)))


def nnunet_proxy_bytes(
    spec: ArchSpec,
    patch: Sequence[int],
    batch: int,
    *,
    reference_patch: Sequence[int],
    reference_batch: int,
    reference_bytes: float,
) -> float:
    """nnU-Net-style estimate: the feature-map volume, scaled so the reference is exact.

    nnU-Net plans by comparing a configuration's feature-map volume with that of a
    reference configuration known to fit a reference GPU. Here the reference is one
    measured step, so ``proxy(reference) == reference_bytes``, and every other
    configuration is assumed to need memory in proportion to its feature-map volume.
    """
    scale = reference_bytes / feature_map_volume(spec, reference_patch, reference_batch)
    return scale * feature_map_volume(spec, patch, batch)


@dataclass(frozen=True)
class FeatureMapModel:
    """``intercept + scale * feature-map volume``: nnU-Net's proxy with both constants fitted."""

    scale_bytes: float  # bytes per feature-map element
    intercept_bytes: float  # what the step holds whatever the volume (parameters, optimizer state)

    def predict_bytes(self, spec: ArchSpec, patch: Sequence[int], batch: int) -> float:
        return self.intercept_bytes + self.scale_bytes * feature_map_volume(spec, patch, batch)


def fit_feature_map_model(
    spec: ArchSpec, points: Sequence[tuple[Sequence[int], int, float]]
) -> FeatureMapModel:
    """Fit scale and intercept to ``(patch, batch, peak bytes)`` points by least squares.

    Rows are weighted by 1/peak, as memprobe's own fit is, so both minimise relative error on
    the same points; neither constant is constrained, which can only help the baseline.

    Raises:
        ValueError: fewer than two distinct feature-map volumes among the points.
    """
    volumes = np.array([feature_map_volume(spec, patch, batch) for patch, batch, _ in points])
    peaks = np.array([float(peak) for *_, peak in points])
    if len(set(volumes.tolist())) < 2:
        raise ValueError("fitting a scale and an intercept needs two different feature-map volumes")
    scale = volumes.max()  # conditioning: volumes reach 1e9, the intercept's column is 1
    matrix = np.column_stack([volumes / scale, np.ones_like(volumes)]) / peaks[:, None]
    (slope, intercept), *_ = np.linalg.lstsq(matrix, np.ones_like(peaks), rcond=None)
    return FeatureMapModel(float(slope / scale), float(intercept))
