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
from typing import Any

import numpy as np

from memprobe.core.errors import InvalidInputError
from memprobe.core.input_files import read_input_text, shown

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
    if not path.exists():
        raise InvalidInputError(f"no dataset fingerprint at {shown(path)}: {EXTRACT_HINT}")
    text = read_input_text(path, "dataset fingerprint")
    try:
        data = json.loads(text)
        spacings = np.asarray(_numbers(data["spacings"]), dtype=float)
        shapes = np.asarray(_numbers(data["shapes_after_crop"]), dtype=float)
    except (ValueError, KeyError, TypeError, IndexError, RecursionError) as error:
        raise InvalidInputError(
            f"{shown(path)} is not an nnU-Net dataset fingerprint ({type(error).__name__}: {shown(error)}): {EXTRACT_HINT}"
        ) from None
    if (
        spacings.ndim != 2
        or spacings.shape[1] != 3
        or shapes.shape != spacings.shape
        or not np.isfinite(spacings).all()
        or not np.isfinite(shapes).all()
        or (spacings <= 0).any()
        or (shapes < 1).any()
        or (shapes != np.round(shapes)).any()
    ):
        raise InvalidInputError(
            f"{shown(path)}: 'spacings' (finite, above 0) and 'shapes_after_crop' (whole numbers of at least 1) "
            "must hold 3 values per case"
        )
    target = _target_spacing(spacings, shapes)
    resampled = np.round(shapes * spacings / target)
    median = np.median(resampled, 0)
    order = transpose_forward(target)
    depth, height, width = (float(target[axis]) for axis in order)
    d, h, w = (int(median[axis]) for axis in order)
    return TargetGeometry((depth, height, width), (d, h, w), order)


def _numbers(cases: Any) -> Any:
    """Refuse strings and booleans where JSON numbers belong (numpy would read "80" as 80)."""
    if not isinstance(cases, list) or not all(
        isinstance(case, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in case)
        for case in cases
    ):
        raise TypeError("every case must be a list of numbers")
    return cases


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
