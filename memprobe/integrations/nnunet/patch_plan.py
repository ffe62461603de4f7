"""Plan a patch for nnU-Net's networks, whose topology changes with the patch (no torch).

Each topology is calibrated as its own architecture (``nnunet[122.222.222.222]``). The plan
starts from the topology nnU-Net builds for the starting patch, plans the largest patch with
that topology's calibration, and re-plans with the topology nnU-Net would build for the
planned patch, until the two agree: then the planned patch is one nnU-Net builds exactly
that network for, and which that network takes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from memprobe.core.archs.nnunet_specs import PLAIN, RESENC
from memprobe.core.archs.nnunet_topology import Topology, arch_name, topology_for
from memprobe.planning.size_search import PatchPlan, initial_patch

PRESET_NETWORKS = {"nnunet": PLAIN, "nnunet-resenc": RESENC, "nnunet-resenc-m": RESENC}
PRESET_NETWORKS |= {"nnunet-resenc-l": RESENC, "nnunet-resenc-xl": RESENC}
_MAX_ROUNDS = 6


def is_preset(arch: str) -> bool:
    """Whether ``arch`` names an nnU-Net network without a topology (the planner chooses it)."""
    return isinstance(arch, str) and arch.strip().lower() in PRESET_NETWORKS


def plan_over_topologies(
    preset: str,
    spacing: Sequence[float] | None,
    median_shape: Sequence[int] | None,
    plan_with: Callable[[str], PatchPlan],
) -> PatchPlan:
    """The plan whose patch makes nnU-Net build the topology it was planned with.

    ``plan_with(arch)`` plans the largest patch with one topology's calibration.
    """
    network = PRESET_NETWORKS[preset.strip().lower()]
    geometry = list(spacing) if spacing else [1.0, 1.0, 1.0]
    topology = topology_for(geometry, initial_patch(None, spacing, median_shape))  # type: ignore[arg-type]
    tried: list[Topology] = []
    plan = None
    for _ in range(_MAX_ROUNDS):
        tried.append(topology)
        plan = plan_with(arch_name(network, topology))
        built = topology_for(geometry, plan.patch)
        if built == topology or built in tried:
            break
        topology = built
    assert plan is not None
    note = f"topology nnU-Net builds for {'x'.join(map(str, plan.patch))}: {plan.arch}"
    if len(tried) > 1:
        note += f" (after {', '.join(arch_name(network, t) for t in tried[:-1])})"
    return replace(plan, reasons=(*plan.reasons, note))
