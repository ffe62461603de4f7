"""nnU-Net's networks as memprobe architectures, one per topology (no torch, no nnunetv2).

``nnunet[...]`` is PlainConvUNet and ``nnunet-resenc[...]`` ResidualEncoderUNet as nnU-Net v2
builds them; ``nnunet-resenc-m``, ``-l`` and ``-xl`` name the same network (the presets differ
only in the memory nnU-Net plans them for), so one calibration serves all three. A name
without strides is the topology of an isotropic 128^3 patch.
"""

from __future__ import annotations

import importlib.util

from memprobe.core.archs.nnunet_topology import Topology, arch_name, parse_arch_name, topology_for
from memprobe.core.archs.spec import ArchSpec

PLAIN, RESENC = "nnunet", "nnunet-resenc"
INSTALL_HINT = "pip install 'memprobe[nnunet]'"
_CANONICAL = {"nnunet": PLAIN, "nnunet-resenc": RESENC, "nnunet-resenc-m": RESENC}
_CANONICAL |= {"nnunet-resenc-l": RESENC, "nnunet-resenc-xl": RESENC}
_DESCRIPTIONS = {
    PLAIN: "nnU-Net v2 PlainConvUNet (2 convs a stage, features 32-320), strides",
    RESENC: "nnU-Net v2 ResidualEncoderUNet (ResEnc M/L/XL: 1-3-4-6-6-6 blocks), strides",
}
DEFAULT_TOPOLOGY = topology_for((1.0, 1.0, 1.0), (128, 128, 128))
# the names `memprobe archs` lists, with what nnU-Net plans each for
PRESET_NAMES = {
    "nnunet": "nnU-Net v2 PlainConvUNet (its default planner, 8 GB)",
    "nnunet-resenc-m": "nnU-Net v2 ResidualEncoderUNet, ResEnc M (planned for 8 GB)",
    "nnunet-resenc-l": "nnU-Net v2 ResidualEncoderUNet, ResEnc L (planned for 24 GB)",
    "nnunet-resenc-xl": "nnU-Net v2 ResidualEncoderUNet, ResEnc XL (planned for 40 GB)",
}
TOPOLOGY_RULE = (
    "topology from spacing and patch as nnU-Net's planner builds it: pool each axis within twice "
    "the finest spacing down to a bottleneck edge of 4, features 32 doubling to 320; "
    "one calibration per topology, e.g. nnunet[122.222.222.222]"
)


def networks_installed() -> bool:
    """Whether dynamic-network-architectures (the ``memprobe[nnunet]`` extra) can build the networks."""
    return importlib.util.find_spec("dynamic_network_architectures") is not None


def nnunet_spec(name: str) -> ArchSpec | None:
    """The spec of an nnU-Net network name (with or without strides); None for other names."""
    key = name.strip().lower()
    if key in _CANONICAL:
        return spec_for(_CANONICAL[key], DEFAULT_TOPOLOGY)
    parsed = parse_arch_name(key)
    if parsed is None:
        return None
    preset, topology = parsed
    return spec_for(_CANONICAL[preset], topology)


def spec_for(preset: str, topology: Topology) -> ArchSpec:
    """The spec of ``preset`` (``nnunet`` or ``nnunet-resenc``) built with ``topology``."""
    divisors = topology.divisors
    strides = ".".join("".join(map(str, s)) for s in topology.strides[1:])
    return ArchSpec(
        name=arch_name(preset, topology),
        description=f"{_DESCRIPTIONS[preset]} {strides}",
        divisor=min(divisors),
        stage_features=topology.features,
        supports_deep_supervision=True,
        deep_supervision_heads=max(0, topology.stages - 2),
        factory=f"memprobe.integrations.nnunet.networks:{'plain_unet' if preset == PLAIN else 'resenc_unet'}",
        default_lr=1e-2,
        scheduler="polynomial decay (nnU-Net)",
        divisors=divisors,
        min_patch=(2 * divisors[0], 2 * divisors[1], 2 * divisors[2]),
        stage_strides=topology.strides,
    )
