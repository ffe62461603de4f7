"""What is trained (a Setup) and what one measured step is (a StepConfig: a Setup at a patch and batch)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memprobe.core.archs.registry import ArchSpec, axis_divisors, resolve_arch, smallest_patch
from memprobe.core.checks import MAX_BATCH_SIZE, check_bool, check_triple
from memprobe.core.enums import OptimizerName, Precision, Strategy, parse_enum
from memprobe.core.errors import InvalidInputError
from memprobe.core.input_files import shown
from memprobe.core.step_names import DEFAULT_STEP, check_step_name
from memprobe.core.units import format_shape

if TYPE_CHECKING:
    from memprobe.core.gpus import GpuInfo

# A patch larger than this many voxels is refused before anything is built: 1024^3 voxels of
# float32 are 4 GiB for the input alone, beyond what any training step on one card can hold.
MAX_PATCH_VOXELS = 1024**3
MAX_CHANNELS = 100_000


@dataclass(frozen=True)
class Setup:
    """What is trained, apart from its sizes: one value, checked once (``Setup.of``), passed whole.

    A calibration answers for a Setup (less the channels, which it spans) on one device; a
    StepConfig is a Setup with a patch and a batch; the alternatives a plan offers are
    ``replace(setup, precision=...)``. The field defaults are a raw value's; ``Setup.of`` gives
    users' defaults (the precision for the GPU, see ``default_precision``).
    """

    arch: str
    precision: Precision = Precision.FP32
    optimizer: OptimizerName = OptimizerName.ADAMW
    in_channels: int = 1
    out_channels: int = 2
    deep_supervision: bool = False
    step: str = DEFAULT_STEP  # the training step: "memprobe", "monai" or a user's module:function
    checkpointing: bool = False  # activation checkpointing (the network's own, else per stage)
    strategy: Strategy = Strategy.SINGLE  # one GPU, or one rank of DDP or FSDP2 ...
    world_size: int = 1  # ... out of this many ranks (the batch is per rank)

    @classmethod
    def of(cls, arch: str | Setup, *, gpu: GpuInfo | None = None, **overrides: Any) -> Setup:
        """A checked Setup: an architecture name with overrides, or a Setup with some replaced.

        ``overrides`` are Setup's fields (``precision``, ``optimizer``, ``in_channels``,
        ``out_channels``, ``deep_supervision``, ``step``, ``checkpointing``, ``strategy``,
        ``world_size``); a precision of None is the default for ``gpu`` (``default_precision``).

        Raises:
            InvalidInputError: an unknown field, or a value without meaning, in one line.
        """
        unknown = sorted(set(overrides) - set(SETUP_OVERRIDES))
        if unknown:
            raise InvalidInputError(
                f"unknown setting {shown(repr(unknown[0]))}: choose among {', '.join(SETUP_OVERRIDES)}"
            )
        if isinstance(arch, Setup):
            base = {name: getattr(arch, name) for name in SETUP_OVERRIDES}
            if "strategy" not in overrides and "world_size" in overrides:
                base["strategy"] = None  # a new world size chooses its strategy again
            return _checked_setup(arch.arch, gpu, {**base, **overrides})
        return _checked_setup(arch, gpu, overrides)

    @property
    def setup(self) -> Setup:
        """The Setup alone (a StepConfig less its patch and batch)."""
        return Setup(**{name: getattr(self, name) for name in ("arch", *SETUP_OVERRIDES)})

    def at(self, patch: Sequence[object], batch: object) -> StepConfig:
        """This Setup at ``patch`` and ``batch``, both checked against the network."""
        return StepConfig(
            **{name: getattr(self, name) for name in ("arch", *SETUP_OVERRIDES)},
            patch=validate_patch(patch, resolve_arch(self.arch)),
            batch=_positive_int(batch, "batch size", MAX_BATCH_SIZE),
        )

    def describe(self) -> str:
        """The modes that differ from the defaults, in a few words: ``bf16-mixed c4->3 ds``."""
        extras = [self.precision.value]
        if (self.in_channels, self.out_channels) != (1, 2):
            extras.append(f"c{self.in_channels}->{self.out_channels}")
        extras += ["ds"] if self.deep_supervision else []
        extras += ["checkpointing"] if self.checkpointing else []
        extras += [] if self.step == DEFAULT_STEP else [f"step {self.step}"]
        extras += [] if self.strategy is Strategy.SINGLE else [f"{self.strategy.value} x{self.world_size}"]
        return " ".join(extras)


SETUP_OVERRIDES = (
    "precision",
    "optimizer",
    "in_channels",
    "out_channels",
    "deep_supervision",
    "step",
    "checkpointing",
    "strategy",
    "world_size",
)


@dataclass(frozen=True)
class StepConfig(Setup):
    """One training-step configuration: a Setup at a patch and batch, the key of every measurement."""

    patch: tuple[int, int, int] = field(kw_only=True)
    batch: int = field(kw_only=True)

    @property
    def voxels(self) -> int:
        return math.prod(self.patch)

    def range_values(self) -> dict[str, int]:
        """The sizes a calibration's fit range spans (``memprobe.formula.fit.measured_range``)."""
        return {
            "batch": self.batch,
            "voxels": self.voxels,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
        }

    def with_batch(self, batch: int) -> StepConfig:
        return _replace(self, batch=batch)

    def with_patch(self, patch: Sequence[int]) -> StepConfig:
        return _replace(self, patch=tuple(patch))

    def to_dict(self) -> dict[str, object]:
        return {
            "arch": self.arch,
            "patch": list(self.patch),
            "batch": self.batch,
            "precision": self.precision.value,
            "optimizer": self.optimizer.value,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "deep_supervision": self.deep_supervision,
            "step": self.step,
            "checkpointing": self.checkpointing,
            "strategy": self.strategy.value,
            "world_size": self.world_size,
        }

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
        size = format_shape(self.patch)
        return " ".join([self.arch, size, f"b{self.batch}", self.describe()])


