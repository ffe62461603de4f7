"""One pool of ranks for a whole calibration: real spawned gloo ranks on CPU here, NCCL ranks on 2 GPUs.

Each rank reads its counters through ``PidRuntime``, which reports the rank's own process id as
its ``context_bytes``: the measurements say which processes measured them. The models below
fail on purpose at batch 3 (out of memory, a dead rank, an interrupt); they live here because
the spawned ranks import them by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from memprobe.backends.rank_launcher import PooledCudaBackend
from memprobe.backends.rank_pool import RankPool
from memprobe.backends.recorder import MeasurementLog
from memprobe.core.config import StepConfig, make_step_config
from memprobe.core.measurement import Measurement
from tests.tiny_models import RankRuntime, TinyNet

TINY = "tests.tiny_models:tiny_net"
HERE = "tests.backends.test_rank_pool"
_held_bytes = 0  # what a rank's allocator still holds after a point (set by holds_memory_net)


class PidRuntime(RankRuntime):
    """A rank's counters on CPU: rank r peaks at (r + 1) MiB; its ``context_bytes`` is its process id."""

    def memory_allocated(self) -> int:
        return _held_bytes

    def context_bytes(self) -> int | None:
        return os.getpid()


class _FailsAtBatch3(TinyNet):
    """A TinyNet that does ``fail(rank)`` when its forward sees a batch of 3 or more."""

    def __init__(self, in_channels: int, out_channels: int, fail: Any) -> None:
        super().__init__(in_channels, out_channels)
        self.fail = fail

    def forward(self, x):  # type: ignore[no-untyped-def]
        import torch.distributed as dist

        if x.shape[0] >= 3:
            self.fail(dist.get_rank())
        return super().forward(x)


def _out_of_memory(rank: int) -> None:
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _out_of_memory_on_rank_1(rank: int) -> None:
    if rank == 1:
        _out_of_memory(rank)


def _exit_on_rank_1(rank: int) -> None:
    if rank == 1:
        os._exit(3)


def _interrupt_the_parent(rank: int) -> None:
    if rank == 0:
        os.kill(os.getppid(), signal.SIGINT)  # what Ctrl-C does to the parent; the ranks ignore it
    time.sleep(60)


def _kill_the_parent(rank: int) -> None:
    if rank == 0:
        os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(60)


def oom_net(in_channels: int, out_channels: int) -> nn.Module:
    return _FailsAtBatch3(in_channels, out_channels, _out_of_memory)


def oom_on_rank_1_net(in_channels: int, out_channels: int) -> nn.Module:
    return _FailsAtBatch3(in_channels, out_channels, _out_of_memory_on_rank_1)


def exits_on_rank_1_net(in_channels: int, out_channels: int) -> nn.Module:
    return _FailsAtBatch3(in_channels, out_channels, _exit_on_rank_1)


def interrupts_net(in_channels: int, out_channels: int) -> nn.Module:
    return _FailsAtBatch3(in_channels, out_channels, _interrupt_the_parent)


def kills_parent_net(in_channels: int, out_channels: int) -> nn.Module:
    return _FailsAtBatch3(in_channels, out_channels, _kill_the_parent)


class _HoldsMemory(TinyNet):
    def forward(self, x):  # type: ignore[no-untyped-def]
        global _held_bytes
        if x.shape[0] == 2:
            _held_bytes = 4096  # as a tensor kept alive past the step would
        return super().forward(x)


def holds_memory_net(in_channels: int, out_channels: int) -> nn.Module:
    return _HoldsMemory(in_channels, out_channels)


def _config(arch: str, batch: int, strategy: str = "ddp") -> StepConfig:
    return make_step_config(arch, (8, 8, 8), batch, strategy=strategy, world_size=2)


def _backend(straggler_seconds: float = 30.0) -> PooledCudaBackend:
    from tests.backends.test_cuda_backend import FakeRuntime

    pool = RankPool("cpu", PidRuntime(), straggler_seconds=straggler_seconds)
    return PooledCudaBackend(runtime=FakeRuntime(), rank_pool=pool, device_count=lambda: 2)


def _measured_by(backend: PooledCudaBackend) -> list[int | None]:
    """The process id each rank reported with its last measurement, rank 0 first."""
    return [m.context_bytes for m in backend.last_rank_measurements]


