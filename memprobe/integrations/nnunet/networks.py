"""Build nnU-Net's networks with ``dynamic-network-architectures`` (the ``memprobe[nnunet]`` extra)."""

from __future__ import annotations

from typing import Any

from torch import nn

from memprobe.core.archs.nnunet_specs import INSTALL_HINT
from memprobe.core.archs.nnunet_topology import parse_arch_name
from memprobe.core.archs.registry import ArchSpec
from memprobe.core.errors import InvalidInputError
from memprobe.integrations.nnunet.parameters import RESENC_BLOCKS


def unet_classes() -> Any:
    """``dynamic_network_architectures.architectures.unet``, or a one-line error naming the extra."""
    try:
        from dynamic_network_architectures.architectures import unet
    except ImportError as error:
        raise InvalidInputError(
            f"nnU-Net's networks need dynamic-network-architectures: {INSTALL_HINT} ({error})"
        ) from error
    return unet


def _common(spec: ArchSpec, in_channels: int, out_channels: int, deep_supervision: bool) -> dict[str, Any]:
    parsed = parse_arch_name(spec.name)
    assert parsed is not None, spec.name
    topology = parsed[1]
    return dict(
        input_channels=in_channels,
        n_stages=topology.stages,
        features_per_stage=topology.features,
        conv_op=nn.Conv3d,
        kernel_sizes=[list(k) for k in topology.kernel_sizes],
        strides=[list(s) for s in topology.strides],
        num_classes=out_channels,
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None,
        dropout_op_kwargs=None,
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=deep_supervision,
    )


def plain_unet(
    in_channels: int, out_channels: int, *, spec: ArchSpec, deep_supervision: bool = False, patch: Any = None
) -> nn.Module:
    """PlainConvUNet as nnU-Net's default planner configures it: 2 convolutions a stage."""
    kwargs = _common(spec, in_channels, out_channels, deep_supervision)
    stages = kwargs["n_stages"]
    return unet_classes().PlainConvUNet(  # type: ignore[no-any-return]
        n_conv_per_stage=[2] * stages, n_conv_per_stage_decoder=[2] * (stages - 1), **kwargs
    )


def resenc_unet(
    in_channels: int, out_channels: int, *, spec: ArchSpec, deep_supervision: bool = False, patch: Any = None
) -> nn.Module:
    """ResidualEncoderUNet as nnU-Net's ResEnc M/L/XL planners configure it."""
    kwargs = _common(spec, in_channels, out_channels, deep_supervision)
    stages = kwargs["n_stages"]
    return unet_classes().ResidualEncoderUNet(  # type: ignore[no-any-return]
        n_blocks_per_stage=RESENC_BLOCKS[:stages], n_conv_per_stage_decoder=[1] * (stages - 1), **kwargs
    )
