"""Networks of published GPU-memory figures, built exactly as their sources build them."""

from __future__ import annotations

from torch import nn


def monai_amp_tutorial_unet(in_channels: int, out_channels: int) -> nn.Module:
    """Project-MONAI/tutorials acceleration/automatic_mixed_precision.ipynb's network."""
    from monai.networks.layers import Norm
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2, norm=Norm.BATCH)  # fmt: skip


monai_amp_tutorial_unet.memprobe_divisors = (16, 16, 16)  # type: ignore[attr-defined]


def issue_8042_swinunetr(in_channels: int, out_channels: int) -> nn.Module:
    """Project-MONAI/MONAI issue 8042's SwinUNETR (feature_size 24, no checkpointing, v1)."""
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=24, drop_rate=0.0,
                     attn_drop_rate=0.0, dropout_path_rate=0.0, spatial_dims=3, use_checkpoint=False,
                     use_v2=False)  # fmt: skip


issue_8042_swinunetr.memprobe_divisors = (32, 32, 32)  # type: ignore[attr-defined]
