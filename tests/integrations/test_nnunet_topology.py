"""nnU-Net's topology rule and its networks' names and specs (#12): no torch, no extra needed."""

from __future__ import annotations

import pytest

from memprobe.core.archs.nnunet_topology import arch_name, padded_patch, parse_arch_name, topology_for
from memprobe.core.archs.registry import axis_divisors, resolve_arch, smallest_patch
from memprobe.core.errors import InvalidInputError
from memprobe.formula.terms import stage_voxels


def test_isotropic_128_pools_five_times_on_every_axis() -> None:
    topology = topology_for((1, 1, 1), (128, 128, 128))
    assert topology.pools == (5, 5, 5) and topology.stages == 6
    assert topology.features == (32, 64, 128, 256, 320, 320)
    assert topology.divisors == (32, 32, 32)


def test_thick_slices_pool_in_plane_first() -> None:
    topology = topology_for((5, 0.8, 0.8), (64, 256, 256))
    assert topology.strides[1] == (1, 2, 2) and topology.strides[2] == (1, 2, 2)
    assert topology.pools == (4, 6, 6)
    assert topology.kernel_sizes[0] == (1, 3, 3)
    assert padded_patch((60, 250, 250), topology.divisors) == (64, 256, 256)


def test_a_short_axis_stops_pooling_first() -> None:
    topology = topology_for((1, 1, 1), (64, 192, 160))
    assert topology.pools == (4, 5, 5) and topology.strides[-1] == (1, 2, 2)


@pytest.mark.parametrize("spacing, patch", [((5, 0.8, 0.8), (64, 256, 256)), ((1, 1, 1), (64, 192, 160))])
def test_the_name_rebuilds_the_topology(spacing: tuple[float, ...], patch: tuple[int, ...]) -> None:
    topology = topology_for(spacing, patch)
    parsed = parse_arch_name(arch_name("nnunet", topology))
    assert parsed == ("nnunet", topology)


def test_specs_carry_divisors_and_strides() -> None:
    spec = resolve_arch("nnunet[122.122.222.222]")
    assert axis_divisors(spec) == (4, 16, 16) and smallest_patch(spec) == (8, 32, 32)
    assert spec.stage_features == (32, 64, 128, 256, 320)
    assert stage_voxels((8, 32, 32), 3, spec.stage_strides) == [8 * 32 * 32, 8 * 16 * 16, 8 * 8 * 8]
    assert resolve_arch("nnunet-resenc-l[222.222]").name == "nnunet-resenc[222.222]"
    assert resolve_arch("nnunet").name == "nnunet[222.222.222.222.222]"


@pytest.mark.parametrize("name", ["nnunet[123]", "nnunet[111.222]", "nnunet[22.222]"])
def test_bad_strides_are_refused(name: str) -> None:
    with pytest.raises(InvalidInputError):
        resolve_arch(name)


def test_the_planner_settles_on_the_topology_nnunet_builds_for_its_patch() -> None:
    from memprobe.integrations.nnunet.patch_plan import plan_over_topologies
    from memprobe.planning.size_search import PatchPlan

    asked: list[str] = []

    def plan_with(arch: str) -> PatchPlan:
        asked.append(arch)
        size = 96 if arch == "nnunet[222.222.222.222.222]" else 112  # 96^3 pools only 4 times
        return PatchPlan(None, 0, 1.0, None, arch=arch, patch=(size, size, size), batch=2)  # type: ignore[arg-type]

    plan = plan_over_topologies("nnunet", (1, 1, 1), (128, 128, 128), plan_with)
    assert asked == ["nnunet[222.222.222.222.222]", "nnunet[222.222.222.222]"]
    assert plan.arch == "nnunet[222.222.222.222]" and plan.patch == (112, 112, 112)
    assert topology_for((1, 1, 1), plan.patch).pools == (4, 4, 4)
    assert "topology nnU-Net builds for 112x112x112" in plan.reasons[-1]