def _running(pid: int | None) -> bool:
    """Whether ``pid`` is a live process; a zombie has ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in {"Z", "X"}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_calibration_starts_each_rank_once_and_closing_the_backend_stops_them(strategy: str) -> None:
    measured_by: list[list[int | None]] = []
    with _backend() as backend:
        log = MeasurementLog(
            backend, on_measurement=lambda m, reused: measured_by.append(_measured_by(backend))
        )
        measurements = [log.measure(_config(TINY, batch, strategy)) for batch in (1, 2, 3)]
        ranks = backend.rank_pool.process_ids
    assert all(m.ok for m in measurements), [m.error for m in measurements]
    assert [m.peak_allocated_bytes for m in measurements] == [2**21] * 3  # rank 1's, the worst
    assert len(set(ranks)) == 2 and measured_by == [ranks] * 3
    assert backend.rank_pool.starts == 1
    assert backend.rank_pool.process_ids == [] and not any(_running(pid) for pid in ranks)


@pytest.mark.slow
def test_a_point_out_of_memory_on_every_rank_leaves_the_pool_serving_the_next() -> None:
    with _backend() as backend:
        first = backend.measure(_config(HERE + ":oom_net", 1))
        ranks = _measured_by(backend)
        too_large = backend.measure(_config(HERE + ":oom_net", 3))
        each_rank = list(backend.last_rank_measurements)
        after = backend.measure(_config(HERE + ":oom_net", 2))
        assert first.ok and after.ok and too_large.oom
        assert all(m.oom for m in each_rank)
        assert _measured_by(backend) == ranks == backend.rank_pool.process_ids
        assert backend.rank_pool.starts == 1


@pytest.mark.slow
def test_a_point_out_of_memory_on_one_rank_stops_the_stuck_one_and_the_next_point_gets_fresh_ranks() -> None:
    with _backend(straggler_seconds=2) as backend:
        backend.measure(_config(HERE + ":oom_on_rank_1_net", 1))
        ranks = _measured_by(backend)
        started = time.monotonic()
        too_large = backend.measure(_config(HERE + ":oom_on_rank_1_net", 3))
        waited = time.monotonic() - started
        stuck = backend.last_rank_measurements[0]
        after = backend.measure(_config(HERE + ":oom_on_rank_1_net", 2))
        assert too_large.oom and waited < 20
        assert (
            stuck.error == "rank 0 ended without a result (stopped: still running 2 s after rank 1 answered)"
        )
        assert after.ok and backend.rank_pool.starts == 2
        assert not set(_measured_by(backend)) & set(ranks) and not any(_running(pid) for pid in ranks)


@pytest.mark.slow
def test_a_rank_that_dies_fails_its_point_in_one_line_and_the_next_point_gets_fresh_ranks() -> None:
    with _backend() as backend:
        backend.measure(_config(HERE + ":exits_on_rank_1_net", 1))
        ranks = _measured_by(backend)
        failed = backend.measure(_config(HERE + ":exits_on_rank_1_net", 3))
        dead = backend.last_rank_measurements[1]
        after = backend.measure(_config(HERE + ":exits_on_rank_1_net", 2))
        fresh = _measured_by(backend)
    assert not failed.ok and "\n" not in (failed.error or "")
    assert dead.error == "rank 1 ended without a result (its process exited with code 3)"
    assert after.ok and backend.rank_pool.starts == 2
    assert not set(ranks) & set(fresh) and not any(_running(pid) for pid in ranks)


@pytest.mark.slow
def test_a_rank_still_holding_memory_after_a_point_is_replaced_before_the_next() -> None:
    with _backend() as backend:
        backend.measure(_config(HERE + ":holds_memory_net", 1))
        ranks = _measured_by(backend)
        holding = backend.measure(_config(HERE + ":holds_memory_net", 2))
        assert holding.ok and _measured_by(backend) == ranks  # measured from a clean start: kept
        backend.measure(_config(HERE + ":holds_memory_net", 1))
        assert not set(_measured_by(backend)) & set(ranks)
        assert backend.rank_pool.starts == 2


@pytest.mark.slow
def test_an_interrupt_keeps_the_measurements_taken_and_stops_the_ranks_at_once() -> None:
    measured_by: list[list[int | None]] = []
    backend = _backend()
    log = MeasurementLog(backend, on_measurement=lambda m, reused: measured_by.append(_measured_by(backend)))
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            for batch in (1, 2, 3):
                log.measure(_config(HERE + ":interrupts_net", batch))
        stopped_within = time.monotonic() - started
        left_running = [pid for pid in measured_by[0] if _running(pid)]
    finally:
        backend.close()  # nothing left to stop when the interrupt stopped the ranks, as it should
    assert [m.config.batch for m in log.taken] == [1, 2] and all(m.ok for m in log.taken)
    assert left_running == [] and stopped_within < 45  # rank 0 sleeps 60 s: nothing waited for it


@pytest.mark.slow
def test_ctrl_c_is_the_parents_to_handle_the_ranks_ignore_it() -> None:
    with _backend() as backend:
        backend.measure(_config(TINY, 1))
        ranks = _measured_by(backend)
        for pid in ranks:
            os.kill(pid or 0, signal.SIGINT)  # a terminal's Ctrl-C reaches every process of the job
        time.sleep(1)
        assert backend.measure(_config(TINY, 2)).ok
        assert _measured_by(backend) == ranks and backend.rank_pool.starts == 1


_ORPHANED = """
import json
from memprobe.backends.rank_pool import RankPool
from memprobe.backends.rank_spec import LaunchSpec
from tests.backends.test_rank_pool import PidRuntime, _config

