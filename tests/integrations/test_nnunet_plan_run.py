"""`memprobe nnunet plan` in one command (#28): calibrate what is missing, resume, answer from what ships.

Datasets here are tiny (a few voxels), so each trace calibration of their small networks takes
seconds; skipped without nnunetv2 (memprobe[nnunet]).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("nnunetv2")

from tests.helpers import Result, invoke, measurement_count, query
from tests.nnunet_dataset import NAME, make_dataset

TINY = ([[1.0, 1.0, 1.0]] * 4, [[8, 16, 16]] * 4)  # nnU-Net plans nnunet[222.122] for it
SPLEEN = ([[5.0, 0.8, 0.8]] * 8, [[90, 512, 512]] * 8)  # the side-by-side benchmark's first dataset
PROSTATE = ([[3.6, 0.62, 0.62]] * 8, [[20, 320, 320]] * 8)  # shown to no shipped file


@pytest.fixture
def use_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Write a dataset and point nnU-Net (already imported) at it; return nnUNet_preprocessed."""

    def use(
        spacings: list[list[float]], shapes: list[list[int]], channels: int = 1, classes: int = 2
    ) -> Path:
        import nnunetv2.paths
        from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner as planner
        from nnunetv2.utilities import dataset_name_id_conversion as conversion

        raw, preprocessed = make_dataset(tmp_path, spacings, shapes, channels, classes)
        for module in (nnunetv2.paths, planner, conversion):
            monkeypatch.setattr(module, "nnUNet_raw", str(raw), raising=False)
            monkeypatch.setattr(module, "nnUNet_preprocessed", str(preprocessed), raising=False)
        return preprocessed

    return use


def _fixed_bytes() -> int:
    """The CUDA context and workspaces a trace plan charges whatever the network (no tensor yet)."""
    from memprobe.planning.overheads import context_overhead, workspace_overheads
    from tests.helpers import make_calibration

    calibration = make_calibration(device="trace")
    return context_overhead(calibration, None).bytes + sum(
        o.bytes for o in workspace_overheads(calibration, None)
    )


def _plan(capsys: pytest.CaptureFixture[str], db: Path, *arguments: str) -> Result:
    return invoke(capsys, "nnunet", "plan", "-d", NAME, "--db", str(db), "--json", *arguments)


