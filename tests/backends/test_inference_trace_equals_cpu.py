"""Inference on trace counts what real execution on the CPU allocates, for every registered network."""

from __future__ import annotations

import pytest

from memprobe.backends.sliding_window import SlidingWindowBackend
from memprobe.core.archs.registry import ARCHS, axis_divisors, get_arch, smallest_patch
from memprobe.core.inference_config import make_inference_config


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHS))
def test_trace_equals_cpu_execution_in_inference(arch: str) -> None:
    """Two windows a batch over an image of three: the same peak to the byte on both backends.

    The peak and the forward's peak are compared; the stitch phase is not: on one CPU thread (as
    the tests run) PyTorch's CPU kernel for MedNeXt's last ConvTranspose3d returns a view of an
    8 MiB buffer where the trace (and a GPU's kernel) allocates the output alone.
    """
    spec = get_arch(arch)
    roi = smallest_patch(spec)
    image = (roi[0] + axis_divisors(spec)[0], roi[1], roi[2])
    config = make_inference_config(arch, roi, image, 2)
    traced, executed = (SlidingWindowBackend(kind).measure(config) for kind in ("trace", "cpu"))
    assert traced.peak_allocated_bytes == executed.peak_allocated_bytes, arch
    assert traced.phase_peaks_bytes["forward"] == executed.phase_peaks_bytes["forward"], arch


def test_an_eval_mode_dropout_is_not_counted_as_a_copy() -> None:
    """BasicUNet's nn.Dropout in eval: ATen returns its input; the decomposition fake tensors run cloned it."""
    config = make_inference_config("basicunet", (32, 32, 32), (40, 72, 56), 2)
    traced, executed = (SlidingWindowBackend(kind).measure(config) for kind in ("trace", "cpu"))
    assert traced.peak_allocated_bytes == executed.peak_allocated_bytes
