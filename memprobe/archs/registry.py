"""Static facts about each architecture: cheap to import, no torch, no MONAI.

The planner needs divisibility and stage widths to evaluate the memory formula instantly;
only building the network (``memprobe.archs.factories``) needs MONAI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memprobe.errors import InvalidInputError
from memprobe.input_files import shown


@dataclass(frozen=True)
class ArchSpec:
    """What memprobe knows about an architecture without building it.

    Attributes:
        name: registry name, as typed on the command line.
        description: the network and its configuration, for `memprobe archs`.
        divisor: every patch dimension must be a multiple of this (the total downsampling).
        stage_features: channel width of each resolution stage, full resolution first; the
            seed formula's per-stage feature maps are computed from these.
        supports_deep_supervision: whether the network can return auxiliary low-resolution heads.
        deep_supervision_heads: how many extra heads it returns when deep supervision is on.
        attention_token_volume: voxels per token for networks with global self-attention
            (their attention maps grow with the square of the token count); 0 for none.
        attention_heads: heads of that global attention.
        attention_window: edge of the windows of windowed self-attention (Swin), 0 for none;
            each stage pads its feature grid to whole windows.
        window_stages: (downsampling factor, channels, heads) of each windowed-attention stage.
        factory: ``module:function`` that builds the network (``memprobe.archs.factories``).
        default_lr, scheduler: training defaults used by `memprobe plan` (from the planner we replace).
        custom: True for a user model given as ``package.module:factory``.
        divisors: per-axis divisors (depth, height, width) where the network pools
            anisotropically; None means ``divisor`` on every axis (see ``axis_divisors``).
        min_patch: the smallest patch per axis the network takes; None means two voxels at
            the bottleneck (see ``smallest_patch``).
        stage_strides: per-axis pooling of each stage relative to the one before, full
            resolution first (``(1, 1, 1)``); empty means halving every axis per stage.
    """

    name: str
    description: str
    divisor: int
    stage_features: tuple[int, ...]
    supports_deep_supervision: bool = False
    deep_supervision_heads: int = 0
    attention_token_volume: int = 0
    attention_heads: int = 0
    attention_window: int = 0
    window_stages: tuple[tuple[int, int, int], ...] = field(default=())
    factory: str = ""
    default_lr: float = 1e-4
    scheduler: str = "cosine annealing with warmup"
    custom: bool = False
    aliases: tuple[str, ...] = field(default=())
    divisors: tuple[int, int, int] | None = None
    min_patch: tuple[int, int, int] | None = None
    stage_strides: tuple[tuple[int, int, int], ...] = field(default=())


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
            factory="memprobe.archs.factories:mednext_s",
            aliases=("mednext-s",),
            **_MEDNEXT_COMMON,  # type: ignore[arg-type]
        ),
        ArchSpec(
            "mednext-b",
            "MONAI MedNeXt-B (kernel 3, expansion 2-4)",
            factory="memprobe.archs.factories:mednext_b",
            **_MEDNEXT_COMMON,  # type: ignore[arg-type]
        ),
        ArchSpec(
            "mednext-m",
            "MONAI MedNeXt-M (kernel 3, 3-4 blocks a stage)",
            factory="memprobe.archs.factories:mednext_m",
            **_MEDNEXT_COMMON,  # type: ignore[arg-type]
        ),
        ArchSpec(
            "mednext-l",
            "MONAI MedNeXt-L (kernel 3, 3-8 blocks, expansion 3-8)",
            factory="memprobe.archs.factories:mednext_l",
            **_MEDNEXT_COMMON,  # type: ignore[arg-type]
        ),
        ArchSpec(
            "basicunet",
            "MONAI BasicUNet, features 32-32-64-128-256-32",
            divisor=16,
            stage_features=(32, 32, 64, 128, 256),
            factory="memprobe.archs.factories:basicunet",
        ),
        ArchSpec(
            "unet",
            "MONAI UNet, channels 32-64-128-256-320, 2 residual units",
            divisor=16,
            stage_features=(32, 64, 128, 256, 320),
            factory="memprobe.archs.factories:unet",
        ),
        ArchSpec(
            "segresnet",
            "MONAI SegResNet, 32 initial filters, blocks 1-2-2-4",
            divisor=8,
            stage_features=(32, 64, 128, 256),
            factory="memprobe.archs.factories:segresnet",
        ),
        ArchSpec(
            "swinunetr",
            "MONAI SwinUNETR, feature size 48, window 7",
            divisor=32,
            stage_features=(48, 48, 96, 192, 384, 768),
            attention_window=7,
            window_stages=((2, 48, 3), (4, 96, 6), (8, 192, 12), (16, 384, 24)),
            factory="memprobe.archs.factories:swinunetr",
        ),
        ArchSpec(
            "unetr",
            "MONAI UNETR, ViT-B/16 encoder (hidden 768, 12 heads), feature size 16",
            divisor=16,
            stage_features=(16, 32, 64, 128, 768),
            attention_token_volume=16**3,
            attention_heads=12,
            factory="memprobe.archs.factories:unetr",
        ),
        ArchSpec(
            "dynunet",
            "MONAI DynUNet, nnU-Net 3d_fullres layout: 6 stages 32-320, residual blocks",
            divisor=32,
            stage_features=(32, 64, 128, 256, 320, 320),
            supports_deep_supervision=True,
            deep_supervision_heads=2,
            factory="memprobe.archs.factories:dynunet",
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
        from memprobe.nnunet.specs import nnunet_spec

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
        from memprobe.archs.shape_rules import parse_rule_suffix

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
