"""OOM recovery: after any number of out-of-memory probes, the next probe measures what a fresh process would.

No GPU is needed: CudaBackend runs on a fake runtime whose ``allocated`` counter is the size of
the fake blocks still alive, and on a fake step that allocates such blocks, keeps some of them
in a reference cycle (as autograd graphs do) and runs out of memory on schedule while its
frames hold them. Automatic garbage collection is off during each test, so only the backend's
own ``gc.collect()`` can free what an out-of-memory traceback left behind.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import torch

from memprobe.backends.cuda import CudaBackend
from memprobe.backends.recorder import MeasurementLog
from memprobe.core.bisection import doubling_search
from memprobe.core.config import StepConfig
from memprobe.core.errors import ModelError

MIB = 2**20
TOTAL_BYTES = 1024 * MIB
WEIGHTS_BYTES = 10 * MIB
ACTIVATION_BYTES_PER_SAMPLE = 12 * MIB
CONFIG = StepConfig(arch="fake", patch=(32, 32, 32), batch=2)


CONTEXT_BYTES = 500 * 2**20  # what a fake CUDA context holds outside the allocator


class _Block:
    """One fake device allocation; freed when the last reference to it goes."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


class FakeCudaRuntime:
    """A caching allocator in miniature: allocated counts live blocks, reserved also freed ones."""

    def __init__(self, total_bytes: int = TOTAL_BYTES) -> None:
        self.total = total_bytes
        self.fraction = 1.0
        self.allocated = 0
        self.reserved = 0
        self.peak_allocated = 0
        self.peak_reserved = 0
        self.calls: list[str] = []
        self.allocated_at_empty_cache: list[int] = []
        self._live: dict[int, int] = {}

    def allocate(self, nbytes: int) -> _Block:
        if self.allocated + nbytes > self.total * self.fraction:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {nbytes} bytes (fake)")
        block = _Block(nbytes)
        self._live[id(block)] = nbytes
        weakref.finalize(block, self._free, id(block))
        self.allocated += nbytes
        self.reserved = max(self.reserved, self.allocated)
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        return block

    def _free(self, key: int) -> None:
        self.allocated -= self._live.pop(key)

    # The CudaRuntime protocol.
    def reset_peak_memory_stats(self) -> None:
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved

    def max_memory_allocated(self) -> int:
        return self.peak_allocated

    def max_memory_reserved(self) -> int:
        return self.peak_reserved

    def memory_allocated(self) -> int:
        return self.allocated

    def synchronize(self) -> None:
        self.calls.append("synchronize")

    def empty_cache(self) -> None:
        self.calls.append("empty_cache")
        self.allocated_at_empty_cache.append(self.allocated)
        self.reserved = self.allocated

    def set_per_process_memory_fraction(self, fraction: float) -> None:
        self.fraction = fraction

    def total_memory_bytes(self) -> int:
        return self.total

    def device_name(self) -> str:
        return "Fake GPU"

    def context_bytes(self) -> int | None:
        return CONTEXT_BYTES

    def versions(self) -> dict[str, Any]:
        return {"driver_version": None, "cuda_version": None, "cudnn_version": None}


class FakeStep:
    """The step runner: weights, a warm-up step, then the measured step, as run_real_step does.

    Activations grow with the batch and sit in a reference cycle, so that once an exception
    has unwound the step, only the garbage collector can free them. ``oom_on`` lists the calls
    (counted from 0) that run out of memory whatever their size; ``error`` makes every call
    raise what it returns.
    """

    def __init__(
        self,
        runtime: FakeCudaRuntime,
        oom_on: tuple[int, ...] = (),
        error: Callable[[], BaseException] | None = None,
    ) -> None:
        self.runtime = runtime
        self.oom_on = oom_on
        self.error = error
        self.calls = 0

    def __call__(
        self, config: StepConfig, device: torch.device, on_phase: Any, before_measured: Any
    ) -> tuple[float, int]:
        call, self.calls = self.calls, self.calls + 1
        weights = [self.runtime.allocate(WEIGHTS_BYTES)]
        optimizer_state = [self.runtime.allocate(2 * WEIGHTS_BYTES)]
        self._step(config, call, lambda name: None)
        before_measured()
        self._step(config, call, on_phase)
        del weights, optimizer_state
        return 0.01, 1000

    def _step(self, config: StepConfig, call: int, on_phase: Any) -> None:
        on_phase("forward")
        activations: list[Any] = [
            self.runtime.allocate(ACTIVATION_BYTES_PER_SAMPLE) for _ in range(config.batch)
        ]
        activations.append(activations)  # a cycle, as an autograd graph holds
        if call in self.oom_on:
            raise torch.OutOfMemoryError("CUDA out of memory (scheduled)")
        if self.error is not None:
            raise self.error()  # a new exception each time, as torch raises
        on_phase("backward")
        gradients = self.runtime.allocate(WEIGHTS_BYTES)
        activations.clear()
        on_phase("optimizer")
        del gradients
        on_phase(None)


