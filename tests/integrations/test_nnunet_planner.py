"""memprobe's measured planner inside nnU-Net's own (#12); skipped without nnunetv2 (memprobe[nnunet])."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest

pytest.importorskip("nnunetv2")

from tests.nnunet_dataset import NAME, make_dataset

BUDGET = 6 * 2**30


def _need(arch: str, patch: Sequence[int], batch: int, in_channels: int, out_channels: int) -> float:
    """A stand-in for calibrations: 1 GiB fixed plus 2 KiB a voxel of each sample."""
    return 2**30 + 2048.0 * batch * math.prod(patch)


def _use_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spacings: list[list[float]], shapes: list[list[int]]
) -> Path:
    """Write a dataset and point nnU-Net (already imported) at it; return nnUNet_preprocessed."""
    import nnunetv2.paths
    from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner as planner
    from nnunetv2.utilities import dataset_name_id_conversion as conversion

    raw, preprocessed = make_dataset(tmp_path, spacings, shapes)
    for module in (nnunetv2.paths, planner, conversion):
        monkeypatch.setattr(module, "nnUNet_raw", str(raw), raising=False)
        monkeypatch.setattr(module, "nnUNet_preprocessed", str(preprocessed), raising=False)
    return preprocessed


@pytest.fixture
def nnunet_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return _use_dataset(tmp_path, monkeypatch, [[3.0, 0.8, 0.8]] * 6, [[80, 300, 300]] * 6)


@pytest.mark.parametrize("preset", ["default", "resenc-l"])
def test_the_plans_load_and_build_the_network(nnunet_paths: Path, preset: str) -> None:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from memprobe.integrations.nnunet.planner import measured_planner, memprobe_plans_name, topology_arch

    planner = measured_planner(preset, NAME, BUDGET, _need)
    planner.plan_experiment()
    plans_file = nnunet_paths / NAME / f"{memprobe_plans_name(preset)}.json"
    assert plans_file.is_file()
    configuration = PlansManager(str(plans_file)).get_configuration("3d_fullres")
    patch, batch = configuration.patch_size, configuration.batch_size
    assert _need("", patch, 2, 1, 2) <= BUDGET  # nnU-Net's loop shrank it to the measured budget
    assert batch == max(2, int((BUDGET - 2**30) // (2048 * math.prod(patch))))
    network = get_network_from_plans(
        configuration.network_arch_class_name,
        configuration.network_arch_init_kwargs,
        configuration.network_arch_init_kwargs_req_import,
        1,
        2,
        allow_init=False,
        deep_supervision=True,
    )
    arch = topology_arch(configuration.network_arch_class_name, configuration.network_arch_init_kwargs)
    from memprobe.core.archs.registry import axis_divisors, resolve_arch

    assert all(p % d == 0 for p, d in zip(patch, axis_divisors(resolve_arch(arch)), strict=True))
    assert network is not None


def test_a_dataset_without_a_fingerprint_exits_2(
    nnunet_paths: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import nnunetv2

    from tests.helpers import run_cli

    (nnunet_paths / NAME / "dataset_fingerprint.json").unlink()
    site = str(Path(nnunetv2.__file__).resolve().parents[1])
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "nnUNet_raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(nnunet_paths))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.environ.get("PYTHONPATH", ""), site]))
    result = run_cli("nnunet", "plan", "-d", NAME, "--gpu-mem", "24GiB")
    assert result.code == 2, result.err
    assert "nnUNetv2_extract_fingerprint" in result.err.splitlines()[-1]


def test_the_fingerprint_reads_as_nnunets_planner_transposes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The largest spacing on the last axis: memprobe's reading agrees with nnU-Net's transpose."""
    import numpy as np
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    from memprobe.integrations.nnunet.fingerprint import read_fingerprint

    preprocessed = _use_dataset(tmp_path, monkeypatch, [[0.8, 0.7, 3.0]] * 6, [[300, 320, 40]] * 6)
    planner = ExperimentPlanner(NAME, 8)
    forward, _ = planner.determine_transpose()
    found = read_fingerprint(preprocessed / NAME / "dataset_fingerprint.json")
    assert found.transpose_forward == tuple(forward) == (2, 0, 1)
    expected = np.asarray(planner.determine_fullres_target_spacing())[forward]
    assert found.spacing == pytest.approx(tuple(expected))


def _seed_calibrations(db: Path, preset: str, budget_bytes: int) -> list[str]:
    """Store a calibration of each topology the planner visits; return their names."""
    from dataclasses import replace

    from memprobe.integrations.nnunet.planner import measured_planner
    from memprobe.store.database import Database
    from tests.helpers import make_calibration

    visited: list[str] = []

    def record(arch: str, patch: Sequence[int], batch: int, in_channels: int, out_channels: int) -> float:
        visited.append(arch)
        return _need(arch, patch, batch, in_channels, out_channels)

    measured_planner(preset, NAME, budget_bytes, record).plan_experiment()
    with Database.open(db) as database:
        for arch in dict.fromkeys(visited):
            calibration = make_calibration(arch, "fp16-mixed", per_voxel=20.0)
            database.add_calibration(
                replace(calibration, optimizer="sgd", deep_supervision=True, step="nnunet")
            )
    return list(dict.fromkeys(visited))


def test_nnunet_plan_answers_from_stored_calibrations_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seeded calibrations answer `memprobe nnunet plan`, twice alike, without a measurement."""
    import json

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from memprobe.integrations.nnunet.planner import memprobe_plans_name
    from tests.helpers import invoke, query

    preprocessed = _use_dataset(tmp_path, monkeypatch, [[0.8, 0.8, 3.0]] * 6, [[96, 96, 24]] * 6)
    db = tmp_path / "calibrations.sqlite"
    seeded = _seed_calibrations(db, "default", 40 * 2**30)
    arguments = ("nnunet", "plan", "-d", NAME, "--gpu-mem", "40GiB", "--device", "trace", "--db", str(db))
    first = invoke(capsys, *arguments, "--json")
    assert first.code == 0, first.err
    second = invoke(capsys, *arguments, "--json")
    assert second.code == 0, second.err
    assert json.loads(first.out) == json.loads(second.out)
    planned = json.loads(second.out)
    assert set(planned["calibrations"]) <= set(seeded) and planned["calibrations"]
    assert query(db, "SELECT COUNT(*) FROM measurements") == [(0,)]
    assert query(db, "SELECT COUNT(*) FROM calibrations") == [(len(seeded),)]
    assert planned["transpose_forward"] == [2, 0, 1]
    table = invoke(capsys, *arguments)
    assert "transpose_forward 2 0 1" in table.out and "calibration of nnunet[" in table.out
    plans_file = preprocessed / NAME / f"{memprobe_plans_name('default')}.json"
    configuration = PlansManager(str(plans_file)).get_configuration("3d_fullres")
    assert "x".join(map(str, configuration.patch_size)) == planned["patch"]
