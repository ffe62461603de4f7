"""User training steps for tests: the protocol followed, one with a known extra tensor, and broken ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F

EXTRA_BYTES = 64 * 2**20  # a multiple of the allocator's 512-byte blocks


def plain_step(model, optimizer, inputs, labels, scaler):  # type: ignore[no-untyped-def]
    loss = F.cross_entropy(model(inputs), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def step_with_extra(model, optimizer, inputs, labels, scaler):  # type: ignore[no-untyped-def]
    """``plain_step`` holding EXTRA_BYTES more for the whole step."""
    extra = torch.empty(EXTRA_BYTES, dtype=torch.uint8, device=inputs.device)
    plain_step(model, optimizer, inputs, labels, scaler)
    del extra


def raising_step(model, optimizer, inputs, labels, scaler):  # type: ignore[no-untyped-def]
    raise RuntimeError("step failed on purpose")


def wrong_signature(model, optimizer):  # type: ignore[no-untyped-def]
    """Misses inputs, labels and scaler."""


NOT_CALLABLE = 42
