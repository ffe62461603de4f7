"""nnU-Net v2's training step: SGD (momentum 0.99, Nesterov), Dice+CE with deep-supervision
weights, fp16 autocast with a GradScaler, and ``cudnn.benchmark`` on CUDA.

Reimplemented from nnunetv2 2.x (``nnUNetTrainer``, ``DC_and_CE_loss`` with
``MemoryEfficientSoftDiceLoss``, ``DeepSupervisionWrapper``) so that measuring it needs no
nnunetv2: the same tensors are allocated in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from memprobe.core.enums import OptimizerName
from memprobe.training.losses import _as_output_list
from memprobe.training.step import PhaseCallback, TrainingState, make_optimizer, optimise


def memory_efficient_soft_dice(
    logits: torch.Tensor, labels: torch.Tensor, smooth: float = 1e-5
) -> torch.Tensor:
    """nnU-Net's default Dice: softmax, batch Dice, background excluded, one-hot without gradient."""
    probabilities = torch.softmax(logits, 1)
    axes = tuple(range(2, logits.ndim))
    with torch.no_grad():
        one_hot = torch.zeros(logits.shape, device=logits.device, dtype=torch.bool)
        one_hot.scatter_(1, labels[:, None].long(), 1)
        one_hot = one_hot[:, 1:]
        sum_gt = one_hot.sum(axes)
    probabilities = probabilities[:, 1:]
    intersect = (probabilities * one_hot).sum(axes).sum(0)
    sum_pred = probabilities.sum(axes).sum(0)
    dice = (2 * intersect + smooth) / torch.clip(sum_gt.sum(0) + sum_pred + smooth, 1e-8)
    return -dice.mean()


def dice_and_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``DC_and_CE_loss`` with weights 1 and 1."""
    return F.cross_entropy(logits, labels.long()) + memory_efficient_soft_dice(logits, labels)


def deep_supervision_weights(heads: int) -> list[float]:
    """nnU-Net's weights: 1/2^i, the lowest resolution dropped, normalised to sum 1."""
    weights = [0.5**index for index in range(heads)]
    if heads > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def _targets(labels: torch.Tensor, heads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Labels at each head's resolution (nnU-Net's dataloader downsamples them by nearest neighbour)."""
    targets = []
    for head in heads:
        if tuple(head.shape[2:]) == tuple(labels.shape[1:]):
            targets.append(labels)
        else:
            resized = F.interpolate(labels[:, None].float(), size=tuple(head.shape[2:]), mode="nearest")
            targets.append(resized[:, 0].long())
    return targets


def nnunet_step(state: TrainingState, on_phase: PhaseCallback) -> None:
    """One nnU-Net training iteration on ``state``'s batch."""
    if not isinstance(
        state.optimizer, torch.optim.SGD
    ):  # nnU-Net trains with its SGD whatever was configured
        state.optimizer = make_optimizer(OptimizerName.SGD, iter(state.model.parameters()))
    benchmark = torch.backends.cudnn.benchmark
    if state.inputs.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        on_phase("forward")
        with state.autocast():
            heads = _as_output_list(state.model(state.inputs), state.labels)
            weights = deep_supervision_weights(len(heads))
            targets = _targets(state.labels, heads)
            loss = sum(
                (w * dice_and_ce(h, t) for w, h, t in zip(weights, heads, targets, strict=True) if w),
                torch.zeros((), device=state.labels.device),
            )
        del heads, targets
        optimise(state, loss, on_phase)
    finally:
        torch.backends.cudnn.benchmark = benchmark
