"""Spacing and median shape from nnU-Net's ``dataset_fingerprint.json``, as its planner derives them.

The target spacing is the median spacing, except that a markedly coarse axis (thick slices,
with few of them) takes its 10th percentile (``ExperimentPlanner.determine_fullres_target_spacing``);
the median shape is that of the cases resampled to it. Both are then transposed as nnU-Net
transposes them (``ExperimentPlanner.determine_transpose``): the axis of the largest spacing
first, the others in the images' order, so that patches are planned in the axis order nnU-Net
trains in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memprobe.errors import InvalidInputError

EXTRACT_HINT = "run `nnUNetv2_extract_fingerprint -d DATASET` (or nnUNetv2_plan_and_preprocess) first"


@dataclass(frozen=True)
class TargetGeometry:
    """nnU-Net's 3d_fullres target spacing (mm) and median shape (voxels), axes transposed.

    ``transpose_forward`` is nnU-Net's: axis ``i`` of the planned patch is axis
    ``transpose_forward[i]`` of the images.
    """

    spacing: tuple[float, float, float]
    median_shape: tuple[int, int, int]
    transpose_forward: tuple[int, int, int]

    @property
    def transposed(self) -> bool:
        return self.transpose_forward != (0, 1, 2)


def read_fingerprint(path: str | Path) -> TargetGeometry:
    """The target spacing and median shape nnU-Net's 3d_fullres plans with, in its axis order.

    Raises:
        InvalidInputError: the file is missing or is not a dataset fingerprint.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"no dataset fingerprint at {path}: {EXTRACT_HINT}")
    try:
        data = json.loads(path.read_text())
        spacings = np.asarray(data["spacings"], dtype=float)
        shapes = np.asarray(data["shapes_after_crop"], dtype=float)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InvalidInputError(
            f"{path} is not an nnU-Net dataset fingerprint ({type(error).__name__}: {error}): {EXTRACT_HINT}"
        ) from error
    if (
        spacings.ndim != 2
        or spacings.shape[1] != 3
        or shapes.shape != spacings.shape
        or (spacings <= 0).any()
    ):
        raise InvalidInputError(
            f"{path}: 'spacings' and 'shapes_after_crop' must hold 3 positive values per case"
        )
    target = _target_spacing(spacings, shapes)
    resampled = np.round(shapes * spacings / target)
    median = np.median(resampled, 0)
    order = transpose_forward(target)
    depth, height, width = (float(target[axis]) for axis in order)
    d, h, w = (int(median[axis]) for axis in order)
    return TargetGeometry((depth, height, width), (d, h, w), order)


def transpose_forward(target_spacing: np.ndarray) -> tuple[int, int, int]:
    """nnU-Net's ``determine_transpose``: the axis of the largest spacing first, the others in order."""
    first = int(np.argmax(target_spacing))
    second, third = (axis for axis in range(3) if axis != first)
    return first, second, third


def _target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    target = np.percentile(spacings, 50, 0)
    target_size = np.percentile(shapes, 50, 0)
    worst = int(np.argmax(target))
    others = [axis for axis in range(3) if axis != worst]
    coarse_spacing = target[worst] > 3 * max(target[others])
    few_slices = target_size[worst] * 3 < min(target_size[others])
    if coarse_spacing and few_slices:
        lowres = float(np.percentile(spacings[:, worst], 10))
        if lowres < max(target[others]):
            lowres = max(max(target[others]), lowres) + 1e-5
        target[worst] = lowres
    return target
