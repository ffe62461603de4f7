"""nnU-Net's training step (#12): its loss, deep-supervision weights, optimizer and precision."""

from __future__ import annotations

import pytest
import torch

from memprobe.core.config import make_step_config
from memprobe.core.enums import OptimizerName
from memprobe.core.errors import InvalidInputError
from memprobe.training.nnunet_step import (
    deep_supervision_weights,
    dice_and_ce,
    memory_efficient_soft_dice,
)

ANISO = "tests.aniso_models:aniso_net"


def test_deep_supervision_weights_halve_and_drop_the_lowest() -> None:
    weights = deep_supervision_weights(4)
    assert weights == pytest.approx([1 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0.0])
    assert deep_supervision_weights(1) == [1.0]


def test_dice_of_a_perfect_prediction_is_minus_one() -> None:
    labels = torch.randint(0, 3, (2, 4, 4, 4))
    logits = 100 * torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).float()
    assert memory_efficient_soft_dice(logits, labels).item() == pytest.approx(-1.0, abs=1e-4)
    assert dice_and_ce(logits, labels).item() == pytest.approx(-1.0, abs=1e-3)


def test_the_step_needs_fp16_and_uses_sgd() -> None:
    with pytest.raises(InvalidInputError, match="fp16-mixed"):
        make_step_config("unet", (32, 32, 32), 1, step="nnunet")
    config = make_step_config("unet", (32, 32, 32), 1, step="nnunet", precision="fp16-mixed")
    assert config.optimizer is OptimizerName.SGD and config.step == "nnunet"


def test_the_step_runs_and_is_recorded_with_the_measurement() -> None:
    from memprobe.api import probe

    measured = probe(ANISO, (8, 16, 16), 1, precision="fp16-mixed", step="nnunet", device="trace")
    assert measured.ok and measured.config.step == "nnunet"
    assert measured.config.optimizer is OptimizerName.SGD
    assert set(measured.phase_peaks_bytes) >= {"forward", "backward", "optimizer"}
