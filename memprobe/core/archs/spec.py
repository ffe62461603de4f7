"""What memprobe knows about an architecture without building it: one frozen value."""

from __future__ import annotations

from dataclasses import dataclass, field


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
        factory: ``module:function`` that builds the network (``memprobe.training.network_factories``).
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