def default_precision(gpu: GpuInfo | None) -> tuple[Precision, str]:
    """The precision every command and function uses unless told, and why.

    bf16 where the GPU has bf16 tensor cores (compute capability 8.0+), else fp16 autocast;
    with no GPU in view (trace, planning for an unnamed card) bf16, which every GPU since
    Ampere runs. One rule everywhere, so a calibration made with the defaults is the one
    the plans read.
    """
    if gpu is None:
        return Precision.BF16_MIXED, "no GPU detected: bf16-mixed, supported by every GPU since Ampere"
    if gpu.supports_bf16:
        return Precision.BF16_MIXED, f"{gpu.name} supports bf16 (compute capability {gpu.compute_capability})"
    return Precision.FP16_MIXED, f"{gpu.name} lacks bf16 tensor cores: fp16 autocast with loss scaling"


def precision_with_reason(given: object, gpu: GpuInfo | None) -> tuple[str, str]:
    """The precision to use and where it came from: given, else :func:`default_precision`."""
    if given is not None:
        value = parse_enum(Precision, str(given), "precision").value
        return value, f"precision {value} (given)"
    chosen, reason = default_precision(gpu)
    return chosen.value, f"precision {chosen.value} (the default; {reason})"


def _checked_setup(arch: str, gpu: GpuInfo | None, values: Mapping[str, object]) -> Setup:
    """Check every field of a Setup, raising one-line InvalidInputErrors."""
    spec = resolve_arch(arch)
    deep_supervision = check_bool(values.get("deep_supervision", False), "deep_supervision")
    if deep_supervision and not spec.custom and not spec.supports_deep_supervision:
        raise InvalidInputError(
            f"{spec.name} has no deep supervision: drop --deep-supervision or choose one of mednext*, dynunet"
        )
    step = check_step_name(values.get("step", DEFAULT_STEP))
    precision_value = values.get("precision")
    if precision_value is None:
        precision = Precision.FP16_MIXED if step == "nnunet" else default_precision(gpu)[0]
    else:
        precision = parse_enum(Precision, str(precision_value), "precision")
    optimizer = values.get("optimizer", OptimizerName.ADAMW)
    if step == "nnunet" and precision is not Precision.FP16_MIXED:
        raise InvalidInputError(
            "nnU-Net's step trains with fp16 autocast and a GradScaler: add --precision fp16-mixed"
        )
    if step == "nnunet":
        optimizer = OptimizerName.SGD  # the step is nnU-Net's whole iteration, its SGD included
    return Setup(
        arch=spec.name,
        precision=precision,
        optimizer=parse_enum(OptimizerName, str(optimizer), "optimizer"),
        in_channels=_positive_int(values.get("in_channels", 1), "in_channels", MAX_CHANNELS),
        out_channels=_positive_int(values.get("out_channels", 2), "out_channels", MAX_CHANNELS),
        deep_supervision=deep_supervision,
        step=step,
        checkpointing=check_bool(values.get("checkpointing", False), "checkpointing"),
        **data_parallel(values.get("strategy"), values.get("world_size", 1)),  # type: ignore[arg-type]
    )


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
        least_text = str(smallest[0]) if len(set(smallest)) == 1 else format_shape(smallest)
        raise InvalidInputError(
            f"{spec.name} needs every patch size to be at least {least_text} "
            "(its bottleneck needs more than one voxel)"
        )
    return sizes  # type: ignore[return-value]


def make_step_config(
    arch: str | Setup, patch: Sequence[object], batch: object, **setup: object
) -> StepConfig:
    """Validate user input into a StepConfig, raising one-line InvalidInputErrors.

    ``setup`` holds Setup's fields; a precision not given is fp32 here, the raw default
    (``Setup.of`` with ``precision=None`` applies the users' default rule).
    """
    if not isinstance(arch, Setup):
        setup.setdefault("precision", Precision.FP32)
    return Setup.of(arch, gpu=None, **setup).at(patch, batch)


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
