"""Activation checkpointing: a network's own switch, else each top-level stage wrapped."""

from __future__ import annotations

import pytest

from memprobe.backends.trace_backend import CpuBackend, TraceBackend
from memprobe.core.archs.registry import resolve_arch
from memprobe.core.config import make_step_config
from memprobe.training.checkpointing import CheckpointedStage
from memprobe.training.networks import build_model
from tests.helpers import TINY


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_checkpointing_lowers_the_traced_peak_and_trace_matches_a_real_step(precision: str) -> None:
    plain = make_step_config(TINY, (32, 32, 32), 2, precision=precision)
    checkpointed = make_step_config(TINY, (32, 32, 32), 2, precision=precision, checkpointing=True)
    traced = TraceBackend().measure(checkpointed).peak_allocated_bytes
    assert traced is not None
    assert traced < (TraceBackend().measure(plain).peak_allocated_bytes or 0)
    assert (
        traced == CpuBackend().measure(checkpointed).peak_allocated_bytes
    )  # recomputed in the same precision


def test_swinunetr_uses_its_own_switch_and_others_get_the_stage_wrapper() -> None:
    swin = build_model(resolve_arch("swinunetr"), 1, 2, checkpointing=True, patch=(64, 64, 64))
    assert swin.swinViT.layers1[0].blocks[0].use_checkpoint
    assert not any(isinstance(child, CheckpointedStage) for child in swin.children())
    tiny = build_model(resolve_arch(TINY), 1, 2, checkpointing=True)
    assert all(isinstance(child, CheckpointedStage) for child in tiny.children())
    assert tiny.down.append.__self__ is tiny.down.stage  # the stage's attributes pass through the wrapper


def test_checkpointing_is_in_the_label_and_the_key() -> None:
    config = make_step_config(TINY, (32, 32, 32), 2, checkpointing=True)
    assert "checkpointing" in config.label()
    assert config != make_step_config(TINY, (32, 32, 32), 2)
