"""nnU-Net networks wrapped as user factories, as a user of nnU-Net would write them (needs the extra)."""

from __future__ import annotations

from torch import nn


def aniso_plain_unet(in_channels: int, out_channels: int) -> nn.Module:
    """PlainConvUNet as nnU-Net plans it for thick slices: the first pooling in-plane only."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    return PlainConvUNet(
        input_channels=in_channels,
        n_stages=4,
        features_per_stage=[8, 16, 32, 32],
        conv_op=nn.Conv3d,
        kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        strides=strides,
        n_conv_per_stage=[2, 2, 2, 2],
        num_classes=out_channels,
        n_conv_per_stage_decoder=[2, 2, 2],
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
    )
