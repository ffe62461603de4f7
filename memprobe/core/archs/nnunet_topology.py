"""nnU-Net v2's network topology rule, without numpy or torch.

The pooling of each axis follows spacing and patch (``get_pool_and_conv_props`` in
``nnunetv2/experiment_planning/experiment_planners/network_topology.py``): pool the axes whose
spacing is within a factor 2 of the finest, while their feature map stays at least 4 voxels
(the bottleneck edge); features 32, doubling per stage, capped at 320. A patch so determines
the network, and each topology is its own architecture in memprobe, named with its pooling:
``nnunet[122.222.222.222]`` is PlainConvUNet with 5 stages, the first pooling only in-plane.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from memprobe.core.errors import InvalidInputError
from memprobe.core.units import format_shape

MIN_EDGE = 4  # nnU-Net's UNet_featuremap_min_edge_length
BASE_FEATURES = 32
MAX_FEATURES = 320
_NAME = re.compile(r"^(?P<preset>nnunet(?:-resenc(?:-m|-l|-xl)?)?)\[(?P<strides>[0-9.]+)\]$")


@dataclass(frozen=True)
class Topology:
    """Poolings per axis, and what follows from them: strides, kernels, divisors."""

    pools: tuple[int, int, int]
    strides: tuple[tuple[int, int, int], ...]  # per stage, the first (1, 1, 1)
    kernel_sizes: tuple[tuple[int, int, int], ...]

    @property
    def divisors(self) -> tuple[int, int, int]:
        depth, height, width = (2**p for p in self.pools)
        return depth, height, width

    @property
    def stages(self) -> int:
        return len(self.strides)

    @property
    def features(self) -> tuple[int, ...]:
        return tuple(min(MAX_FEATURES, BASE_FEATURES * 2**i) for i in range(self.stages))

    def label(self) -> str:
        return format_shape(self.pools)


def topology_for(spacing: Sequence[float], patch: Sequence[float]) -> Topology:
    """The topology nnU-Net builds for ``patch`` (before padding) at ``spacing``."""
    current_spacing, current_size = list(map(float, spacing)), list(map(float, patch))
    strides: list[tuple[int, int, int]] = [(1, 1, 1)]
    kernels: list[tuple[int, int, int]] = []
    pools, kernel = [0, 0, 0], [1, 1, 1]
    while True:
        valid = [a for a in range(3) if current_size[a] >= 2 * MIN_EDGE]
        if not valid:
            break
        finest = min(current_spacing[a] for a in valid)
        valid = [a for a in valid if current_spacing[a] / finest < 2]
        if len(valid) == 1 and current_size[valid[0]] < 3 * MIN_EDGE:
            break
        if not valid:
            break
        for axis in range(3):
            if kernel[axis] != 3 and current_spacing[axis] / min(current_spacing) < 2:
                kernel[axis] = 3
        stride = [1, 1, 1]
        for axis in valid:
            stride[axis] = 2
            pools[axis] += 1
            current_spacing[axis] *= 2
            current_size[axis] = math.ceil(current_size[axis] / 2)
        strides.append(_three(stride))
        kernels.append(_three(kernel))
    kernels.append((3, 3, 3))
    return Topology(_three(pools), tuple(strides), tuple(kernels))


def padded_patch(patch: Sequence[int], divisors: Sequence[int]) -> tuple[int, int, int]:
    """nnU-Net's ``pad_shape``: each size up to a multiple of its divisor."""
    return _three([-(-int(p) // d) * d for p, d in zip(patch, divisors, strict=True)])


def topology_from_strides(strides: Sequence[Sequence[int]]) -> Topology:
    """The topology with these per-stage strides (after the first stage).

    An axis's kernel is 1 until the stage before its first pooling (a coarse axis, not yet
    within twice the finest spacing), then 3, as nnU-Net chooses them.
    """
    stages = [_three(stride) for stride in strides]
    pools = _three([sum(1 for stride in stages if stride[axis] == 2) for axis in range(3)])
    first = [next((i for i, stride in enumerate(stages) if stride[axis] == 2), 0) for axis in range(3)]
    kernels = [
        _three([3 if index >= first[axis] else 1 for axis in range(3)]) for index in range(len(stages))
    ]
    return Topology(pools, ((1, 1, 1), *stages), (*kernels, (3, 3, 3)))


def arch_name(preset: str, topology: Topology) -> str:
    """``nnunet[122.222.222]``: the preset and the strides of each stage after the first."""
    return f"{preset}[{'.'.join(''.join(map(str, s)) for s in topology.strides[1:])}]"


def parse_arch_name(name: str) -> tuple[str, Topology] | None:
    """``nnunet-resenc-l[122.222.222]`` into its preset and topology; None for any other name."""
    match = _NAME.match(name.strip().lower())
    if match is None:
        return None
    strides = [tuple(int(c) for c in part) for part in match["strides"].split(".")]
    if len(strides) > 8 or any(len(s) != 3 or set(s) - {1, 2} or max(s) == 1 for s in strides):
        raise InvalidInputError(
            f"{name!r}: write the strides of each stage after the first as 3 digits of 1 or 2 "
            "(at least one 2), up to 8 stages, e.g. nnunet[122.222.222.222]"
        )
    return match["preset"], topology_from_strides(strides)


def _three(sizes: Sequence[int]) -> tuple[int, int, int]:
    depth, height, width = sizes
    return int(depth), int(height), int(width)
