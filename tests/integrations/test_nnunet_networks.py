"""nnU-Net's networks built with the extra (#12); skipped without dynamic-network-architectures."""

from __future__ import annotations

import pytest

pytest.importorskip("dynamic_network_architectures")

from memprobe.api import probe
from memprobe.core.archs.registry import resolve_arch
from memprobe.training.networks import build_model


@pytest.mark.parametrize("name", ["nnunet[122.222.222]", "nnunet-resenc-m[122.222.222]"])
def test_the_network_pools_as_its_name_says(name: str) -> None:
    import torch

    model = build_model(resolve_arch(name), 2, 3, deep_supervision=True)
    model.train()
    outputs = model(torch.zeros(1, 2, 8, 32, 32))
    assert [tuple(o.shape[2:]) for o in outputs] == [(8, 32, 32), (8, 16, 16), (4, 8, 8)]
    assert outputs[0].shape[1] == 3


def test_a_planned_size_of_the_topology_passes_a_trace_probe() -> None:
    measured = probe("nnunet[122.222.222]", (8, 32, 32), 1, device="trace", deep_supervision=True)
    assert measured.ok and measured.peak_allocated_bytes


def test_a_users_nnunet_factory_calibrates_and_its_plans_probe(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The issue's check: an nnU-Net network with anisotropic pooling, wrapped as module:factory."""
    import json

    from tests.helpers import invoke

    factory, db = "tests.nnunet_factories:aniso_plain_unet", str(tmp_path / "db.sqlite")
    result = invoke(capsys, "calibrate", "--arch", factory, "--device", "trace", "--precision", "fp32",
                    "--gpu-mem", "8GiB", "--no-search", "--db", db, "--json")  # fmt: skip
    assert result.code == 0, result.err
    assert "divisible by 4x8x8" in result.err
    calibration = json.loads(result.out)["calibration"]
    quality = calibration["quality"]
    assert quality["heldout_median_relative_error"] < 0.03 and quality["heldout_max_relative_error"] < 0.05
    planned = invoke(
        capsys,
        *("suggest", "--arch", factory, "--batch", "2", "--gpu-mem", "4GiB", "--device", "trace"),
        *("--precision", "fp32", "--db", db),
        *("--spacing", "3", "0.8", "0.8", "--median-shape", "70", "199", "199", "--json"),
    )
    assert planned.code == 0, planned.err
    patch = json.loads(planned.out)["patch"]
    assert [p % d for p, d in zip(patch, (4, 8, 8), strict=True)] == [0, 0, 0]
    assert probe(calibration["arch"], patch, 2, device="trace").ok
