"""Per-rank memory under DDP and FSDP2, on the fake process group (world sizes 2 to 8 in one process)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.distributed as dist

from memprobe.backends.allocation_tracker import cuda_block_size
from memprobe.backends.distributed import (
    DistributedOptions,
    Strategy,
    gradient_bucket_bytes,
    measure_per_rank,
)
from memprobe.backends.trace_backend import CpuBackend, TraceBackend
from memprobe.core.config import make_step_config
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
    from memprobe.core.errors import InvalidInputError

    config = make_step_config("tests.tiny_models:scalar_scale_net", (16, 16, 16), 2)
    with pytest.raises(InvalidInputError) as refused:
        measure_per_rank(config, DistributedOptions(Strategy.FSDP, 2))
    message = str(refused.value)
    assert "\n" not in message and "module gain" in message
    assert not dist.is_initialized()


PROBE = ("probe", "--arch", TINY, "--patch", "16", "16", "16", "--batch", "2", "--device", "trace")


def test_probe_gives_the_per_rank_and_global_batch(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tests.helpers import invoke

    result = invoke(capsys, *PROBE, "--gpus", "4", "--strategy", "ddp", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert (report["per_rank_batch"], report["global_batch"], report["world_size"]) == (2, 8, 4)
    assert report["gradient_bucket_bytes"] == cuda_block_size(_parameter_bytes())


def test_probe_refuses_fsdp_on_a_network_it_cannot_shard_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.helpers import invoke

    arguments = [*PROBE, "--gpus", "2", "--strategy", "fsdp"]
    arguments[2] = "tests.tiny_models:scalar_scale_net"
    result = invoke(capsys, *arguments)
    assert result.code == 2
    assert len(result.error_lines) == 1 and "module gain" in result.error_lines[0]


def test_per_rank_on_cuda_without_a_gpu_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers import invoke

    arguments = [*PROBE[:-1], "cuda", "--gpus", "2"]
    result = invoke(capsys, *arguments)
    assert result.code == 2 and len(result.error_lines) == 1


def test_gradient_as_bucket_view_on_trace_drops_the_separate_gradients() -> None:
    """The gradients become views into the buckets: the peak (in the optimizer step, at this
    small patch) drops by the gradients' blocks, and trace agrees with DDP's own reducer on cpu."""
    small = make_step_config(TINY, (4, 4, 4), 1)
    gradient_blocks = sum(cuda_block_size(p.numel() * p.element_size()) for p in tiny_net(1, 2).parameters())
    copies = measure_per_rank(small, DistributedOptions(Strategy.DDP, 2))
    views = measure_per_rank(small, DistributedOptions(Strategy.DDP, 2, gradient_as_bucket_view=True))
    assert copies.peak_allocated_bytes - views.peak_allocated_bytes == gradient_blocks  # type: ignore[operator]
    on_cpu = measure_per_rank(
        CONFIG, DistributedOptions(Strategy.DDP, 2, gradient_as_bucket_view=True), "cpu"
    )
    on_trace = measure_per_rank(CONFIG, DistributedOptions(Strategy.DDP, 2, gradient_as_bucket_view=True))
    assert on_trace.peak_allocated_bytes == on_cpu.peak_allocated_bytes


def test_a_rank_measurement_carries_its_strategy_and_world_size() -> None:
    rank = measure_per_rank(CONFIG, DistributedOptions(Strategy.FSDP, 2))
    config = rank.measurement.config
    assert (config.strategy, config.world_size, config.batch) == (Strategy.FSDP, 2, 2)
    assert "fsdp x2" in config.label()


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (("--gpus", "0"), "0"),
        (("--gpus", "1", "--strategy", "ddp"), "--gpus 2 or more"),
        (("--gradient-as-bucket-view",), "add --gpus N"),
    ],
)
def test_probe_refuses_a_layout_without_data_parallelism(
    arguments: tuple[str, ...], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.helpers import invoke

    result = invoke(capsys, *PROBE, *arguments)
    assert result.code == 2 and says in result.err


# Calibrations of one rank, and the plans from them ------------------------------------------


@pytest.fixture(scope="module")
def ddp_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database holding a trace calibration of the tiny network as one rank of DDP over 2 GPUs."""
    from memprobe.api import calibrate
    from tests.helpers import SMALL_BUDGET

    path = str(tmp_path_factory.mktemp("ddp") / "ddp.sqlite")
    report = calibrate(
        TINY, "fp32", device="trace", gpu_mem=SMALL_BUDGET, db=path, strategy="ddp", world_size=2
    )
    assert (report.calibration.strategy, report.calibration.world_size) == ("ddp", 2)
    return path


def test_calibrate_stores_each_rank_measurement_and_the_calibration_under_the_layout(
    ddp_database: str,
) -> None:
    from tests.helpers import query

    assert set(query(Path(ddp_database), "SELECT strategy, world_size FROM measurements")) == {("ddp", 2)}
    assert query(Path(ddp_database), "SELECT strategy, world_size FROM calibrations") == [("ddp", 2)]


def test_suggest_for_two_ddp_ranks_gives_the_per_rank_and_global_batch_in_each_convention(
    ddp_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from tests.helpers import invoke

    asked = ("suggest", "--arch", TINY, "--patch", "32", "32", "32", "--gpu-mem", "2GiB", "--device", "trace")
    asked += ("--precision", "fp32")  # the API's default, which the fixture calibrated
    result = invoke(capsys, *asked, "--gpus", "2", "--db", ddp_database, "--json")
    assert result.code == 0, result.err
    plan = json.loads(result.out)
    parallel = plan["data_parallel"]
    assert (parallel["per_rank_batch"], parallel["global_batch"]) == (plan["batch"], 2 * plan["batch"])
    assert parallel["nnunet"]["batch_size"] == plan["nnunet_plans"]["batch_size"] == 2 * plan["batch"]
    assert parallel["lightning"] == {"batch_size": plan["batch"], "devices": 2, "strategy": "ddp"}
    single = invoke(capsys, *asked, "--db", ddp_database)
    assert single.code != 0 and "--gpus 2 --strategy ddp" in single.err  # never the rank's calibration
    four = invoke(capsys, *asked, "--gpus", "4", "--db", ddp_database)
    assert "memprobe calibrate" in four.err and "--gpus 4 --strategy ddp" in four.err


def test_plan_for_two_ddp_ranks_in_yaml_has_both_batches(
    ddp_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from tests.helpers import invoke

    result = invoke(
        capsys,
        *("plan", "--arch", TINY, "--gpu-mem", "2GiB", "--patch", "32", "32", "32", "--device", "trace"),
        *("--gpus", "2", "--strategy", "ddp", "--precision", "fp32", "--db", ddp_database, "--yaml"),
    )
    assert result.code == 0, result.err
    plan = yaml.safe_load(result.out)
    assert plan["data_parallel"]["global_batch"] == 2 * plan["batch_size"]
    assert plan["nnunet_plans"]["batch_size"] == 2 * plan["batch_size"]
    assert plan["pytorch_connectomics"]["data.batch_size"] == plan["batch_size"]


def test_calibrate_with_fsdp_on_a_network_it_cannot_shard_is_one_line(
    db_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.helpers import invoke

    result = invoke(
        capsys,
        *("calibrate", "--arch", "tests.tiny_models:scalar_scale_net", "--device", "trace"),
        *("--gpus", "2", "--strategy", "fsdp", "--db", str(db_path)),
    )
    assert result.code == 2
    assert len(result.error_lines) == 1 and "module gain" in result.error_lines[0]
