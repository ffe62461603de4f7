"""nnU-Net's own planners with memprobe's measured need in place of their feature-map proxy.

``measured_planner`` subclasses nnU-Net's ``ExperimentPlanner`` (or a ResEnc planner): its
patch-shrinking loop, topology rule, batch cap and plans format are nnU-Net's, unchanged; only
``static_estimate_VRAM_usage`` answers with the predicted whole need (tensors, allocator reserve,
context, workspaces, margin) of a batch of 2, and the reference it is compared with is the
budget. The batch is then the largest that fits that patch, capped as nnU-Net caps it. The plans
file is written under its own name, for ``nnUNetv2_preprocess -plans_name`` and
``nnUNetv2_train -p``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from memprobe.core.archs.nnunet_specs import INSTALL_HINT, PLAIN, RESENC
from memprobe.core.archs.nnunet_topology import arch_name, topology_from_strides
from memprobe.core.errors import InvalidInputError

# (planner class in nnunetv2, its default plans name, memprobe's network)
PRESETS = {
    "default": ("ExperimentPlanner", "nnUNetPlans", PLAIN),
    "resenc-m": ("nnUNetPlannerResEncM", "nnUNetResEncUNetMPlans", RESENC),
    "resenc-l": ("nnUNetPlannerResEncL", "nnUNetResEncUNetLPlans", RESENC),
    "resenc-xl": ("nnUNetPlannerResEncXL", "nnUNetResEncUNetXLPlans", RESENC),
}
_VRAM_TARGETS_GB = {"default": 8, "resenc-m": 8, "resenc-l": 24, "resenc-xl": 40}
REFERENCE_BATCH = 2  # nnU-Net's UNet_reference_val_corresp_bs_3d

# need(arch, patch, batch, in_channels, out_channels) -> predicted whole need in bytes
NeedFunction = Callable[[str, Sequence[int], int, int, int], float]


def planner_base(preset: str) -> Any:
    """nnunetv2's planner class for ``preset``, or a one-line error naming the extra."""
    if preset not in PRESETS:
        raise InvalidInputError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    try:
        if preset == "default":
            from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner as module
        else:
            from nnunetv2.experiment_planning.experiment_planners.residual_unets import (
                residual_encoder_unet_planners as module,
            )
    except ImportError as error:
        raise InvalidInputError(f"`memprobe nnunet plan` needs nnunetv2: {INSTALL_HINT} ({error})") from error
    return getattr(module, PRESETS[preset][0])


def memprobe_plans_name(preset: str) -> str:
    """The plans name memprobe writes, beside nnU-Net's own: ``nnUNetPlans_memprobe``."""
    return f"{PRESETS[preset][1]}_memprobe"


def topology_arch(arch_class_name: str, arch_kwargs: dict[str, Any]) -> str:
    """The memprobe architecture of the network nnU-Net describes with these kwargs."""
    network = RESENC if arch_class_name.endswith("ResidualEncoderUNet") else PLAIN
    strides = [tuple(int(s) for s in stride) for stride in arch_kwargs["strides"]][1:]
    return arch_name(network, topology_from_strides(strides))


def measured_planner(
    preset: str, dataset: str | int, budget_bytes: int, need: NeedFunction, configuration: str = "3d_fullres"
) -> Any:
    """An instance of nnU-Net's planner for ``preset`` that plans ``configuration`` with ``need``.

    Other configurations keep nnU-Net's proxy and reference (their networks are not calibrated).
    """
    base = planner_base(preset)

    class MeasuredPlanner(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(dataset, _VRAM_TARGETS_GB[preset], plans_name=memprobe_plans_name(preset))
            self._measured = False
            self._proxy_reference: int = getattr(self, "UNet_reference_val_3d")  # noqa: B009
            self.UNet_vram_target_GB = self.UNet_reference_val_corresp_GB  # the reference is the budget
            self.UNet_reference_val_3d = budget_bytes
            self.UNet_reference_val_corresp_bs_3d = REFERENCE_BATCH

        def static_estimate_VRAM_usage(
            self,
            patch_size: Sequence[int],
            input_channels: int,
            output_channels: int,
            arch_class_name: str,
            arch_kwargs: dict[str, Any],
            arch_kwargs_req_import: Sequence[str],
        ) -> float:
            if not self._measured:  # other configurations keep nnU-Net's proxy
                return _proxy(
                    base,
                    patch_size,
                    input_channels,
                    output_channels,
                    arch_class_name,
                    arch_kwargs,
                    arch_kwargs_req_import,
                )
            arch = topology_arch(arch_class_name, arch_kwargs)
            return need(arch, [int(p) for p in patch_size], REFERENCE_BATCH, input_channels, output_channels)

        def get_plans_for_configuration(
            self,
            spacing: Any,
            median_shape: Any,
            data_identifier: str,
            approximate_n_voxels_dataset: float,
            _cache: dict[str, Any],
        ) -> dict[str, Any]:
            self._measured = data_identifier.endswith("_" + configuration) and len(spacing) == 3
            reference = self.UNet_reference_val_3d
            if not self._measured:
                self.UNet_reference_val_3d = self._proxy_reference
            try:
                # nnU-Net's cache of proxy estimates serves the other configurations; measured
                # needs are cached by estimate() and must not mix with the proxy's values.
                cache = {} if self._measured else _cache
                plan: dict[str, Any] = super().get_plans_for_configuration(
                    spacing, median_shape, data_identifier, approximate_n_voxels_dataset, cache
                )
            finally:
                self.UNet_reference_val_3d = reference
            if self._measured:
                plan["batch_size"] = self._largest_batch(plan, approximate_n_voxels_dataset)
            return plan

        def _largest_batch(self, plan: dict[str, Any], dataset_voxels: float) -> int:
            """The largest batch whose need fits, capped as nnU-Net caps it (share of the dataset, at least 2)."""
            architecture = plan["architecture"]
            arch = topology_arch(architecture["network_class_name"], architecture["arch_kwargs"])
            channels = len(
                self.dataset_json.get("channel_names", self.dataset_json.get("modality", {"0": ""}))
            )
            classes = len(self.dataset_json["labels"])
            patch = [int(p) for p in plan["patch_size"]]
            batch = 1
            while batch < 4096 and need(arch, patch, batch + 1, channels, classes) <= budget_bytes:
                batch += 1
            cap = round(dataset_voxels * self.max_dataset_covered / math.prod(patch))
            return int(max(min(batch, cap), self.UNet_min_batch_size))

    return MeasuredPlanner()


def _proxy(base: Any, *arguments: Any) -> float:
    """nnU-Net's feature-map proxy, with the network it counts built on the meta device.

    The proxy reads only shapes; building each candidate network with initialised weights
    (dozens for 2d and 3d_lowres) was nearly all of a plan's time.
    """
    import torch

    with torch.device("meta"):
        return float(base.static_estimate_VRAM_usage(*arguments))
