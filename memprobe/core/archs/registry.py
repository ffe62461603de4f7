"""Static facts about each architecture: cheap to import, no torch, no MONAI.

The planner needs divisibility and stage widths to evaluate the memory formula instantly;
only building the network (``memprobe.training.network_factories``) needs MONAI.
"""

from __future__ import annotations

from memprobe.core.archs.spec import ArchSpec
from memprobe.core.errors import InvalidInputError
from memprobe.core.input_files import shown

_MEDNEXT_FEATURES = (32, 64, 128, 256, 512)
_MEDNEXT_COMMON = dict(
    divisor=16,
    stage_features=_MEDNEXT_FEATURES,
    supports_deep_supervision=True,
    deep_supervision_heads=4,
    default_lr=1e-3,
    scheduler="constant (MedNeXt paper)",
)

ARCHS: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(
            "mednext",
            "MONAI MedNeXt-S (kernel 3, 2 blocks a stage)",
            factory="memprobe.training.network_factories:mednext_s",
            aliases=("mednext-s",),
            **_MEDNEXT_COMMON,  # type: ignore[arg-type]
        ),
        ArchSpec(
            "mednext-b",
            "MONAI MedNeXt-B (kernel 3, expansion 2-4)",
            factory="memprobe.training.network_factories:mednext_b",
            **_MEDNEXT_COMMON,  # type: ignore[arg-type]
        ),
        ArchSpec(
            "mednext-m",
            "MONAI MedNeXt-M (kernel 3, 3-4 blocks a stage)",
            factory="memprobe.training.network_factories:mednext_m",
            **_MEDNEXT_COMMON,  # type: ignore[arg-type]
        ),
        ArchSpec(
            "mednext-l",
            "MONAI MedNeXt-L (kernel 3, 3-8 blocks, expansion 3-8)",
            factory="memprobe.training.network_factories:mednext_l",
            **_MEDNEXT_COMMON,  # type: ignore[arg-type]
        ),
        ArchSpec(
            "basicunet",
            "MONAI BasicUNet, features 32-32-64-128-256-32",
            divisor=16,
            stage_features=(32, 32, 64, 128, 256),
            factory="memprobe.training.network_factories:basicunet",
        ),
        ArchSpec(
            "unet",
            "MONAI UNet, channels 32-64-128-256-320, 2 residual units",
            divisor=16,
            stage_features=(32, 64, 128, 256, 320),
            factory="memprobe.training.network_factories:unet",
        ),
        ArchSpec(
            "segresnet",
            "MONAI SegResNet, 32 initial filters, blocks 1-2-2-4",
            divisor=8,
            stage_features=(32, 64, 128, 256),
            factory="memprobe.training.network_factories:segresnet",
        ),
        ArchSpec(
            "swinunetr",
            "MONAI SwinUNETR, feature size 48, window 7",
            divisor=32,
            stage_features=(48, 48, 96, 192, 384, 768),
            attention_window=7,
            window_stages=((2, 48, 3), (4, 96, 6), (8, 192, 12), (16, 384, 24)),
            factory="memprobe.training.network_factories:swinunetr",
        ),
        ArchSpec(
            "unetr",
            "MONAI UNETR, ViT-B/16 encoder (hidden 768, 12 heads), feature size 16",
            divisor=16,
            stage_features=(16, 32, 64, 128, 768),
            attention_token_volume=16**3,
            attention_heads=12,
            factory="memprobe.training.network_factories:unetr",
        ),
        ArchSpec(
            "dynunet",
            "MONAI DynUNet, nnU-Net 3d_fullres layout: 6 stages 32-320, residual blocks",
            divisor=32,
            stage_features=(32, 64, 128, 256, 320, 320),
            supports_deep_supervision=True,
            deep_supervision_heads=2,
            factory="memprobe.training.network_factories:dynunet",
            default_lr=1e-2,
            scheduler="polynomial decay (nnU-Net)",
        ),
    )
}


def known_arch_names() -> list[str]:
    """Registered architecture names, in registry order."""
    return list(ARCHS)


def _alias_table() -> dict[str, str]:
    table = {name: name for name in ARCHS}
    for spec in ARCHS.values():
        table.update({alias: spec.name for alias in spec.aliases})
    return table


def get_arch(name: str) -> ArchSpec:
    """Look up a registered architecture by name or alias (case-insensitive)."""
    canonical = _alias_table().get(name.strip().lower())
    if canonical is None and name.strip().lower().startswith("nnunet"):
        from memprobe.core.archs.nnunet_specs import nnunet_spec

        found = nnunet_spec(name)
        if found is not None:
            return found
    if canonical is None:
        raise InvalidInputError(
            f"unknown architecture {shown(repr(name))}: choose one of {', '.join(known_arch_names())}, "
            "or give your own model as package.module:factory"
        )
    return ARCHS[canonical]


def smallest_patch_size(spec: ArchSpec) -> int:
    """The smallest size a patch dimension may take: two voxels at the bottleneck.

    Instance and group norm in training mode need more than one value per channel.
    """
    return min(smallest_patch(spec))


def axis_divisors(spec: ArchSpec) -> tuple[int, int, int]:
    """The divisor of each patch axis (depth, height, width)."""
    return spec.divisors if spec.divisors is not None else (spec.divisor,) * 3


def smallest_patch(spec: ArchSpec) -> tuple[int, int, int]:
    """The smallest patch the network takes, per axis: declared, else two voxels at the bottleneck.

    A custom model without a shape rule is assumed to take one divisor (of 1).
    """
    if spec.min_patch is not None:
        return spec.min_patch
    if spec.custom and spec.divisors is None:
        return (spec.divisor,) * 3
    depth, height, width = (2 * d for d in axis_divisors(spec))
    return depth, height, width


def resolve_arch(name: str) -> ArchSpec:
    """Return the spec for a registered name, or describe a ``package.module:factory`` model.

    A custom model's spec is provisional: its divisor is unknown until it is built, so 1 is
    assumed and a patch that the network cannot take surfaces as a model failure.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError(
            f"arch must be an architecture name (see `memprobe archs`), got {shown(repr(name))}"
        )
    if ":" in name:
        module, _, function = name.partition(":")
        if not module or not function:
            raise InvalidInputError(
                f"custom model {shown(repr(name))} must be written package.module:factory"
            )
        from memprobe.core.archs.shape_rules import parse_rule_suffix

        factory, divisors, min_patch = parse_rule_suffix(name)
        return ArchSpec(
            name=name,
            description=f"user model built by {factory}",
            divisor=min(divisors) if divisors else 1,
            stage_features=(),
            factory=factory,
            custom=True,
            divisors=divisors,
            min_patch=min_patch,
        )
    return get_arch(name)
