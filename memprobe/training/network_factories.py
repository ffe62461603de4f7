"""Build the registered networks with MONAI (imported here only, never on the planning path).

Every factory takes ``(in_channels, out_channels, *, deep_supervision, patch)``; ``patch`` is
needed by networks whose parameters depend on the input size (UNETR's position embedding).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def _mednext(variant: str, in_channels: int, out_channels: int, deep_supervision: bool) -> nn.Module:
    from monai.networks.nets.mednext import create_mednext

    return create_mednext(
        variant,
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        deep_supervision=deep_supervision,
    )


def mednext_s(
    in_channels: int, out_channels: int, *, deep_supervision: bool = False, patch: Sequence[int] | None = None
) -> nn.Module:
    return _mednext("S", in_channels, out_channels, deep_supervision)


def mednext_b(
    in_channels: int, out_channels: int, *, deep_supervision: bool = False, patch: Sequence[int] | None = None
) -> nn.Module:
    return _mednext("B", in_channels, out_channels, deep_supervision)


def mednext_m(
    in_channels: int, out_channels: int, *, deep_supervision: bool = False, patch: Sequence[int] | None = None
) -> nn.Module:
    return _mednext("M", in_channels, out_channels, deep_supervision)


def mednext_l(
    in_channels: int, out_channels: int, *, deep_supervision: bool = False, patch: Sequence[int] | None = None
) -> nn.Module:
    return _mednext("L", in_channels, out_channels, deep_supervision)


def basicunet(
    in_channels: int, out_channels: int, *, deep_supervision: bool = False, patch: Sequence[int] | None = None
) -> nn.Module:
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels)


def unet(
    in_channels: int, out_channels: int, *, deep_supervision: bool = False, patch: Sequence[int] | None = None
) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=(32, 64, 128, 256, 320),
        strides=(2, 2, 2, 2),
        num_res_units=2,
    )


def segresnet(
    in_channels: int, out_channels: int, *, deep_supervision: bool = False, patch: Sequence[int] | None = None
) -> nn.Module:
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=3, init_filters=32, in_channels=in_channels, out_channels=out_channels)


def swinunetr(
    in_channels: int,
    out_channels: int,
    *,
    deep_supervision: bool = False,
    patch: Sequence[int] | None = None,
    checkpointing: bool = False,
) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        feature_size=48,
        spatial_dims=3,
        use_checkpoint=checkpointing,  # the network's own activation checkpointing
    )


def unetr(
    in_channels: int, out_channels: int, *, deep_supervision: bool = False, patch: Sequence[int] | None = None
) -> nn.Module:
    from monai.networks.nets import UNETR

    if patch is None:
        raise ValueError("UNETR needs the patch size: its position embedding depends on it")
    return UNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        img_size=tuple(patch),
        feature_size=16,
        spatial_dims=3,
    )


def dynunet(
    in_channels: int, out_channels: int, *, deep_supervision: bool = False, patch: Sequence[int] | None = None
) -> nn.Module:
    from monai.networks.nets import DynUNet

    strides = (1, 2, 2, 2, 2, 2)
    return DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=(3,) * len(strides),
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=(32, 64, 128, 256, 320, 320),
        deep_supervision=deep_supervision,
        deep_supr_num=2,
        res_block=True,
    )
