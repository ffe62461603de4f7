"""Launch the ranks of a DDP or FSDP2 step for real: one process per GPU, the worst rank reported.

Each rank joins the process group (NCCL on CUDA, gloo on CPU), wraps the network as
memprobe.backends.distributed does without its no-op communication hook, and measures its own
step through a :class:`CudaBackend` whose runtime reads that rank's
``max_memory_allocated``/``max_memory_reserved``. The runtime is injected, so the ranks run on
CPU with gloo and a fake readout in the tests.

The ranks are a :class:`memprobe.backends.rank_pool.RankPool`: ``get_backend("cuda")`` builds
a :class:`PooledCudaBackend`, which keeps one pool for all the points of a calibration and stops
it when closed; :func:`launch_ranks` uses a pool for one point and closes it.
"""

from __future__ import annotations

from typing import Any

from memprobe.backends.cuda import CudaBackend
from memprobe.backends.rank_pool import RankPool
from memprobe.backends.rank_spec import LaunchSpec, worst_rank
from memprobe.core.measurement import Measurement

__all__ = ["LaunchSpec", "PooledCudaBackend", "launch_ranks", "worst_rank"]


def launch_ranks(spec: LaunchSpec) -> list[Measurement]:
    """Run ``spec``'s step on every rank at once; return each rank's measurement, rank 0 first.

    A rank that ended without a result (died, or stopped when another failed) is a measurement
    with ``error`` saying so; every rank is stopped before this returns.
    """
    with RankPool() as pool:
        return pool(spec)


class PooledCudaBackend(CudaBackend):
    """A CudaBackend whose data-parallel configurations are measured by one RankPool; ``close()`` stops its ranks."""

    def __init__(
        self,
        budget_bytes: int | None = None,
        runtime: Any = None,
        *,
        bucket_cap_mb: float = 25,
        gradient_as_bucket_view: bool = False,
        rank_pool: RankPool | None = None,
        device_count: Any = None,
    ) -> None:
        self.rank_pool = rank_pool or RankPool()
        super().__init__(
            budget_bytes,
            runtime,
            bucket_cap_mb=bucket_cap_mb,
            gradient_as_bucket_view=gradient_as_bucket_view,
            rank_launcher=self.rank_pool,
            device_count=device_count,
        )

    def close(self) -> None:
        self.rank_pool.close()

    def __enter__(self) -> PooledCudaBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
