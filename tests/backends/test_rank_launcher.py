"""Ranks launched for real, for one configuration: on CPU with gloo here, one per GPU with NCCL on CUDA."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from memprobe.backends.cuda import CudaBackend
from memprobe.backends.rank_launcher import LaunchSpec, launch_ranks, worst_rank
from memprobe.core.config import make_step_config
from memprobe.core.errors import DeviceUnavailableError
from memprobe.core.measurement import Environment, Measurement
from tests.tiny_models import RankRuntime, tiny_net

TINY = "tests.tiny_models:tiny_net"
DDP2 = make_step_config(TINY, (8, 8, 8), 1, strategy="ddp", world_size=2)


@pytest.mark.slow
def test_two_spawned_gloo_ranks_run_real_ddp_and_report_each_peak_and_the_worst() -> None:
    measurements = launch_ranks(LaunchSpec(DDP2, device_type="cpu", runtime=RankRuntime()))
    assert [m.peak_allocated_bytes for m in measurements] == [2**20, 2**21]  # rank 0, rank 1
    assert all(m.ok and m.step_seconds and m.warmup_steps == 1 for m in measurements)
    parameters = sum(p.numel() for p in tiny_net(1, 2).parameters())
    assert {m.parameter_count for m in measurements} == {parameters}
    assert {"forward", "backward", "optimizer"} <= set(measurements[0].phase_peaks_bytes)
    assert worst_rank(measurements).peak_allocated_bytes == 2**21


@pytest.mark.slow
def test_fsdp_ranks_launch_too() -> None:
    config = replace(DDP2, strategy=DDP2.strategy.FSDP)
    measurements = launch_ranks(LaunchSpec(config, device_type="cpu", runtime=RankRuntime()))
    assert all(m.ok for m in measurements), [m.error for m in measurements]


@pytest.mark.slow
def test_a_rank_that_dies_without_a_result_fails_the_launch_without_hanging() -> None:
    config = replace(DDP2, arch="tests.tiny_models:exits_on_rank_1_net")
    spec = LaunchSpec(config, device_type="cpu", runtime=RankRuntime())
    measurements = launch_ranks(spec)
    assert not measurements[1].ok and "rank 1 ended without a result" in (measurements[1].error or "")
    assert not worst_rank(measurements).ok


def _measured(peak: int | None, **fields: Any) -> Measurement:
    return Measurement(DDP2, Environment("cuda", "rank"), peak, **fields)


def test_the_worst_rank_is_one_out_of_memory_then_one_failed_then_the_largest_peak() -> None:
    assert worst_rank([_measured(5), _measured(7), _measured(6)]).peak_allocated_bytes == 7
    stopped = _measured(None, error="rank 0 ended without a result (killed)")
    assert worst_rank([stopped, _measured(None, oom=True)]).oom
    assert worst_rank([stopped, _measured(None, error="boom")]).error == "boom"
    assert worst_rank([_measured(5), stopped]).error == stopped.error


def test_cuda_launches_one_rank_per_gpu_and_reports_the_worst_as_this_gpu() -> None:
    from tests.backends.test_cuda_backend import FakeRuntime

    launched: list[LaunchSpec] = []

    def launcher(spec: LaunchSpec) -> list[Measurement]:
        launched.append(spec)
        return [_measured(3 * 2**30), _measured(4 * 2**30)]

    backend = CudaBackend(
        budget_bytes=10 * 2**30,
        runtime=FakeRuntime(),
        gradient_as_bucket_view=True,
        rank_launcher=launcher,
        device_count=lambda: 2,
    )
    measurement = backend.measure(DDP2)
    assert measurement.peak_allocated_bytes == 4 * 2**30
    assert measurement.environment.device_name == "Fake GPU 80GB"
    (spec,) = launched
    assert (spec.device_type, spec.budget_bytes, spec.gradient_as_bucket_view) == ("cuda", 10 * 2**30, True)
    assert len(backend.last_rank_measurements) == 2


def test_cuda_with_fewer_gpus_than_ranks_is_refused_in_one_line() -> None:
    from tests.backends.test_cuda_backend import FakeRuntime

    backend = CudaBackend(runtime=FakeRuntime(), rank_launcher=lambda spec: [], device_count=lambda: 1)
    with pytest.raises(DeviceUnavailableError, match="--gpus 2 launches one rank per GPU, but 1 CUDA GPU is"):
        backend.measure(DDP2)


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs"
)
def test_two_nccl_ranks_on_two_gpus_read_their_own_peaks() -> None:
    from memprobe.backends import get_backend

    backend: Any = get_backend("cuda")
    try:
        measurement = backend.measure(DDP2)
    finally:
        backend.close()
    assert measurement.ok and measurement.peak_allocated_bytes and measurement.reserved_source == "measured"
