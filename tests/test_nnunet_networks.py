"""nnU-Net's networks built with the extra (#12); skipped without dynamic-network-architectures."""

from __future__ import annotations

import pytest

pytest.importorskip("dynamic_network_architectures")

from memprobe.api import probe
from memprobe.archs.build import build_model
from memprobe.archs.registry import resolve_arch


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
