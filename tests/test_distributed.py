"""Per-rank memory under DDP and FSDP2, on the fake process group (world sizes 2 to 8 in one process)."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from memprobe.api import make_step_config
from memprobe.backends.allocation_tracker import cuda_block_size
from memprobe.backends.distributed import (
    DistributedOptions,
    Strategy,
    gradient_bucket_bytes,
    measure_per_rank,
)
from memprobe.backends.trace_backend import CpuBackend, TraceBackend
from tests.tiny_models import tiny_net

TINY = "tests.tiny_models:tiny_net"
CONFIG = make_step_config(TINY, (16, 16, 16), 2)


def _parameter_bytes() -> int:
    return sum(p.numel() * p.element_size() for p in tiny_net(1, 2).parameters())


@pytest.mark.parametrize("world_size", [2, 4])
def test_ddp_rank_peak_is_the_single_gpu_peak_plus_the_gradient_buckets(world_size: int) -> None:
    single = TraceBackend().measure(CONFIG)
    rank = measure_per_rank(CONFIG, DistributedOptions(Strategy.DDP, world_size))
    assert rank.gradient_bucket_bytes == cuda_block_size(_parameter_bytes())  # one bucket under 1 MiB
    assert rank.peak_allocated_bytes == single.peak_allocated_bytes + rank.gradient_bucket_bytes  # type: ignore[operator]
    assert not dist.is_initialized()  # the fake process group is torn down


def test_the_bucket_model_on_trace_matches_ddps_own_reducer_on_cpu() -> None:
    single = CpuBackend().measure(CONFIG)
    rank = measure_per_rank(CONFIG, DistributedOptions(Strategy.DDP, 2), device="cpu")
    assert rank.peak_allocated_bytes == single.peak_allocated_bytes + rank.gradient_bucket_bytes  # type: ignore[operator]


def test_smaller_buckets_are_more_allocations_of_the_same_parameters() -> None:
    model = tiny_net(1, 2)
    whole = gradient_bucket_bytes(model)
    split = gradient_bucket_bytes(model, bucket_cap_mb=0.001)  # ~1 kB: one bucket per large tensor
    assert whole == cuda_block_size(_parameter_bytes())
    assert _parameter_bytes() <= split and split >= whole


def test_fsdp_shards_parameters_gradients_and_optimizer_state_about_1_over_n() -> None:
    whole = measure_per_rank(CONFIG, DistributedOptions(Strategy.FSDP, 1)).state_bytes
    for world_size in (2, 4, 8):
        shard = measure_per_rank(CONFIG, DistributedOptions(Strategy.FSDP, world_size)).state_bytes
        for kind in ("parameters", "gradients", "optimizer"):
            assert shard[kind] == pytest.approx(whole[kind] / world_size, rel=0.1), (kind, world_size)


def test_a_network_fsdp_cannot_shard_is_one_line_naming_the_module() -> None:
    from memprobe.errors import InvalidInputError

    config = make_step_config("tests.tiny_models:scalar_scale_net", (16, 16, 16), 2)
    with pytest.raises(InvalidInputError) as refused:
        measure_per_rank(config, DistributedOptions(Strategy.FSDP, 2))
    message = str(refused.value)
    assert "\n" not in message and "module gain" in message
    assert not dist.is_initialized()


PROBE = ("probe", "--arch", TINY, "--patch", "16", "16", "16", "--batch", "2", "--device", "trace")


def test_probe_gives_the_per_rank_and_global_batch(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tests.robustness_helpers import invoke

    result = invoke(capsys, *PROBE, "--gpus", "4", "--strategy", "ddp", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert (report["per_rank_batch"], report["global_batch"], report["world_size"]) == (2, 8, 4)
    assert report["gradient_bucket_bytes"] == cuda_block_size(_parameter_bytes())


def test_probe_refuses_fsdp_on_a_network_it_cannot_shard_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.robustness_helpers import invoke

    arguments = [*PROBE, "--gpus", "2", "--strategy", "fsdp"]
    arguments[2] = "tests.tiny_models:scalar_scale_net"
    result = invoke(capsys, *arguments)
    assert result.code == 2
    assert len(result.error_lines) == 1 and "module gain" in result.error_lines[0]


def test_per_rank_on_cuda_is_refused_until_ranks_are_launched(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.robustness_helpers import invoke

    arguments = [*PROBE[:-1], "cuda", "--gpus", "2"]
    result = invoke(capsys, *arguments)
    assert result.code == 2 and len(result.error_lines) == 1
