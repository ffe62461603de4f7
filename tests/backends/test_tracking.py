"""Tests of the allocation tracker, and that the trace backend agrees with real CPU execution.

The issue's check: trace (fake tensors) and cpu (the same step executed) agree within 1% on the
peak for several architectures at small patches.
"""

from __future__ import annotations

import gc

import pytest
import torch

from memprobe.backends import get_backend
from memprobe.backends.allocation_tracker import CUDA_BLOCK_BYTES, AllocationTracker, cuda_block_size
from memprobe.core.config import make_step_config
from memprobe.core.enums import DeviceKind


@pytest.mark.parametrize(
    ("nbytes", "charged"),
    [
        (0, 0),
        (-4, 0),
        (1, 512),
        (511, 512),
        (512, 512),
        (513, 1024),
        (4000, 4096),
        (10**6, 1_000_448),
    ],
)
def test_cuda_block_size_rounds_up_to_512(nbytes: int, charged: int) -> None:
    """Requests are rounded up to the caching allocator's 512-byte blocks; nothing costs nothing."""
    assert cuda_block_size(nbytes) == charged
    assert charged % CUDA_BLOCK_BYTES == 0


def test_a_new_tensor_is_charged_its_rounded_size() -> None:
    """A tensor made under the tracker is charged its storage rounded to 512 bytes."""
    with AllocationTracker() as tracker:
        tensor = torch.empty(1000)  # 4000 bytes
        assert tracker.current_bytes == tracker.peak_bytes == 4096
        del tensor


def test_views_are_not_charged_twice() -> None:
    """Views, slices, transposes and reshapes of a storage cost nothing more."""
    with AllocationTracker() as tracker:
        base = torch.empty(100, 10)
        charged = tracker.current_bytes
        views = [base.view(10, 100), base[10:20], base.t(), base.reshape(1000), base.unsqueeze(0), base[::2]]
        assert tracker.current_bytes == charged == 4096
        copy = base.clone()
        assert tracker.current_bytes == 2 * charged
        del views, copy, base


def test_freeing_lowers_current_and_keeps_the_peak() -> None:
    """Freeing a tensor credits its bytes back; the peak remembers the high-water mark."""
    with AllocationTracker() as tracker:
        first = torch.zeros(256)  # 1 KiB
        second = torch.zeros(1024)  # 4 KiB
        assert tracker.current_bytes == 5 * 1024
        del second
        gc.collect()
        assert tracker.current_bytes == 1024
        assert tracker.peak_bytes == 5 * 1024
        third = torch.zeros(128)
        assert tracker.current_bytes == 1024 + 512 and tracker.peak_bytes == 5 * 1024
        del first, third


def test_a_view_keeps_its_storage_alive() -> None:
    """Dropping the base while a view lives keeps the storage charged until the view goes too."""
    with AllocationTracker() as tracker:
        base = torch.zeros(256)
        view = base[:10]
        del base
        gc.collect()
        assert tracker.current_bytes == 1024
        del view
        gc.collect()
        assert tracker.current_bytes == 0


def test_phases_and_reset_peak() -> None:
    """Each phase records its own peak; reset_peak restarts the peak from what is live."""
    with AllocationTracker() as tracker:
        kept = torch.zeros(256)
        temporary = torch.zeros(2048)
        del temporary
        gc.collect()
        tracker.reset_peak()
        assert tracker.peak_bytes == tracker.current_bytes == 1024
        tracker.start_phase("forward")
        large = torch.zeros(1024)
        del large
        gc.collect()
        tracker.start_phase("backward")
        small = torch.zeros(128)
        tracker.start_phase(None)
        assert tracker.phase_peaks_bytes == {"forward": 1024 + 4096, "backward": 1024 + 512}
        assert tracker.peak_bytes == 1024 + 4096
        del kept, small


def test_track_module_charges_parameters_once() -> None:
    """Parameters made before tracking are charged by track_module, and only once."""
    module = torch.nn.Linear(100, 10)  # 4000 + 40 bytes
    tracker = AllocationTracker()
    tracker.track_module(module)
    tracker.track_module(module)
    assert tracker.current_bytes == 4096 + 512
    assert tracker.serial_of(module.weight) is not None
    assert tracker.serial_of(torch.zeros(1)) is None


TINY = "tests.tiny_models:tiny_net"
AGREEMENT_CASES = [
    pytest.param("basicunet", 32, "fp32", id="basicunet-32-fp32"),
    pytest.param("unet", 32, "fp32", id="unet-32-fp32"),
    pytest.param("segresnet", 16, "fp32", id="segresnet-16-fp32"),
    pytest.param("mednext", 32, "fp32", id="mednext-32-fp32"),
    pytest.param(TINY, 16, "bf16-mixed", id="tiny-16-bf16"),
    pytest.param(TINY, 16, "fp16-mixed", id="tiny-16-fp16"),
]


