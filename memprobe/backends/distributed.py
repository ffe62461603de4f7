"""Per-rank memory of a training step under DDP or FSDP2, on trace and cpu, in one process.

PyTorch's fake process group (``torch.testing._internal.distributed.fake_pg``) stands in for
N ranks: collectives return at once, so rank 0's step allocates what every rank's step does
(ranks are symmetric in data parallelism). DDP's reducer cannot run its default allreduce hook
on CPU tensors with the fake backend (it stops at an internal assert), so a communication hook
returns each bucket unchanged: the reducer still allocates its buckets and copies gradients
into them, which is the memory DDP adds. FSDP2's ``fully_shard`` shards parameters, gradients
and optimizer state to 1/N per rank and all-gathers each module's parameters around its use.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
from torch import nn

from memprobe.backends.allocation_tracker import cuda_block_size
from memprobe.errors import InvalidInputError

DEFAULT_BUCKET_CAP_MB = 25  # DistributedDataParallel's defaults
FIRST_BUCKET_BYTES = 1024 * 1024  # torch.distributed's _DEFAULT_FIRST_BUCKET_BYTES


class Strategy(StrEnum):
    DDP = "ddp"
    FSDP = "fsdp"


@dataclass(frozen=True)
class DistributedOptions:
    """How the step is distributed: strategy, ranks, and DDP's bucket settings."""

    strategy: Strategy
    world_size: int
    bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB
    gradient_as_bucket_view: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.world_size <= 1024:
            raise InvalidInputError(f"--gpus {self.world_size}: give 1 to 1024")
        if self.bucket_cap_mb <= 0:
            raise InvalidInputError(f"bucket_cap_mb {self.bucket_cap_mb}: give a positive size")


def _buckets(model: nn.Module, bucket_cap_mb: float) -> list[list[torch.Tensor]]:
    """The parameters of each DDP bucket: a first small bucket, then ``bucket_cap_mb`` each."""
    import torch.distributed as dist

    parameters: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        return []
    limits = [FIRST_BUCKET_BYTES, int(bucket_cap_mb * 1024 * 1024)]
    indices, _ = dist._compute_bucket_assignment_by_size(parameters, limits, [False] * len(parameters))
    return [[parameters[i] for i in bucket] for bucket in indices]


def gradient_bucket_bytes(model: nn.Module, bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB) -> int:
    """The bytes of DDP's gradient buckets for ``model``: its parameters' bytes, grouped as DDP
    groups them, each bucket one allocation (rounded to the allocator's block)."""
    return sum(
        cuda_block_size(sum(p.numel() * p.element_size() for p in bucket))
        for bucket in _buckets(model, bucket_cap_mb)
    )


def _bucket_buffers(model: nn.Module, bucket_cap_mb: float) -> list[torch.Tensor]:
    return [
        torch.empty(sum(p.numel() for p in bucket), dtype=bucket[0].dtype, device=bucket[0].device)
        for bucket in _buckets(model, bucket_cap_mb)
    ]


