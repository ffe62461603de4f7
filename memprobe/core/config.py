"""What one measured training step is: the architecture, sizes and training modes."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from memprobe.core.archs.registry import ArchSpec, axis_divisors, resolve_arch, smallest_patch
from memprobe.core.checks import MAX_BATCH_SIZE, check_bool, check_triple
from memprobe.core.enums import OptimizerName, Precision, Strategy, parse_enum
from memprobe.core.errors import InvalidInputError
from memprobe.core.input_files import shown
from memprobe.core.step_names import DEFAULT_STEP, check_step_name

# A patch larger than this many voxels is refused before anything is built: 1024^3 voxels of
# float32 are 4 GiB for the input alone, beyond what any training step on one card can hold.
MAX_PATCH_VOXELS = 1024**3
MAX_CHANNELS = 100_000


@dataclass(frozen=True)
class StepConfig:
    """One training-step configuration, the key every measurement is stored under."""

    arch: str
    patch: tuple[int, int, int]
    batch: int
    precision: Precision = Precision.FP32
    optimizer: OptimizerName = OptimizerName.ADAMW
    in_channels: int = 1
    out_channels: int = 2
    deep_supervision: bool = False
    step: str = DEFAULT_STEP  # the training step: "memprobe", "monai" or a user's module:function
    checkpointing: bool = False  # activation checkpointing (the network's own, else per stage)
    strategy: Strategy = Strategy.SINGLE  # one GPU, or one rank of DDP or FSDP2 ...
    world_size: int = 1  # ... out of this many ranks (the batch is per rank)

    @property
    def voxels(self) -> int:
        return math.prod(self.patch)

    def with_batch(self, batch: int) -> StepConfig:
        return _replace(self, batch=batch)

    def with_patch(self, patch: Sequence[int]) -> StepConfig:
        return _replace(self, patch=tuple(patch))

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["patch"] = list(self.patch)
        data["precision"] = self.precision.value
        data["optimizer"] = self.optimizer.value
        data["strategy"] = self.strategy.value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepConfig:
        """Inverse of :meth:`to_dict`; records older than a field (``step``, ``strategy``, ...) get its default."""
        depth, height, width = (int(size) for size in data["patch"])
        return cls(
            arch=str(data["arch"]),
            patch=(depth, height, width),
            batch=int(data["batch"]),
            precision=Precision(data["precision"]),
            optimizer=OptimizerName(data["optimizer"]),
            in_channels=int(data["in_channels"]),
            out_channels=int(data["out_channels"]),
            deep_supervision=bool(data["deep_supervision"]),
            step=str(data.get("step", DEFAULT_STEP)),
            checkpointing=bool(data.get("checkpointing", False)),
            strategy=Strategy(data.get("strategy", Strategy.SINGLE.value)),
            world_size=int(data.get("world_size", 1)),
        )

    def label(self) -> str:
        """Short human-readable form: ``mednext 128x128x128 b2 fp32``."""
        size = "x".join(map(str, self.patch))
        extras = (
            []
            if self.in_channels == 1 and self.out_channels == 2
            else [f"c{self.in_channels}->{self.out_channels}"]
        )
        extras += ["ds"] if self.deep_supervision else []
        extras += ["checkpointing"] if self.checkpointing else []
        extras += [] if self.step == DEFAULT_STEP else [f"step {self.step}"]
        extras += [] if self.strategy is Strategy.SINGLE else [f"{self.strategy.value} x{self.world_size}"]
        return " ".join([self.arch, size, f"b{self.batch}", self.precision.value, *extras])


def _replace(config: StepConfig, **changes: object) -> StepConfig:
    from dataclasses import replace

    return replace(config, **changes)  # type: ignore[arg-type]


def _positive_int(value: object, what: str, largest: int = 2**31) -> int:
    """A whole number: an int (numpy's too, as a patch read from nnU-Net plans) or ASCII digits.

    A float is refused even when whole (``2.0`` is a mistake in Python code), and so is text
    in other scripts (``²``, ``١٢٨``): only 0-9 are read as digits.
    """
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.lstrip("+").isdigit()):
            raise InvalidInputError(f"{what} must be a positive whole number, got {shown(repr(value))}")
        number = int(text)
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
    else:
        raise InvalidInputError(f"{what} must be a positive whole number, got {shown(repr(value))}")
    if number <= 0:
        raise InvalidInputError(f"{what} must be a positive whole number, got {shown(repr(value))}")
    if number > largest:
        raise InvalidInputError(f"{what} {shown(repr(value))} is absurdly large: at most {largest}")
    return number


def nearest_valid_sizes(size: int, divisor: int) -> tuple[int, int]:
    """The multiples of ``divisor`` just below (at least one divisor) and above ``size``."""
    below = max(divisor, (size // divisor) * divisor)
    above = -(-size // divisor) * divisor
    return below, above


def validate_patch(patch: Sequence[object], spec: ArchSpec) -> tuple[int, int, int]:
    """Ensure the patch has three positive sizes that the network's downsampling divides."""
    patch = check_triple(patch, "a patch")
    if len(patch) != 3:
        raise InvalidInputError(
            f"a patch has 3 sizes (depth height width), got {len(patch)}: e.g. --patch 128 128 128"
        )
    sizes = tuple(_positive_int(size, "each patch size") for size in patch)
    if math.prod(sizes) > MAX_PATCH_VOXELS:
        raise InvalidInputError(
            f"patch {'x'.join(map(str, sizes))} has more than 1024^3 voxels: no single GPU trains "
            "on it; choose a smaller patch"
        )
    divisors = axis_divisors(spec)
    for size, divisor in zip(sizes, divisors, strict=True):
        if size % divisor:
            below, above = nearest_valid_sizes(size, divisor)
            rule = (
                f"every patch size divisible by {divisor}"
                if len(set(divisors)) == 1
                else (f"patch sizes divisible by {'x'.join(map(str, divisors))}")
            )
            raise InvalidInputError(
                f"{spec.name} needs {rule}: {size} is not (nearest valid: {below} or {above})"
            )
    smallest = smallest_patch(spec)
    if any(size < least for size, least in zip(sizes, smallest, strict=True)):
        least_text = str(smallest[0]) if len(set(smallest)) == 1 else "x".join(map(str, smallest))
        raise InvalidInputError(
            f"{spec.name} needs every patch size to be at least {least_text} "
            "(its bottleneck needs more than one voxel)"
        )
    return sizes  # type: ignore[return-value]


def make_step_config(
    arch: str,
    patch: Sequence[object],
    batch: object,
    *,
    precision: str | Precision = Precision.FP32,
    optimizer: str | OptimizerName = OptimizerName.ADAMW,
    in_channels: object = 1,
    out_channels: object = 2,
    deep_supervision: bool = False,
    step: str = DEFAULT_STEP,
    checkpointing: bool = False,
    strategy: str | Strategy | None = None,
    world_size: object = 1,
) -> StepConfig:
    """Validate user input into a StepConfig, raising one-line InvalidInputErrors."""
    spec = resolve_arch(arch)
    if deep_supervision and not spec.custom and not spec.supports_deep_supervision:
        raise InvalidInputError(
            f"{spec.name} has no deep supervision: drop --deep-supervision or choose one of mednext*, dynunet"
        )
    if check_step_name(step) == "nnunet" and str(precision).lower() != Precision.FP16_MIXED.value:
        raise InvalidInputError(
            "nnU-Net's step trains with fp16 autocast and a GradScaler: add --precision fp16-mixed"
        )
    if check_step_name(step) == "nnunet":
        optimizer = OptimizerName.SGD  # the step is nnU-Net's whole iteration, its SGD included
    return StepConfig(
        arch=spec.name,
        patch=validate_patch(patch, spec),
        batch=_positive_int(batch, "batch size", MAX_BATCH_SIZE),
        precision=parse_enum(Precision, str(precision), "precision"),
        optimizer=parse_enum(OptimizerName, str(optimizer), "optimizer"),
        in_channels=_positive_int(in_channels, "in_channels", MAX_CHANNELS),
        out_channels=_positive_int(out_channels, "out_channels", MAX_CHANNELS),
        deep_supervision=check_bool(deep_supervision, "deep_supervision"),
        step=check_step_name(step),
        checkpointing=check_bool(checkpointing, "checkpointing"),
        **data_parallel(strategy, world_size),  # type: ignore[arg-type]
    )


MAX_WORLD_SIZE = 1024


def data_parallel(strategy: str | Strategy | None, world_size: object) -> dict[str, object]:
    """Check ``--gpus``/``--strategy``: one GPU alone, or 2 or more ranks of DDP or FSDP2.

    Without a strategy, several GPUs mean DDP (the common choice) and one GPU means none.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, numbers.Integral) or int(world_size) < 1:
        raise InvalidInputError(f"--gpus {world_size!r}: give the number of GPUs, 1 or more")
    world_size = int(world_size)
    if world_size > MAX_WORLD_SIZE:
        raise InvalidInputError(f"--gpus {world_size}: at most {MAX_WORLD_SIZE}")
    if strategy is None:
        strategy = Strategy.SINGLE if world_size == 1 else Strategy.DDP
    chosen = parse_enum(Strategy, str(strategy), "strategy")
    if chosen is Strategy.SINGLE and world_size > 1:
        raise InvalidInputError(
            f"--gpus {world_size} needs a data-parallel strategy: add --strategy ddp or --strategy fsdp"
        )
    if chosen is not Strategy.SINGLE and world_size == 1:
        raise InvalidInputError(
            f"--strategy {chosen.value} with --gpus 1 is no data parallelism: drop --strategy for one GPU, "
            "or give --gpus 2 or more"
        )
    return {"strategy": chosen, "world_size": world_size}
