"""The parameter count of nnU-Net's networks, from their topology alone (no torch).

PlainConvUNet and ResidualEncoderUNet as ``memprobe.integrations.nnunet.networks`` builds
them (dynamic-network-architectures: conv bias, affine InstanceNorm, a segmentation layer for
every decoder stage). The count is linear in the input and output channels, so it is returned
as a parameter model (``constant``, ``in_channels``, ``out_channels``) as calibrations store it;
a topology never built is counted without building it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from memprobe.core.archs.nnunet_specs import PLAIN, RESENC
from memprobe.core.archs.nnunet_topology import Topology

RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)  # nnU-Net's ResEnc M/L/XL encoder blocks per stage


def _conv(kernel: Sequence[int], inputs: int, outputs: int, bias: bool = True, norm: bool = True) -> int:
    """A convolution (weights, bias) and the affine InstanceNorm after it."""
    return math.prod(kernel) * inputs * outputs + (outputs if bias else 0) + (2 * outputs if norm else 0)


def _plain_encoder(topology: Topology, inputs: int) -> int:
    count, previous = 0, inputs
    for kernel, features in zip(topology.kernel_sizes, topology.features, strict=True):
        count += _conv(kernel, previous, features) + _conv(kernel, features, features)
        previous = features
    return count


def _resenc_encoder(topology: Topology, inputs: int) -> int:
    features = topology.features
    count = _conv(topology.kernel_sizes[0], inputs, features[0])  # the stem
    previous = features[0]
    for stage, (kernel, width) in enumerate(zip(topology.kernel_sizes, features, strict=True)):
        for block in range(RESENC_BLOCKS[stage]):
            given = previous if block == 0 else width
            count += _conv(kernel, given, width) + _conv(kernel, width, width)
            if given != width:  # the projection of the skip: a 1x1 conv without bias, and its norm
                count += _conv((1, 1, 1), given, width, bias=False)
        previous = width
    return count


def _decoder(topology: Topology, outputs: int, convs: int) -> int:
    count, features = 0, topology.features
    for stage in range(topology.stages - 2, -1, -1):
        below, width = features[stage + 1], features[stage]
        stride = topology.strides[stage + 1]
        count += math.prod(stride) * below * width + width  # the transposed convolution
        count += _conv(topology.kernel_sizes[stage], 2 * width, width)
        count += sum(_conv(topology.kernel_sizes[stage], width, width) for _ in range(convs - 1))
        count += width * outputs + outputs  # the segmentation layer
    return count


def parameter_count(network: str, topology: Topology, in_channels: int, out_channels: int) -> int:
    """Trainable parameters of ``network`` (``nnunet`` or ``nnunet-resenc``) built with ``topology``."""
    if network == PLAIN:
        return _plain_encoder(topology, in_channels) + _decoder(topology, out_channels, convs=2)
    if network == RESENC:
        return _resenc_encoder(topology, in_channels) + _decoder(topology, out_channels, convs=1)
    raise ValueError(f"not one of nnU-Net's networks: {network!r}")


def parameter_model(network: str, topology: Topology) -> dict[str, float]:
    """The count as ``constant + in_channels * a + out_channels * b``, as calibrations store it."""
    base = parameter_count(network, topology, 0, 0)
    return {
        "constant": float(base),
        "in_channels": float(parameter_count(network, topology, 1, 0) - base),
        "out_channels": float(parameter_count(network, topology, 0, 1) - base),
        "tokens": 0.0,
    }
