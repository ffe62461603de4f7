"""What a launch of DDP or FSDP2 ranks is given, and how its ranks' measurements are judged.

A leaf of ``rank_pool`` (which spawns the ranks, each measuring through a CudaBackend) and of
``cuda`` (whose backend asks for its ranks' measurements): both import it; cuda never imports
the pool, which builds on cuda's backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memprobe.backends.distributed import DEFAULT_BUCKET_CAP_MB, DistributedOptions, options_for
from memprobe.core.config import StepConfig
from memprobe.core.measurement import Measurement


@dataclass(frozen=True)
class LaunchSpec:
    """What every rank needs to measure one configuration (sent to each rank of a pool).

    ``device_type`` and ``runtime`` choose how the ranks are started: a pool restarts its ranks
    when they change. ``port`` is where they meet (0: a free one, chosen at each start).
    """

    config: StepConfig
    bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB
    gradient_as_bucket_view: bool = False
    device_type: str = "cuda"  # "cuda": one GPU per rank, NCCL; "cpu": gloo
    runtime: Any = None  # a CudaRuntime for this rank's device; None: torch.cuda's
    budget_bytes: int | None = None
    port: int = 0

    @property
    def options(self) -> DistributedOptions:
        options = options_for(self.config, self.bucket_cap_mb, self.gradient_as_bucket_view)
        assert options is not None, "a launch is of a data-parallel configuration"
        return options


def worst_rank(measurements: list[Measurement]) -> Measurement:
    """The rank that decides whether the step fits: an out-of-memory one, a failed one, else the largest peak."""
    unreported = lambda m: "ended without a result" in (m.error or "")
    failed = (
        [m for m in measurements if m.oom]
        or [m for m in measurements if m.error is not None and not unreported(m)]
        or [m for m in measurements if not m.ok]
    )
    return failed[0] if failed else max(measurements, key=lambda m: m.peak_allocated_bytes or 0)