@pytest.fixture(scope="module")
def backends() -> dict[str, object]:
    """One trace and one cpu backend for every agreement case."""
    return {"trace": get_backend("trace"), "cpu": get_backend("cpu")}


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "size", "precision"), AGREEMENT_CASES)
def test_trace_and_cpu_agree_on_the_peak(
    backends: dict[str, object], arch: str, size: int, precision: str
) -> None:
    """Fake-tensor tracing and real CPU execution give the same peak within 1%."""
    config = make_step_config(arch, (size,) * 3, 1, precision=precision)
    trace = backends["trace"].measure(config)  # type: ignore[attr-defined]
    cpu = backends["cpu"].measure(config)  # type: ignore[attr-defined]
    assert trace.environment.device_kind == DeviceKind.TRACE and cpu.environment.device_kind == DeviceKind.CPU
    assert trace.ok and cpu.ok and cpu.peak_allocated_bytes
    assert abs(trace.peak_allocated_bytes - cpu.peak_allocated_bytes) / cpu.peak_allocated_bytes <= 0.01
    phases = ("forward", "backward", "optimizer")
    assert set(phases) <= set(trace.phase_peaks_bytes) and set(phases) <= set(cpu.phase_peaks_bytes)
    assert trace.peak_allocated_bytes == max(trace.phase_peaks_bytes[phase] for phase in phases)
    assert trace.parameter_count == cpu.parameter_count and trace.parameter_count
    assert trace.peak_allocated_bytes % CUDA_BLOCK_BYTES == 0


def test_trace_peak_grows_with_batch(backends: dict[str, object]) -> None:
    """Doubling the batch of a small model raises the traced peak (activations scale with it)."""
    one = backends["trace"].measure(make_step_config(TINY, (16, 16, 16), 1))  # type: ignore[attr-defined]
    two = backends["trace"].measure(make_step_config(TINY, (16, 16, 16), 2))  # type: ignore[attr-defined]
    assert two.peak_allocated_bytes > one.peak_allocated_bytes


def _phase_of_four_ops(tracker: AllocationTracker) -> None:
    """Four ops; the third makes a 400 KB temporary that is freed before the fourth."""
    tracker.start_phase("p")
    small = [torch.ones(256), torch.ones(256)]
    large = torch.ones(100_000)
    del large
    small.append(torch.ones(256))
    tracker.start_phase(None)
    del small


def test_a_full_last_window_keeps_its_peak() -> None:
    """When a phase's op count is a multiple of the window size, its last window is closed once.

    Closing it again at the phase's end used to overwrite its peak with the bytes live after the
    last op, losing the temporary that made the peak.
    """
    with AllocationTracker() as tracker:
        _phase_of_four_ops(tracker)
        assert tracker.phase_op_counts["p"] == 4
        tracker.split_phases({"p": 2})
        tracker.phase_peaks_bytes.clear()
        tracker.reset_peak()
        _phase_of_four_ops(tracker)
    large = cuda_block_size(400_000)
    assert tracker.phase_peaks_bytes["p.01"] == tracker.phase_peaks_bytes["p"] >= large
    assert set(tracker.phase_peaks_bytes) == {"p", "p.00", "p.01"}


def test_every_allocation_and_free_is_recorded_in_order() -> None:
    """The tracker's events replay the storages' lives: bytes asked for, op, then the free."""
    from memprobe.backends.caching_allocator import FREE

    with AllocationTracker() as tracker:
        tensor = torch.empty(1000)
        del tensor
    (serial, nbytes, op), (freed, marker, _) = tracker.events
    assert (nbytes, marker, freed) == (4000, FREE, serial) and "empty" in op


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "size", "precision"), AGREEMENT_CASES[:4])
def test_the_replayed_allocator_holds_at_least_the_traced_peak(
    backends: dict[str, object], arch: str, size: int, precision: str
) -> None:
    """On real traces: simulated allocated >= traced allocated, and simulated reserved >= both."""
    measurement = backends["trace"].measure(make_step_config(arch, (size,) * 3, 2, precision=precision))  # type: ignore[attr-defined]
    assert measurement.reserved_source == "simulated"
    traced, simulated = measurement.peak_allocated_bytes, measurement.simulated_allocated_bytes
    assert traced <= simulated <= measurement.peak_reserved_bytes
    assert set(measurement.reserved_phase_peaks_bytes) == {"forward", "backward", "optimizer"}
    assert max(measurement.reserved_phase_peaks_bytes.values()) == measurement.peak_reserved_bytes
