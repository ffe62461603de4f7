"""Names of the modes a training step can run in."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

E = TypeVar("E", bound=StrEnum)


class Precision(StrEnum):
    """Numeric precision of the training step."""

    FP32 = "fp32"
    FP16_MIXED = "fp16-mixed"
    BF16_MIXED = "bf16-mixed"

    @property
    def is_mixed(self) -> bool:
        return self is not Precision.FP32

    @property
    def lightning_name(self) -> str:
        """The name PyTorch Lightning (and PyTorch Connectomics) use for this precision."""
        return {"fp32": "32", "fp16-mixed": "16-mixed", "bf16-mixed": "bf16-mixed"}[self.value]


class OptimizerName(StrEnum):
    """Optimizer whose state is part of the measured step."""

    ADAMW = "adamw"
    SGD = "sgd"  # with Nesterov momentum 0.99, as nnU-Net trains


class Strategy(StrEnum):
    """How the step is spread over GPUs: one GPU, or one rank of data parallelism."""

    SINGLE = "single"  # one GPU, no process group
    DDP = "ddp"  # DistributedDataParallel: a full replica and gradient buckets per rank
    FSDP = "fsdp"  # FSDP2's fully_shard: parameters, gradients and optimizer state sharded 1/N


class DeviceKind(StrEnum):
    """How a training step is measured."""

    CUDA = "cuda"
    TRACE = "trace"  # fake tensors, every allocation tracked: no GPU needed
    CPU = "cpu"  # executed for real on the CPU, tracked the same way as trace


# Short and Lightning-style names users type for a precision.
_ALIASES = {
    "bf16": "bf16-mixed",
    "fp16": "fp16-mixed",
    "16-mixed": "fp16-mixed",
    "32": "fp32",
    "32-true": "fp32",
}


def parse_enum(enum_type: type[E], value: str, what: str) -> E:
    """Turn user text into an enum member, or raise a one-line error listing the choices."""
    from memprobe.core.errors import InvalidInputError

    text = str(value).lower()
    try:
        return enum_type(_ALIASES.get(text, text))
    except ValueError:
        choices = ", ".join(member.value for member in enum_type)
        raise InvalidInputError(f"unknown {what} {value!r}: choose one of {choices}") from None
