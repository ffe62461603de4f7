"""Per-rank memory of a training step under DDP or FSDP2, on trace and cpu, in one process.

PyTorch's fake process group (``torch.testing._internal.distributed.fake_pg``) stands in for
N ranks: collectives return at once, so rank 0's step allocates what every rank's step does
(ranks are symmetric in data parallelism). DDP's reducer cannot run its default allreduce hook
on CPU tensors with the fake backend (it stops at an internal assert), so a communication hook
returns each bucket unchanged: the reducer still allocates its buckets and copies gradients
into them, which is the memory DDP adds. FSDP2's ``fully_shard`` shards parameters, gradients
and optimizer state to 1/N per rank and all-gathers each module's parameters around its use.

The strategy and world size are part of the step's configuration (``StepConfig.strategy``,
``world_size``), so a rank's measurements and calibration are stored under their own key. On
CUDA with several GPUs the ranks are launched for real (memprobe.backends.rank_pool).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from memprobe.backends.allocation_tracker import cuda_block_size
from memprobe.core.enums import Strategy
from memprobe.core.errors import InvalidInputError

__all__ = ["DistributedOptions", "Strategy", "measure_per_rank", "options_for", "wrap"]

DEFAULT_BUCKET_CAP_MB = 25  # DistributedDataParallel's defaults
FIRST_BUCKET_BYTES = 1024 * 1024  # torch.distributed's _DEFAULT_FIRST_BUCKET_BYTES


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
        if self.strategy is Strategy.SINGLE:
            raise InvalidInputError("one GPU has no ranks: choose --strategy ddp or fsdp")


def options_for(
    config: Any, bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB, gradient_as_bucket_view: bool = False
) -> DistributedOptions | None:
    """The data parallelism ``config`` (a StepConfig) is one rank of; None for one GPU."""
    if config.strategy is Strategy.SINGLE:
        return None
    return DistributedOptions(config.strategy, config.world_size, bucket_cap_mb, gradient_as_bucket_view)


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


def _bucket_buffers(buckets: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [
        torch.empty(sum(p.numel() for p in bucket), dtype=bucket[0].dtype, device=bucket[0].device)
        for bucket in buckets
    ]


def _grads_as_bucket_views(buckets: list[list[torch.Tensor]], buffers: list[torch.Tensor]) -> None:
    """After autograd accumulates each gradient, copy it into its bucket and keep the view instead."""
    for bucket, buffer in zip(buckets, buffers, strict=True):
        offset = 0
        for parameter in bucket:
            view = buffer[offset : offset + parameter.numel()].view_as(parameter)
            offset += parameter.numel()

            def as_view(p: torch.Tensor, view: torch.Tensor = view) -> None:
                if p.grad is not None and p.grad is not view:
                    view.copy_(p.grad)
                    p.grad = view

            parameter.register_post_accumulate_grad_hook(as_view)  # type: ignore[attr-defined]


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


def wrap(
    model: nn.Module, options: DistributedOptions, *, fake: bool = False, device: Any = None
) -> nn.Module:
    """``model`` as each rank trains it: in DDP, or sharded by FSDP2 (each child with parameters, then the root).

    Without ``device`` the ranks are the fake process group's, which reduces nothing: DDP gets a
    communication hook that returns each bucket unchanged. With ``device`` (a launched rank's)
    the collectives are real.

    On fake tensors DDP's reducer cannot run (its C++ code copies gradient data), so its
    buckets are reproduced from the parameter sizes: one buffer per bucket, as DDP groups them,
    alive as long as the model, into which DDP copies the gradients it reduces. With
    ``gradient_as_bucket_view`` each gradient becomes a view into its bucket once autograd has
    accumulated it, as the reducer makes it: the gradient autograd allocated is freed, so a rank
    holds no gradients beside its buckets.

    Raises:
        InvalidInputError: FSDP cannot shard a module of ``model`` (one line naming it).
    """
    if options.strategy is Strategy.DDP and fake:
        buckets = _buckets(model, options.bucket_cap_mb)
        buffers = _bucket_buffers(buckets)
        model._memprobe_ddp_buckets = buffers  # type: ignore[assignment]
        if options.gradient_as_bucket_view:
            _grads_as_bucket_views(buckets, buffers)
        return model
    if options.strategy is Strategy.DDP:
        return _ddp(model, options, device)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():  # the mesh reads its ranks as real numbers, never fake ones
        mesh = init_device_mesh("cpu" if device is None else device.type, (options.world_size,))
    for name, module in _shard_units(model):
        try:
            fully_shard(module, mesh=mesh)
        except Exception as error:
            raise InvalidInputError(
                f"--strategy fsdp cannot shard module {name or type(model).__name__} "
                f"({type(module).__name__}): {str(error).splitlines()[0] if str(error) else type(error).__name__}"
            ) from None
    return model


def _ddp(model: nn.Module, options: DistributedOptions, device: Any) -> nn.Module:
    """Real DDP: on a launched rank's ``device``, or on the fake process group with a no-op hook."""
    import torch.distributed as dist

    ddp = nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device is not None and device.type == "cuda" else None,
        bucket_cap_mb=options.bucket_cap_mb,
        gradient_as_bucket_view=options.gradient_as_bucket_view,
        init_sync=device is not None,
    )
    if device is None:
        # DDP checks the hook's annotations as objects; this module's are strings (PEP 563).
        _return_bucket.__annotations__ = {
            "bucket": dist.GradBucket,
            "return": torch.futures.Future[torch.Tensor],
        }
        ddp.register_comm_hook(None, _return_bucket)
    return ddp


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

    measurement: Any  # memprobe.core.measurement.Measurement of rank 0
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
    """Measure one rank of ``config`` trained under ``options`` on ``device``.

    On trace and cpu one process stands in for every rank (the fake process group); on cuda the
    ranks are launched for real, one process per GPU, the worst rank is reported, and the
    ranks are stopped before this returns.
    """
    from dataclasses import replace

    from memprobe.backends import get_backend
    from memprobe.training.networks import build_for_config

    config = replace(config, strategy=options.strategy, world_size=options.world_size)
    backend: Any = get_backend(
        device, bucket_cap_mb=options.bucket_cap_mb, gradient_as_bucket_view=options.gradient_as_bucket_view
    )
    try:
        measurement = backend.measure(config)
    finally:
        if hasattr(backend, "close"):  # a CUDA backend's pool of ranks
            backend.close()
    fresh_model = getattr(backend, "_fresh_model", build_for_config)
    buckets = (
        gradient_bucket_bytes(fresh_model(config), options.bucket_cap_mb)
        if options.strategy is Strategy.DDP
        else 0
    )
    # Launched ranks report their peaks, not their shards.
    return RankMeasurement(measurement, options, buckets, dict(getattr(backend, "last_state_bytes", {})))