@contextmanager
def fake_process_group(world_size: int) -> Iterator[None]:
    """A process group of ``world_size`` ranks in this process (this one rank 0); torn down after."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise InvalidInputError("a process group is already initialised in this process: run memprobe alone")
    dist.init_process_group("fake", rank=0, world_size=world_size, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


def _return_bucket(state: object, bucket: Any) -> torch.futures.Future[torch.Tensor]:
    """A communication hook that leaves the bucket as it is (the fake backend reduces nothing)."""
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    future.set_result(bucket.buffer())
    return future


def wrap(model: nn.Module, options: DistributedOptions, *, fake: bool = False) -> nn.Module:
    """``model`` as each rank trains it: in DDP, or sharded by FSDP2 (each child with parameters, then the root).

    On fake tensors DDP's reducer cannot run (its C++ code copies gradient data), so its
    buckets are reproduced from the parameter sizes: one buffer per bucket, as DDP groups them,
    alive as long as the model, into which DDP copies the gradients it reduces.

    Raises:
        InvalidInputError: FSDP cannot shard a module of ``model`` (one line naming it), or
            ``gradient_as_bucket_view`` on fake tensors.
    """
    if options.strategy is Strategy.DDP and fake:
        if options.gradient_as_bucket_view:
            raise InvalidInputError(
                "gradient_as_bucket_view is measured with the real reducer only: use --device cpu"
            )
        model._memprobe_ddp_buckets = _bucket_buffers(model, options.bucket_cap_mb)  # type: ignore[assignment]
        return model
    if options.strategy is Strategy.DDP:
        ddp = nn.parallel.DistributedDataParallel(
            model,
            bucket_cap_mb=options.bucket_cap_mb,
            gradient_as_bucket_view=options.gradient_as_bucket_view,
            init_sync=False,
        )
        import torch.distributed as dist

        # DDP checks the hook's annotations as objects; this module's are strings (PEP 563).
        _return_bucket.__annotations__ = {
            "bucket": dist.GradBucket,
            "return": torch.futures.Future[torch.Tensor],
        }
        ddp.register_comm_hook(None, _return_bucket)
        return ddp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():  # the mesh reads its ranks as real numbers, never fake ones
        mesh = init_device_mesh("cpu", (options.world_size,))
    for name, module in _shard_units(model):
        try:
            fully_shard(module, mesh=mesh)
        except Exception as error:
            raise InvalidInputError(
                f"--strategy fsdp cannot shard module {name or type(model).__name__} "
                f"({type(module).__name__}): {str(error).splitlines()[0] if str(error) else type(error).__name__}"
            ) from None
    return model


def _shard_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """FSDP units: each top-level child that holds parameters, then the root for the rest."""
    children = [
        (name, child) for name, child in model.named_children() if any(True for _ in child.parameters())
    ]
    return [*children, ("", model)]


def sharded_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """What one rank holds of parameters, gradients and optimizer state (local shards only)."""

    def local(tensor: torch.Tensor) -> torch.Tensor:
        to_local = getattr(tensor, "to_local", None)
        return to_local() if callable(to_local) else tensor

    def nbytes(tensor: torch.Tensor | None) -> int:
        if tensor is None:
            return 0
        shard = local(tensor)
        return shard.numel() * shard.element_size()

    parameters = list(model.parameters())
    state = optimizer.state.values() if optimizer is not None else []
    return {
        "parameters": sum(nbytes(p) for p in parameters),
        # FSDP2 reduce-scatters each gradient into a shard shaped like its parameter's.
        "gradients": sum(nbytes(p) for p in parameters if p.requires_grad),
        "optimizer": sum(
            nbytes(value) for entry in state for value in entry.values() if isinstance(value, torch.Tensor)
        ),
    }


@dataclass(frozen=True)
class RankMeasurement:
    """One rank's step under ``options``, and what the strategy adds or removes per rank."""

    measurement: Any  # memprobe.measurement.Measurement of rank 0
    options: DistributedOptions
    gradient_bucket_bytes: int  # DDP's buckets (0 under FSDP)
    state_bytes: dict[str, int]  # parameters, gradients, optimizer state held by one rank

    @property
    def peak_allocated_bytes(self) -> int | None:
        return self.measurement.peak_allocated_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.measurement.to_dict(),
            "strategy": self.options.strategy.value,
            "world_size": self.options.world_size,
            "bucket_cap_mb": self.options.bucket_cap_mb,
            "gradient_as_bucket_view": self.options.gradient_as_bucket_view,
            "gradient_bucket_bytes": self.gradient_bucket_bytes,
            "state_bytes": self.state_bytes,
        }


def measure_per_rank(config: Any, options: DistributedOptions, device: str = "trace") -> RankMeasurement:
    """Measure one rank of ``config`` trained under ``options`` on ``device`` (trace or cpu).

    Not stored: the database keys measurements by configuration, which has no strategy yet.
    """
    from memprobe.backends.trace_backend import CpuBackend, TraceBackend

    if device not in ("trace", "cpu"):
        raise InvalidInputError(
            f"--device {device} with --gpus: launching ranks on several real GPUs is not supported yet; "
            "measure one rank with --device trace or cpu"
        )
    backend = (TraceBackend if device == "trace" else CpuBackend)(distributed=options)
    measurement = backend.measure(config)
    model = backend._fresh_model(config)
    buckets = gradient_bucket_bytes(model, options.bucket_cap_mb) if options.strategy is Strategy.DDP else 0
    return RankMeasurement(measurement, options, buckets, dict(backend.last_state_bytes))
