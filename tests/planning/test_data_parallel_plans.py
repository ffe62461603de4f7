"""Plans of data-parallel layouts: `plan --config` per rank, and the DDP bucket settings every DDP plan names."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from memprobe.formula.calibration import Calibration
from memprobe.integrations.pytc.config_file import plan_config
from memprobe.integrations.pytc.planner import AutoConfigPlanner
from memprobe.planning.exports import ddp_buckets
from memprobe.store.database import Database
from tests.helpers import invoke, make_calibration

CONFIG = """\
model:
  architecture: mednext
data:
  target_spacing: [1.0, 1.0, 1.0]
  median_shape: [128, 256, 256]
  patch_size: [96, 96, 96]  # kept: the batch is planned for it
  batch_size:
"""
DEFAULT_BUCKETS = {"bucket_cap_mb": 25, "gradient_as_bucket_view": False, "source": "assumed"}


def _layout(calibration: Calibration, strategy: str, world_size: int, per_voxel: float) -> Calibration:
    """One rank of ``strategy`` over ``world_size`` GPUs, needing less per voxel than one GPU alone."""
    rank = make_calibration(calibration.arch, calibration.precision, per_voxel=per_voxel)
    return replace(rank, strategy=strategy, world_size=world_size)


@pytest.fixture
def layouts_db(db_path: Path) -> Path:
    """MedNeXt at bf16-mixed (the plans' choice without a GPU): one GPU, DDP x4 and FSDP x2."""
    single = make_calibration("mednext", "bf16-mixed", per_voxel=40.0)
    with Database.open(db_path) as db:
        db.add_calibration(single)
        db.add_calibration(_layout(single, "ddp", 4, 16.0))
        db.add_calibration(_layout(single, "fsdp", 2, 24.0))
    return db_path


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "mednext_auto.yaml"
    path.write_text(CONFIG)
    return path


def _plan_config(capsys: pytest.CaptureFixture[str], config: Path, db: Path, *layout: str) -> dict:
    result = invoke(
        capsys, "plan", "--config", str(config), "--gpu-mem", "24GiB", "--db", str(db), *layout, "--json"
    )
    assert result.code == 0, result.err
    return json.loads(result.out)


# `plan --config` with --gpus N --strategy S -------------------------------------------------


def test_plan_config_plans_one_rank_of_the_layout_given(
    layouts_db: Path, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The batch comes from the DDP x4 calibration (larger than one GPU's), and is the per-rank one."""
    single = _plan_config(capsys, config_path, layouts_db)
    ddp = _plan_config(capsys, config_path, layouts_db, "--gpus", "4", "--strategy", "ddp")
    per_rank = ddp["set"]["data.batch_size"]
    assert per_rank > single["set"]["data.batch_size"]
    parallel = ddp["data_parallel"]
    assert (parallel["strategy"], parallel["world_size"]) == ("ddp", 4)
    assert (parallel["per_rank_batch"], parallel["global_batch"]) == (per_rank, 4 * per_rank)
    assert parallel["lightning"] == {"batch_size": per_rank, "devices": 4, "strategy": "ddp"}
    assert any(f"batch {per_rank} per GPU, {4 * per_rank} global" in note for note in ddp["notes"])
    assert "data_parallel" not in single and "ddp_buckets" not in single


def test_plan_config_batch_is_the_one_plan_arch_gives_for_that_layout(
    layouts_db: Path, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for layout in (("--gpus", "4", "--strategy", "ddp"), ("--gpus", "2", "--strategy", "fsdp")):
        planned = _plan_config(capsys, config_path, layouts_db, *layout)["set"]
        by_arch = invoke(
            capsys,
            *(
                "plan",
                "--arch",
                "mednext",
                "--gpu-mem",
                "24GiB",
                "--patch",
                "96",
                "96",
                "96",
                "--safety",
                "0.85",
            ),
            *("--precision", "bf16-mixed", "--db", str(layouts_db), *layout, "--json"),
        )
        assert by_arch.code == 0, by_arch.err
        assert json.loads(by_arch.out)["batch_size"] == planned["data.batch_size"], layout


def test_the_written_config_holds_the_per_rank_batch(
    layouts_db: Path, config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "planned.yaml"
    result = invoke(
        capsys,
        *("plan", "--config", str(config_path), "--gpu-mem", "24GiB", "--db", str(layouts_db)),
        *("--gpus", "4", "--strategy", "ddp", "--out", str(out)),
    )
    assert result.code == 0, result.err
    batch = yaml.safe_load(out.read_text())["data"]["batch_size"]
    assert f"batch {batch} per GPU, {4 * batch} global" in result.out
    assert "ddp buckets: bucket_cap_mb=25, gradient_as_bucket_view=False" in result.out


def test_plan_config_printing_the_yaml_says_the_layout_on_stderr(
    layouts_db: Path, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = invoke(
        capsys,
        *("plan", "--config", str(config_path), "--gpu-mem", "24GiB", "--db", str(layouts_db)),
        *("--gpus", "4", "--strategy", "ddp"),
    )
    assert result.code == 0, result.err
    batch = yaml.safe_load(result.out)["data"]["batch_size"]
    assert f"ddp x4: batch {batch} per GPU, {4 * batch} global" in result.err


def test_plan_config_without_a_calibration_of_the_layout_names_the_calibrate_command(
    layouts_db: Path, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = invoke(
        capsys,
        *("plan", "--config", str(config_path), "--gpu-mem", "24GiB", "--db", str(layouts_db)),
        *("--gpus", "8", "--strategy", "ddp"),
    )
    lines = result.err.strip().splitlines()
    assert result.code != 0 and len(lines) == 1, result.err
    assert "memprobe calibrate" in lines[0] and "--gpus 8 --strategy ddp" in lines[0]


def test_plan_config_refuses_a_strategy_on_one_gpu_in_one_line(
    layouts_db: Path, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = invoke(
        capsys,
        *("plan", "--config", str(config_path), "--gpu-mem", "24GiB", "--db", str(layouts_db)),
        *("--strategy", "ddp"),
    )
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert "--gpus 2 or more" in result.err


def test_num_gpus_is_the_old_name_of_gpus_and_says_so(
    capsys: pytest.CaptureFixture[str], layouts_db: Path
) -> None:
    """One name for the GPUs a plan is for: ``--num-gpus`` still works, warning with the new one."""
    result = invoke(
        capsys, "plan", "--gpu-mem", "24GiB", "--num-gpus", "4", "--db", str(layouts_db), "--json"
    )
    assert "--num-gpus is deprecated: use --gpus" in result.err
    new = invoke(capsys, "plan", "--gpu-mem", "24GiB", "--gpus", "4", "--db", str(layouts_db), "--json")
    assert (result.code, result.out) == (new.code, new.out)
    assert "--num-gpus" not in invoke(capsys, "plan", "--help").out


def test_the_planner_api_plans_per_rank_and_gives_the_global_batch(layouts_db: Path) -> None:
    planner = AutoConfigPlanner(
        "mednext",
        median_shape=[128, 256, 256],
        gpu_memory_gb=24.0,
        db=layouts_db,
        strategy="ddp",
        world_size=4,
    )
    result = planner.plan()
    assert (result.strategy, result.world_size) == ("ddp", 4)
    assert result.global_batch_size == 4 * result.batch_size
    assert result.ddp_buckets == DEFAULT_BUCKETS
    assert any("ddp x4" in note for note in result.planning_notes)
    assert any(note.startswith("ddp buckets:") for note in result.planning_notes)
    config = {"model": {"architecture": "mednext"}, "data": {"median_shape": [128, 256, 256]}}
    planned = plan_config(config, gpu_memory_gb=24.0, db=layouts_db, strategy="ddp", world_size=4)
    assert planned.planned["data.batch_size"] == result.batch_size
    assert planned.planned["data.patch_size"] == result.patch_size == [128, 256, 256]  # the median shape
    alone = plan_config(config, gpu_memory_gb=24.0, db=layouts_db).planned["data.patch_size"]
    assert alone != result.patch_size  # one GPU's calibration needs more per voxel: a smaller patch
    assert any("ddp x4" in note for note in planned.notes)


# DDP's bucket settings ----------------------------------------------------------------------


def test_every_ddp_plan_names_its_bucket_settings_and_no_other_plan_does(
    layouts_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asked = ("plan", "--arch", "mednext", "--gpu-mem", "24GiB", "--patch", "128", "128", "128")
    asked += ("--db", str(layouts_db))
    ddp = invoke(capsys, *asked, "--gpus", "4", "--strategy", "ddp", "--json")
    assert ddp.code == 0, ddp.err
    data = json.loads(ddp.out)
    assert data["ddp_buckets"] == data["calibration"]["ddp_buckets"] == DEFAULT_BUCKETS
    text = invoke(capsys, *asked, "--gpus", "4", "--strategy", "ddp")
    assert "ddp buckets: bucket_cap_mb=25, gradient_as_bucket_view=False (DDP's defaults, assumed" in text.out
    for layout in ((), ("--gpus", "2", "--strategy", "fsdp")):
        other = invoke(capsys, *asked, *layout, "--json")
        assert other.code == 0, other.err
        assert "ddp_buckets" not in json.loads(other.out) and "ddp_buckets" not in other.out
        assert "ddp buckets" not in invoke(capsys, *asked, *layout).out


def test_suggest_for_ddp_names_the_bucket_settings(
    layouts_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asked = ("suggest", "--arch", "mednext", "--patch", "128", "128", "128", "--gpu-mem", "24GiB")
    asked += ("--db", str(layouts_db))
    ddp = invoke(capsys, *asked, "--gpus", "4", "--strategy", "ddp", "--json")
    assert ddp.code == 0, ddp.err
    assert json.loads(ddp.out)["calibration"]["ddp_buckets"] == DEFAULT_BUCKETS
    text = invoke(capsys, *asked, "--gpus", "4", "--strategy", "ddp")
    assert "ddp buckets 25 MB" in " ".join(text.out.split())
    single = invoke(capsys, *asked, "--json")
    assert single.code == 0, single.err
    assert "ddp_buckets" not in single.out and "ddp buckets" not in invoke(capsys, *asked).out


def test_a_calibration_that_recorded_its_buckets_gives_them_as_measured() -> None:
    recorded = {"ddp_buckets": {"bucket_cap_mb": 100, "gradient_as_bucket_view": True}}
    calibration = replace(make_calibration(), strategy="ddp", world_size=2, environment=recorded)
    assert ddp_buckets(calibration) == {
        "bucket_cap_mb": 100,
        "gradient_as_bucket_view": True,
        "source": "measured",
    }
    assert ddp_buckets(replace(calibration, environment={})) == DEFAULT_BUCKETS
    assert ddp_buckets(replace(calibration, strategy="fsdp")) is None
    assert ddp_buckets(make_calibration()) is None


def test_calibrate_records_the_bucket_settings_it_measured_ddp_with(db_path: Path) -> None:
    from memprobe.api import calibrate
    from tests.helpers import SMALL_BUDGET

    report = calibrate(
        "tests.tiny_models:tiny_net", device="trace", budget=SMALL_BUDGET, db=db_path,
        strategy="ddp", world_size=2, search=False,
    )  # fmt: skip
    assert report.calibration.environment["ddp_buckets"] == {
        "bucket_cap_mb": 25,
        "gradient_as_bucket_view": False,
    }
    assert ddp_buckets(report.calibration) == {**DEFAULT_BUCKETS, "source": "measured"}
    single = calibrate(
        "tests.tiny_models:tiny_net", device="trace", budget=SMALL_BUDGET, db=db_path, search=False
    )
    assert "ddp_buckets" not in single.calibration.environment