@pytest.fixture(autouse=True)
def _no_automatic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def fresh_peak(
    config: StepConfig, budget_bytes: int | None = None
) -> tuple[int | None, int | None, dict[str, int]]:
    """What the first probe of a new process measures."""
    runtime = FakeCudaRuntime()
    measurement = CudaBackend(budget_bytes, runtime=runtime, step_runner=FakeStep(runtime)).measure(config)
    assert measurement.ok
    return measurement.peak_allocated_bytes, measurement.peak_reserved_bytes, measurement.phase_peaks_bytes


def test_the_fake_leaks_without_cleanup() -> None:
    """The fake can tell: an OOM traceback kept alive, or a cycle not collected, holds its blocks."""
    runtime = FakeCudaRuntime()
    step = FakeStep(runtime, oom_on=(0,))
    with pytest.raises(torch.OutOfMemoryError) as caught:
        step(CONFIG, torch.device("cpu"), lambda name: None, lambda: None)
    assert runtime.allocated > 0  # the traceback's frames hold the step's blocks
    del caught
    assert runtime.allocated > 0  # the activations' cycle survives the frames
    gc.collect()
    assert runtime.allocated == 0


@pytest.mark.parametrize("oom_count", [1, 3])
def test_probe_after_scheduled_ooms_measures_as_a_fresh_process(oom_count: int) -> None:
    runtime = FakeCudaRuntime()
    backend = CudaBackend(runtime=runtime, step_runner=FakeStep(runtime, oom_on=tuple(range(oom_count))))
    for _ in range(oom_count):
        assert backend.measure(CONFIG).oom
        assert runtime.memory_allocated() == 0
    after = backend.measure(CONFIG)
    assert after.ok
    assert (after.peak_allocated_bytes, after.peak_reserved_bytes, after.phase_peaks_bytes) == fresh_peak(
        CONFIG
    )


def test_cleanup_runs_after_the_exception_is_released() -> None:
    """empty_cache sees nothing of the OOM step alive: the traceback was dropped and gc ran first."""
    runtime = FakeCudaRuntime()
    backend = CudaBackend(runtime=runtime, step_runner=FakeStep(runtime, oom_on=(0,)))
    assert backend.measure(replace(CONFIG, batch=8)).oom
    assert "empty_cache" in runtime.calls
    assert runtime.allocated_at_empty_cache[-1] == 0
    assert runtime.reserved == 0  # no cached block carried into the next probe


def test_search_through_ooms_ends_with_a_fresh_measurement() -> None:
    """Double until OOM under a real budget, bisect back, then measure: the same peak as a fresh process."""
    budget = 200 * MIB
    runtime = FakeCudaRuntime()
    backend = CudaBackend(budget, runtime=runtime, step_runner=FakeStep(runtime))
    log = MeasurementLog(backend, None, budget)
    result = doubling_search(lambda batch: log.outcome(replace(CONFIG, batch=batch)), upper=64)
    ooms = [m for m in log.taken if m.oom]
    assert len(ooms) >= 2
    # 30 MiB of weights and optimizer state, 12 MiB a sample, 10 MiB of gradients, under 200 MiB:
    assert result.largest == (budget - 4 * WEIGHTS_BYTES) // ACTIVATION_BYTES_PER_SAMPLE
    assert runtime.fraction == 1.0  # the cap is lifted after each probe
    for batch in (1, result.largest):
        after = backend.measure(replace(CONFIG, batch=batch))
        assert (after.peak_allocated_bytes, after.peak_reserved_bytes, after.phase_peaks_bytes) == fresh_peak(
            replace(CONFIG, batch=batch), budget
        )


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: out of memory",
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    ],
)
def test_library_allocation_failures_count_as_out_of_memory(message: str) -> None:
    runtime = FakeCudaRuntime()
    backend = CudaBackend(runtime=runtime, step_runner=FakeStep(runtime, error=lambda: RuntimeError(message)))
    assert backend.measure(CONFIG).oom
    assert runtime.allocated_at_empty_cache[-1] == 0


def test_other_errors_are_model_errors_and_lift_the_cap() -> None:
    runtime = FakeCudaRuntime()
    backend = CudaBackend(
        100 * MIB, runtime=runtime, step_runner=FakeStep(runtime, error=lambda: ValueError("bad shape"))
    )
    with pytest.raises(ModelError, match="bad shape"):
        backend.measure(CONFIG)
    assert runtime.fraction == 1.0


def test_interrupt_during_a_probe_propagates_and_lifts_the_cap() -> None:
    runtime = FakeCudaRuntime()
    backend = CudaBackend(100 * MIB, runtime=runtime, step_runner=FakeStep(runtime, error=KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        backend.measure(CONFIG)
    assert runtime.fraction == 1.0
