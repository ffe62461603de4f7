"""Sliding-window inference on trace (fake tensors) agrees with real CPU execution, and what each counts."""

from __future__ import annotations

import pytest

from memprobe.backends.sliding_window import SlidingWindowBackend
from memprobe.core.inference_config import make_inference_config

TINY = "tests.tiny_models:tiny_net"


@pytest.fixture(scope="module")
def runners() -> tuple[SlidingWindowBackend, SlidingWindowBackend]:
    return SlidingWindowBackend("trace"), SlidingWindowBackend("cpu")


@pytest.mark.parametrize(
    ("image", "sw_batch", "stitch", "precision", "blend"),
    [
        ((40, 40, 40), 2, "gpu", "fp32", "gaussian"),
        ((40, 40, 40), 1, "cpu", "fp32", "constant"),
        ((40, 40, 40), 3, "cpu", "bf16-mixed", "gaussian"),
        ((10, 40, 40), 2, "gpu", "fp16-mixed", "constant"),  # the window is deeper than the image: padded
    ],
)
def test_trace_peak_equals_real_cpu_execution(
    runners: tuple[SlidingWindowBackend, SlidingWindowBackend],
    image: tuple[int, int, int],
    sw_batch: int,
    stitch: str,
    precision: str,
    blend: str,
) -> None:
    """The issue's check: trace's peak (and simulated reserve) equals the executed one within 1%."""
    config = make_inference_config(
        TINY, (16, 16, 16), image, sw_batch, stitch=stitch, precision=precision, blend=blend, out_channels=3
    )
    trace, cpu = (runner.measure(config) for runner in runners)
    assert trace.ok and cpu.ok
    assert abs(trace.peak_allocated_bytes - cpu.peak_allocated_bytes) <= 0.01 * cpu.peak_allocated_bytes
    assert trace.phase_peaks_bytes == cpu.phase_peaks_bytes
    assert trace.peak_reserved_bytes == cpu.peak_reserved_bytes


@pytest.mark.slow
def test_trace_equals_cpu_for_a_registered_network(
    runners: tuple[SlidingWindowBackend, SlidingWindowBackend],
) -> None:
    """MONAI's UNet, 32^3 windows on a 48^3 image: the same peak on fakes as executed."""
    config = make_inference_config("unet", (32, 32, 32), (48, 48, 48), 2, out_channels=4, overlap=0.0)
    trace, cpu = (runner.measure(config) for runner in runners)
    assert abs(trace.peak_allocated_bytes - cpu.peak_allocated_bytes) <= 0.01 * cpu.peak_allocated_bytes


def test_stitching_on_the_cpu_leaves_the_image_buffers_off_the_gpu(
    runners: tuple[SlidingWindowBackend, SlidingWindowBackend],
) -> None:
    """Output (3 classes), count map and input image, 4 bytes a voxel each, are counted only when stitching on the GPU."""
    on_gpu, on_cpu = (
        runners[0].measure(
            make_inference_config(TINY, (16, 16, 16), (48, 48, 48), 2, stitch=s, out_channels=3)
        )
        for s in ("gpu", "cpu")
    )
    image_buffers = 4 * 48**3 * (3 + 1 + 1)
    assert on_gpu.peak_allocated_bytes - on_cpu.peak_allocated_bytes == image_buffers


def test_more_classes_grow_the_gpu_stitched_peak_by_the_output_buffer(
    runners: tuple[SlidingWindowBackend, SlidingWindowBackend],
) -> None:
    """Each class adds a float32 image to the output buffer (and a little to each window's output)."""
    peaks = [
        runners[0]
        .measure(make_inference_config(TINY, (16, 16, 16), (64, 64, 64), 1, out_channels=c))
        .peak_allocated_bytes
        for c in (2, 6)
    ]
    grown = peaks[1] - peaks[0]
    assert 4 * 4 * 64**3 <= grown < 1.2 * 4 * 4 * 64**3
