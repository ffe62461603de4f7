"""The segmentation loss of the measured step: Dice + cross-entropy, as nnU-Net and MONAI train."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def dice_ce_loss(logits: torch.Tensor, labels: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice (over the batch, all classes) plus cross-entropy, from integer ``labels``."""
    cross_entropy = F.cross_entropy(logits, labels)
    probabilities = torch.softmax(logits, dim=1)
    one_hot = F.one_hot(labels, logits.shape[1]).movedim(-1, 1).to(probabilities.dtype)
    reduce_dims = [0, *range(2, logits.ndim)]
    intersection = (probabilities * one_hot).sum(reduce_dims)
    denominator = probabilities.sum(reduce_dims) + one_hot.sum(reduce_dims)
    dice = 1 - ((2 * intersection + smooth) / (denominator + smooth)).mean()
    return cross_entropy + dice


def _as_output_list(
    outputs: torch.Tensor | Sequence[torch.Tensor], labels: torch.Tensor
) -> list[torch.Tensor]:
    """Return a network's outputs as a list, full resolution first.

    MedNeXt returns a list of heads at decreasing resolution; DynUNet stacks its upsampled heads
    along dimension 1 during training.
    """
    if isinstance(outputs, torch.Tensor):
        if outputs.ndim == labels.ndim + 2:  # (B, heads, C, D, H, W)
            return list(outputs.unbind(1))
        return [outputs]
    return list(outputs)


HeadLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def deep_supervision_loss(
    outputs: torch.Tensor | Sequence[torch.Tensor], labels: torch.Tensor, head_loss: HeadLoss = dice_ce_loss
) -> torch.Tensor:
    """``head_loss`` (memprobe's Dice+CE) summed over every output head with nnU-Net's weights (1, 1/2, 1/4, ...).

    Lower-resolution heads are compared with the labels subsampled to their size.
    """
    heads = _as_output_list(outputs, labels)
    weights = [0.5**index for index in range(len(heads))]
    total = torch.zeros((), device=labels.device)
    for weight, head in zip(weights, heads, strict=True):
        steps = [full // part for full, part in zip(labels.shape[1:], head.shape[2:], strict=True)]
        head_labels = (
            labels[:, :: steps[0], :: steps[1], :: steps[2]] if any(s > 1 for s in steps) else labels
        )
        total = total + (weight / sum(weights)) * head_loss(head, head_labels)
    return total
