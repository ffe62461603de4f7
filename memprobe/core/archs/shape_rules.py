"""Which patches a custom network takes: declared per-axis divisors and minimum patch, or found.

A factory declares its rule with attributes (a function attribute or a class attribute)::

    def build(in_channels, out_channels):
        ...
    build.memprobe_divisors = (4, 32, 32)   # depth, height, width
    build.memprobe_min_patch = (8, 64, 64)  # optional: the smallest patch it takes

The rule travels in the architecture's name, ``package.module:factory[div=4x32x32,min=8x64x64]``,
so every measurement and calibration stored under that name carries it and the planner needs
no import of the model to respect it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from memprobe.core.errors import InvalidInputError
from memprobe.core.units import format_shape

_SUFFIX = re.compile(r"^(?P<factory>[^\[\]]+)\[div=(?P<div>\d+x\d+x\d+)(?:,min=(?P<min>\d+x\d+x\d+))?\]$")
CUBE_CANDIDATES = (16, 32, 64, 128, 192, 256)
_LARGEST_MULTIPLE = 16


@dataclass(frozen=True)
class ShapeRule:
    """Per-axis divisors and the smallest patch, with where they came from."""

    divisors: tuple[int, int, int]
    min_patch: tuple[int, int, int]
    source: str  # "declared", "given" or "found"

    def describe(self) -> str:
        return f"patch sizes divisible by {_text(self.divisors)}, at least {_text(self.min_patch)} ({self.source})"


def _text(sizes: Sequence[int]) -> str:
    return format_shape(sizes)


def _triple(text: str) -> tuple[int, int, int]:
    depth, height, width = (int(part) for part in text.split("x"))
    return depth, height, width


def parse_rule_suffix(name: str) -> tuple[str, tuple[int, int, int] | None, tuple[int, int, int] | None]:
    """Split ``module:factory[div=AxBxC,min=DxExF]`` into the factory and its rule."""
    if "[" not in name:
        return name, None, None
    match = _SUFFIX.match(name)
    if match is None:
        raise InvalidInputError(
            f"cannot read the shape rule of {name!r}: write package.module:factory[div=4x32x32,min=8x64x64]"
        )
    divisors = _triple(match["div"])
    min_patch = _triple(match["min"]) if match["min"] else None
    _check_rule(divisors, min_patch)
    return match["factory"], divisors, min_patch


def _check_rule(divisors: Sequence[int], min_patch: Sequence[int] | None) -> None:
    if len(divisors) != 3 or any(d < 1 or d > 1024 for d in divisors):
        raise InvalidInputError(f"--divisor takes 3 whole numbers from 1 to 1024, got {list(divisors)}")
    if min_patch is None:
        return
    if len(min_patch) != 3 or any(m < 1 for m in min_patch):
        raise InvalidInputError(f"--min-patch takes 3 positive sizes, got {list(min_patch)}")
    for size, divisor in zip(min_patch, divisors, strict=True):
        if size % divisor:
            raise InvalidInputError(
                f"--min-patch {_text(min_patch)} is not divisible by the divisors {_text(divisors)}"
            )


def arch_with_rule(factory: str, divisors: Sequence[int], min_patch: Sequence[int] | None = None) -> str:
    """The architecture name of a custom factory with its shape rule attached."""
    _check_rule(divisors, min_patch)
    suffix = f"div={_text(divisors)}" + (f",min={_text(min_patch)}" if min_patch else "")
    return f"{factory.partition('[')[0]}[{suffix}]"


def declared_rule(factory: Callable[..., object]) -> ShapeRule | None:
    """The rule a factory declares through ``memprobe_divisors`` (and ``memprobe_min_patch``)."""
    divisors = getattr(factory, "memprobe_divisors", None)
    if divisors is None:
        return None
    divisors = tuple(int(d) for d in divisors)
    min_patch = getattr(factory, "memprobe_min_patch", None)
    min_patch = tuple(int(m) for m in min_patch) if min_patch is not None else None
    _check_rule(divisors, min_patch)
    smallest = min_patch or tuple(2 * d for d in divisors)
    return ShapeRule(divisors, smallest, "declared")  # type: ignore[arg-type]


def find_rule(accepts: Callable[[tuple[int, int, int]], bool], name: str) -> ShapeRule:
    """Find divisors and the smallest patch by trying patches: ``accepts(patch)`` runs the network.

    First the smallest cube it takes; then, per axis, the smallest power of two that may be
    added to that axis (its divisor); then the smallest multiple of the divisor it takes, grown
    one divisor at a time until the network takes all three axes at their smallest together.

    Raises:
        InvalidInputError: no candidate cube runs; the message names ``--divisor``.
    """
    cube = next((size for size in CUBE_CANDIDATES if accepts((size,) * 3)), None)
    if cube is None:
        raise InvalidInputError(
            f"cannot find which patches {name} takes: no cube of {', '.join(map(str, CUBE_CANDIDATES))} ran; "
            "declare them with --divisor D H W (and --min-patch D H W)"
        )
    divisors, smallest = [cube] * 3, [cube] * 3
    for axis in range(3):
        steps = [2**k for k in range(cube.bit_length()) if 2**k <= cube]
        divisors[axis] = next((d for d in steps if accepts(_with_axis(cube, axis, cube + d))), cube)
        multiples = range(1, min(cube // divisors[axis], _LARGEST_MULTIPLE) + 1)
        smallest[axis] = next(
            (k * divisors[axis] for k in multiples if accepts(_with_axis(cube, axis, k * divisors[axis]))),
            cube,
        )
    for _ in range(3 * _LARGEST_MULTIPLE):  # each axis's smallest alone may leave one bottleneck voxel
        if accepts(_three(smallest)):
            return ShapeRule(_three(divisors), _three(smallest), "found")
        axis = min(range(3), key=lambda a: (smallest[a] // divisors[a], -divisors[a]))
        smallest[axis] += divisors[axis]
    return ShapeRule(_three(divisors), (cube,) * 3, "found")


def _with_axis(cube: int, axis: int, size: int) -> tuple[int, int, int]:
    patch = [cube] * 3
    patch[axis] = size
    return _three(patch)


def _three(sizes: Sequence[int]) -> tuple[int, int, int]:
    depth, height, width = sizes
    return depth, height, width
