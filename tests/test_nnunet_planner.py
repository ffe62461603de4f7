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


@pytest.fixture
def nnunet_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import nnunetv2.paths
    from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner as planner
    from nnunetv2.utilities import dataset_name_id_conversion as conversion

    raw, preprocessed = make_dataset(tmp_path, [[3.0, 0.8, 0.8]] * 6, [[80, 300, 300]] * 6)
    for module in (nnunetv2.paths, planner, conversion):
        monkeypatch.setattr(module, "nnUNet_raw", str(raw), raising=False)
        monkeypatch.setattr(module, "nnUNet_preprocessed", str(preprocessed), raising=False)
    return preprocessed


@pytest.mark.parametrize("preset", ["default", "resenc-l"])
def test_the_plans_load_and_build_the_network(nnunet_paths: Path, preset: str) -> None:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from memprobe.nnunet.planner import measured_planner, memprobe_plans_name, topology_arch

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
    from memprobe.archs.registry import axis_divisors, resolve_arch

    assert all(p % d == 0 for p, d in zip(patch, axis_divisors(resolve_arch(arch)), strict=True))
    assert network is not None


def test_a_dataset_without_a_fingerprint_exits_2(
    nnunet_paths: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import nnunetv2

    from tests.robustness_helpers import run_cli

    (nnunet_paths / NAME / "dataset_fingerprint.json").unlink()
    site = str(Path(nnunetv2.__file__).resolve().parents[1])
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "nnUNet_raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(nnunet_paths))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.environ.get("PYTHONPATH", ""), site]))
    result = run_cli("nnunet", "plan", "-d", NAME, "--gpu-mem", "24GiB")
    assert result.code == 2, result.err
    assert "nnUNetv2_extract_fingerprint" in result.err.splitlines()[-1]