pool = RankPool("cpu", PidRuntime())
pool(LaunchSpec(_config("tests.backends.test_rank_pool:kills_parent_net", 1)))
print(json.dumps(pool.process_ids), flush=True)
pool(LaunchSpec(_config("tests.backends.test_rank_pool:kills_parent_net", 3)))
"""


@pytest.mark.slow
def test_ranks_end_themselves_when_their_parent_is_killed_mid_point(tmp_path: Path) -> None:
    import json

    repo = Path(__file__).resolve().parents[2]
    with (
        (tmp_path / "stderr").open("w") as stderr,
        subprocess.Popen(
            [sys.executable, "-c", _ORPHANED], cwd=repo, stdout=subprocess.PIPE, stderr=stderr, text=True
        ) as parent,
    ):
        assert parent.stdout is not None
        ranks = json.loads(parent.stdout.readline() or "[]")
        returncode = parent.wait(timeout=120)
    try:
        assert returncode == -signal.SIGKILL, (tmp_path / "stderr").read_text()[-2000:]
        deadline = time.monotonic() + 15  # one rank sleeps 60 s, the other waits in a collective
        while any(_running(pid) for pid in ranks) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(ranks) == 2 and not any(_running(pid) for pid in ranks)
    finally:
        for pid in ranks:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_probe_of_one_configuration_stops_its_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    import memprobe.backends
    from memprobe.backends.distributed import measure_per_rank, options_for

    built: list[PooledCudaBackend] = []  # held here, so only an explicit close stops the ranks

    def get_backend(*args: object, **options: object) -> PooledCudaBackend:
        built.append(_backend())
        return built[0]

    monkeypatch.setattr(memprobe.backends, "get_backend", get_backend)
    config = _config(TINY, 1)
    options = options_for(config)
    assert options is not None
    result = measure_per_rank(config, options, "cuda")
    assert result.measurement.ok
    ranks = _measured_by(built[0])
    assert built[0].rank_pool.process_ids == [] and not any(_running(pid) for pid in ranks)


def test_get_backend_measures_data_parallel_cuda_configurations_through_one_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import memprobe.backends

    monkeypatch.setattr(memprobe.backends, "cuda_available", lambda: True)
    backend = memprobe.backends.get_backend("cuda", gradient_as_bucket_view=True)
    assert isinstance(backend, PooledCudaBackend) and backend.gradient_as_bucket_view
    assert backend._rank_launcher is backend.rank_pool and backend.rank_pool.starts == 0
    backend.close()  # nothing started: nothing to stop


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs"
)
def test_a_three_point_calibration_on_two_gpus_starts_its_ranks_once_and_reads_what_fresh_ranks_read() -> (
    None
):
    from memprobe.backends import get_backend
    from memprobe.backends.rank_launcher import LaunchSpec, launch_ranks

    configs = [replace(_config(TINY, 1), patch=(16, 16, 16), batch=batch) for batch in (1, 2, 4)]
    backend: Any = get_backend("cuda")
    try:
        pooled = [MeasurementLog(backend).measure(config) for config in configs]
        last: list[Measurement] = list(backend.last_rank_measurements)
        assert backend.rank_pool.starts == 1, [m.error for m in pooled]
    finally:
        backend.close()
    assert all(m.ok and m.reserved_source == "measured" for m in pooled), [m.error for m in pooled]
    assert [m.peak_allocated_bytes for m in pooled] == sorted(m.peak_allocated_bytes or 0 for m in pooled)
    fresh = launch_ranks(LaunchSpec(configs[-1]))
    assert [m.peak_allocated_bytes for m in last] == [m.peak_allocated_bytes for m in fresh]
