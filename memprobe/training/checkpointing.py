"""Activation checkpointing for any network: each top-level stage recomputed in backward.

A network's own switch (SwinUNETR's ``use_checkpoint``) is used where its factory offers one;
every other network gets this generic wrapper around each top-level child that holds
parameters, through ``torch.utils.checkpoint`` (non-reentrant). Only the stages' inputs are
kept for backward, and each stage's activations exist again while its backward runs.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint, noop_context_fn


class CheckpointedStage(nn.Module):
    """Run ``stage`` under ``torch.utils.checkpoint``; other attributes are the stage's."""

    def __init__(self, stage: nn.Module) -> None:
        super().__init__()
        self.stage = stage

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return checkpoint(
            self.stage, *args, use_reentrant=False, context_fn=_recompute_in_emulated_autocast(), **kwargs
        )

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["stage"], name)


def _recompute_in_emulated_autocast() -> Any:
    """Contexts for checkpoint's forward and recomputation: the recomputation runs under the
    autocast emulation the forward ran under (trace and cpu backends), as checkpoint itself
    does for ``torch.autocast``; without one, no context."""
    from memprobe.training.autocast import CudaAutocastEmulation

    stack = torch.overrides._get_current_function_mode_stack()
    emulated = [mode.dtype for mode in stack if isinstance(mode, CudaAutocastEmulation)]
    if not emulated:
        return noop_context_fn
    dtype = emulated[-1]
    return lambda: (contextlib.nullcontext(), CudaAutocastEmulation(dtype))


def _callable_stage(module: nn.Module) -> bool:
    """A child with a forward and parameters (a ModuleList is indexed, not called: left alone)."""
    has_forward = type(module).forward is not nn.Module.forward
    return has_forward and any(True for _ in module.parameters())


def checkpoint_stages(model: nn.Module) -> nn.Module:
    """Wrap every top-level stage of ``model`` in activation checkpointing, in place."""
    for name, child in list(model.named_children()):
        if _callable_stage(child):
            setattr(model, name, CheckpointedStage(child))
    return model