@pytest.mark.slow
def test_a_new_dataset_plans_with_every_preset_in_one_command_and_a_second_run_measures_nothing(
    use_dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    preprocessed = use_dataset(*TINY)
    db = tmp_path / "fresh.sqlite"
    calibrated = []
    for preset in ("default", "resenc-m", "resenc-l"):
        first = _plan(capsys, db, "--gpu-mem", "8GiB", "--preset", preset)
        assert first.code == 0, first.err
        planned = json.loads(first.out)
        calibrated += planned["calibrated"]
        assert {t["figure"] for t in planned["topologies"]} <= {"measured", "calibrated"}
        if planned["calibrated"]:  # one progress display, a line per step off a terminal
            assert "nnunet plan: calibrating" in first.err and "[14/14]" in first.err
        configuration = PlansManager(planned["plans_file"]).get_configuration("3d_fullres")
        assert "x".join(map(str, configuration.patch_size)) == planned["patch"]
        assert Path(planned["plans_file"]).parent == preprocessed / NAME
    # ResEnc M and L build the same network: its calibration serves both
    assert calibrated == ["nnunet[222.122]", "nnunet-resenc[222.122]"]
    measured = measurement_count(db)
    for preset in ("default", "resenc-m", "resenc-l"):
        again = _plan(capsys, db, "--gpu-mem", "8GiB", "--preset", preset)
        assert again.code == 0 and json.loads(again.out)["steps_measured"] == 0, again.err
        assert {t["figure"] for t in json.loads(again.out)["topologies"]} == {"measured"}
    assert measurement_count(db) == measured


def test_without_calibrating_the_missing_topologies_are_named_and_nothing_is_measured(
    use_dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    use_dataset(*TINY)
    db = tmp_path / "fresh.sqlite"
    result = _plan(capsys, db, "--gpu-mem", "8GiB", "--no-calibrate")
    assert result.code == 3, result.err
    assert len(result.error_lines) == 1 and "nnunet[222.122]" in result.error_lines[0]
    assert "without --no-calibrate" in result.error_lines[0]
    assert measurement_count(db) == 0


def test_a_dataset_too_small_to_pool_names_the_network_and_measures_nothing(
    use_dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    use_dataset([[1.0, 1.0, 1.0]] * 4, [[6, 6, 6]] * 4)
    db = tmp_path / "fresh.sqlite"
    result = _plan(capsys, db, "--gpu-mem", "8GiB")
    assert result.code == 2, result.err
    assert len(result.error_lines) == 1 and "nnunet[]" in result.error_lines[0]
    assert "without pooling" in result.error_lines[0]
    assert measurement_count(db) == 0


@pytest.mark.slow
def test_an_interrupted_plan_keeps_what_finished_and_resumes(
    use_dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A budget above the fixed overheads by 1 MiB: the planner shrinks through topologies until none fits.

    Ctrl-C on the third step of the second topology's calibration: one line naming it, exit 2,
    the first calibration and the second's two steps kept; the same command then resumes and
    ends with the smallest topology nnU-Net's planner reached, exit 3.
    """
    from memprobe.backends.trace_backend import TraceBackend

    use_dataset(*TINY)
    db = tmp_path / "fresh.sqlite"
    budget = f"{_fixed_bytes() + 2**20}B"
    measure, calls = TraceBackend.measure, []

    def interrupted(self, config):  # type: ignore[no-untyped-def]
        calls.append(config.arch)
        if calls.count(config.arch) == 3 and len(set(calls)) == 2:
            raise KeyboardInterrupt
        return measure(self, config)

    monkeypatch.setattr(TraceBackend, "measure", interrupted)
    stopped = _plan(capsys, db, "--gpu-mem", budget)
    assert stopped.code == 2, stopped.err
    second = calls[-1]
    assert (
        len(stopped.error_lines) == 1 and f"interrupted while calibrating {second}" in stopped.error_lines[0]
    )
    assert "1 calibration finished and kept" in stopped.error_lines[0] and "resume" in stopped.error_lines[0]
    assert query(db, "SELECT arch FROM calibrations") == [(calls[0],)]
    assert measurement_count(db) == 14 + 2

    monkeypatch.setattr(TraceBackend, "measure", measure)
    resumed = _plan(capsys, db, "--gpu-mem", budget)
    assert resumed.code == 3, resumed.err
    assert len(resumed.error_lines) == 1 and "nothing fits" in resumed.error_lines[0]
    assert "the smallest network nnU-Net's planner reached, nnunet[" in resumed.error_lines[0]
    assert resumed.err.count("(stored)") == 2  # the two steps taken before the interrupt were reused
    arches = [row[0] for row in query(db, "SELECT arch FROM calibrations ORDER BY id")]
    assert arches[:2] == [calls[0], second] and len(arches) >= 2
    assert measurement_count(db) == 14 * len(arches)


def test_a_budget_below_the_fixed_overheads_names_the_topology(
    use_dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    use_dataset(*TINY)
    db = tmp_path / "fresh.sqlite"
    seeded = _seed(db, "nnunet[222.122]")
    result = _plan(capsys, db, "--gpu-mem", f"{_fixed_bytes() - 2**20}B")
    assert result.code == 3, result.err
    assert len(result.error_lines) == 1 and "nothing fits" in result.error_lines[0]
    assert "nnunet[222.122] needs" in result.error_lines[0] and "alone" in result.error_lines[0]
    assert measurement_count(db) == 0 and seeded


def _seed(db: Path, arch: str) -> bool:
    """Store a calibration of ``arch`` in nnU-Net's modes (its coefficients are the factories')."""
    from dataclasses import replace

    from memprobe.store.database import Database
    from tests.helpers import make_calibration

    with Database.open(db) as database:
        calibration = make_calibration(arch, "fp16-mixed", per_voxel=20.0)
        database.add_calibration(replace(calibration, optimizer="sgd", deep_supervision=True, step="nnunet"))
    return True


@pytest.fixture
def shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMPROBE_NO_SHIPPED", raising=False)


def test_the_benchmarks_datasets_answer_from_the_shipped_topologies(
    shipped: None, use_dataset, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from memprobe.integrations.nnunet.plan_run import plan_dataset

    use_dataset(*SPLEEN)
    for preset, gigabytes in (("default", 8), ("resenc-l", 24)):
        plan = plan_dataset(NAME, gigabytes * 10**9, preset, device="trace", db=tmp_path / "fresh.sqlite")
        assert plan.steps_measured == 0 and {a.figure.value for a in plan.topologies} == {"measured"}
        assert all("shipped with memprobe" in a.source for a in plan.topologies)
        assert plan.need.total_bytes <= gigabytes * 10**9
    assert not (tmp_path / "fresh.sqlite").exists() or measurement_count(tmp_path / "fresh.sqlite") == 0


def test_a_topology_never_measured_is_predicted_within_two_percent_of_its_trace_peak(
    shipped: None, use_dataset, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from memprobe.backends import get_backend
    from memprobe.core.config import make_step_config
    from memprobe.integrations.nnunet.plan_run import plan_dataset
    from memprobe.store.calibration_sources import shipped_calibrations

    use_dataset(*PROSTATE, channels=2, classes=3)
    plan = plan_dataset(NAME, 8 * 10**9, "default", device="trace", db=tmp_path / "fresh.sqlite")
    chosen = next(a for a in plan.topologies if a.arch == plan.arch)
    assert chosen.figure.value == "predicted" and plan.steps_measured == 0
    assert plan.arch not in {c.arch for c in shipped_calibrations()}
    config = make_step_config(
        plan.arch, plan.patch, plan.batch, precision="fp16-mixed", optimizer="sgd", in_channels=2,
        out_channels=3, deep_supervision=True, step="nnunet",
    )  # fmt: skip
    traced = get_backend("trace").measure(config).peak_allocated_bytes
    assert traced is not None
    assert abs(plan.need.allocated_bytes / traced - 1) < 0.02
