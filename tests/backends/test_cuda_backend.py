"""Tests of the cuda backend without a GPU: a fake ``torch.cuda`` runtime and a fake training step.

The fake runtime counts allocations the way the caching allocator reports them and runs out
of memory above ``fraction * total``, as ``set_per_process_memory_fraction`` makes a real GPU do.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from memprobe.backends import cuda
from memprobe.backends.cuda import CudaBackend
from memprobe.backends.recorder import MeasurementLog
from memprobe.core.bisection import doubling_search, guided_search
from memprobe.core.config import StepConfig, make_step_config
from memprobe.core.errors import ModelError

GIB = 2**30
RESERVE_BLOCK = 2 * 2**20  # the fake reserves memory in 2 MiB segments
WEIGHTS = 100_000_000
OPTIMIZER_STATE = 2 * WEIGHTS
INPUT_PER_SAMPLE = 1_000_000
ACTIVATIONS_PER_SAMPLE = 50_000_000


def _round_up(size: int, block: int) -> int:
    return -(-size // block) * block


CONTEXT_BYTES = 500 * 2**20  # what a fake CUDA context holds outside the allocator


class FakeRuntime:
    """A recording stand-in for ``torch.cuda``: allocations, peaks, a memory fraction."""

    def __init__(self, total_bytes: int = 80 * GIB) -> None:
        self.total = total_bytes
        self.calls: list[Any] = []
        self.allocated = self.peak_allocated = 0
        self.reserved = self.peak_reserved = 0
        self.fraction = 1.0

    # What the fake training step does to the allocator.
    def allocate(self, size: int) -> None:
        if self.allocated + size > self.fraction * self.total:
            self.calls.append("oom")
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {size} bytes.")
        self.allocated += size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.reserved = max(self.reserved, _round_up(self.allocated, RESERVE_BLOCK))
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def free(self, size: int) -> None:
        self.allocated -= size

    # The CudaRuntime protocol.
    def reset_peak_memory_stats(self) -> None:
        self.calls.append("reset_peak")
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
        self.reserved = _round_up(self.allocated, RESERVE_BLOCK)

    def set_per_process_memory_fraction(self, fraction: float) -> None:
        self.calls.append(("fraction", fraction))
        self.fraction = fraction

    def total_memory_bytes(self) -> int:
        return self.total

    def device_name(self) -> str:
        return "Fake GPU 80GB"

    def context_bytes(self) -> int | None:
        return CONTEXT_BYTES

    def versions(self) -> dict[str, Any]:
        return {"driver_version": "550.0", "cuda_version": "12.4", "cudnn_version": "90100"}


def expected_phase_peaks(batch: int) -> dict[str, int]:
    """The per-phase peaks the fake step reaches on its measured (second) step."""
    held = WEIGHTS + OPTIMIZER_STATE + INPUT_PER_SAMPLE * batch
    return {
        "forward": held + ACTIVATIONS_PER_SAMPLE * batch,
        "backward": held + ACTIVATIONS_PER_SAMPLE * batch + WEIGHTS,
        "optimizer": held + WEIGHTS + WEIGHTS // 2,
    }


def fake_step_runner(
    runtime: FakeRuntime, phases: list[str | None] | None = None
) -> Callable[..., tuple[float, int]]:
    """A training step that allocates through ``runtime``: warm-up step, then the measured one."""

    def one_step(batch: int, on_phase: Callable[[str | None], None], first: bool) -> None:
        on_phase("forward")
        runtime.allocate(ACTIVATIONS_PER_SAMPLE * batch)
        on_phase("backward")
        runtime.allocate(WEIGHTS)  # gradients
        runtime.free(ACTIVATIONS_PER_SAMPLE * batch)
        on_phase("optimizer")
        if first:
            runtime.allocate(OPTIMIZER_STATE)
        runtime.allocate(WEIGHTS // 2)  # foreach temporaries
        runtime.free(WEIGHTS // 2)
        runtime.free(WEIGHTS)  # zero_grad(set_to_none=True)
        on_phase(None)

    def run(
        config: StepConfig,
        device: torch.device,
        on_phase: Callable[[str | None], None],
        before_measured: Callable[[], None],
    ) -> tuple[float, int]:
        assert device.type == "cuda"
        start = runtime.allocated

        def announce(name: str | None) -> None:
            if phases is not None:
                phases.append(name)
            on_phase(name)

        try:
            runtime.allocate(WEIGHTS)
            runtime.allocate(INPUT_PER_SAMPLE * config.batch)
            one_step(config.batch, lambda name: None, first=True)
            before_measured()
            one_step(config.batch, announce, first=False)
        finally:
            runtime.allocated = start  # the model and its state go when the step's frames do
        return 0.25, WEIGHTS // 4

    return run


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> FakeRuntime:
    """A fake 80 GiB GPU; the backend's garbage collections are recorded in its calls (and skipped)."""
    fake = FakeRuntime(total_bytes=80 * GIB)
    monkeypatch.setattr(cuda, "gc", SimpleNamespace(collect=lambda: fake.calls.append("gc_collect")))
    return fake


def _fractions(runtime: FakeRuntime) -> list[float]:
    return [call[1] for call in runtime.calls if isinstance(call, tuple)]


def _config(batch: int = 2) -> StepConfig:
    return make_step_config("mednext", (128, 128, 128), batch)


def test_phase_peaks_and_overall_peak_come_from_the_allocator(runtime: FakeRuntime) -> None:
    """Each phase's peak is max_memory_allocated over it; the overall peak is their maximum."""
    phases: list[str | None] = []
    backend = CudaBackend(runtime=runtime, step_runner=fake_step_runner(runtime, phases))
    measurement = backend.measure(_config(3))
    expected = expected_phase_peaks(3)
    assert phases == ["forward", "backward", "optimizer", None]
    assert measurement.phase_peaks_bytes == expected
    assert measurement.peak_allocated_bytes == max(expected.values()) == expected["backward"]
    assert measurement.peak_reserved_bytes == _round_up(expected["backward"], RESERVE_BLOCK)
    assert measurement.ok and not measurement.oom and measurement.error is None
    assert measurement.step_seconds == 0.25 and measurement.parameter_count == WEIGHTS // 4
    assert measurement.budget_bytes is None
    assert _fractions(runtime) == []  # no budget: the process is never capped


def test_environment_describes_the_gpu(runtime: FakeRuntime) -> None:
    """The environment is keyed by the GPU's name and carries its memory and versions."""
    runtime.total = 24 * GIB
    environment = CudaBackend(runtime=runtime, step_runner=fake_step_runner(runtime)).environment()
    assert environment.device_kind == "cuda" and environment.device_name == "Fake GPU 80GB"
    assert environment.calibration_device == "Fake GPU 80GB"
    assert environment.total_memory_bytes == 24 * GIB and environment.cuda_version == "12.4"
    assert environment.torch_version == torch.__version__


def test_budget_sets_and_restores_the_memory_fraction(runtime: FakeRuntime) -> None:
    """A budget caps the process at budget/total for the step and restores 1.0 after it."""
    backend = CudaBackend(budget_bytes=20 * GIB, runtime=runtime, step_runner=fake_step_runner(runtime))
    measurement = backend.measure(_config(2))
    assert _fractions(runtime) == [pytest.approx(0.25), 1.0]
    assert runtime.fraction == 1.0
    assert measurement.ok and measurement.budget_bytes == 20 * GIB


def test_budget_above_the_card_is_capped_at_the_whole_card(runtime: FakeRuntime) -> None:
    """A budget larger than the GPU sets a fraction of 1.0, never more."""
    runtime.total = 16 * GIB
    CudaBackend(budget_bytes=80 * GIB, runtime=runtime, step_runner=fake_step_runner(runtime)).measure(
        _config(1)
    )
    assert _fractions(runtime) == [1.0, 1.0]


def test_out_of_memory_is_a_result_and_memory_is_released(runtime: FakeRuntime) -> None:
    """An OOM returns Measurement(oom=True); the fraction is restored and the cache emptied after it."""
    budget = 2 * GIB
    backend = CudaBackend(budget_bytes=budget, runtime=runtime, step_runner=fake_step_runner(runtime))
    measurement = backend.measure(_config(64))
    assert measurement.oom and not measurement.ok and measurement.peak_allocated_bytes is None
    assert measurement.budget_bytes == budget and not measurement.fits(None)
    assert _fractions(runtime) == [pytest.approx(budget / (80 * GIB)), 1.0]
    after = runtime.calls[runtime.calls.index("oom") :]
    assert after == ["oom", ("fraction", 1.0), "gc_collect", "synchronize", "empty_cache"]


def test_model_failure_becomes_model_error_and_restores_the_fraction(runtime: FakeRuntime) -> None:
    """A non-OOM exception in the step becomes a ModelError naming the step; the fraction is restored."""

    def broken(config: StepConfig, device: torch.device, on_phase: Any, before: Any) -> tuple[float, int]:
        on_phase("forward")
        raise ValueError("shapes do not match")

    backend = CudaBackend(budget_bytes=8 * GIB, runtime=runtime, step_runner=broken)
    with pytest.raises(ModelError) as caught:
        backend.measure(_config(2))
    assert "mednext 128x128x128 b2 fp32" in str(caught.value) and "ValueError: shapes do not match" in str(
        caught.value
    )
    assert isinstance(caught.value.__cause__, ValueError)
    assert caught.value.exit_code == 1
    assert _fractions(runtime) == [pytest.approx(0.1), 1.0] and runtime.fraction == 1.0


def test_each_probe_starts_from_a_clean_allocator(runtime: FakeRuntime) -> None:
    """The cache is emptied before every step, and reserved memory does not leak between probes."""
    backend = CudaBackend(runtime=runtime, step_runner=fake_step_runner(runtime))
    first = backend.measure(_config(4))
    second = backend.measure(_config(1))
    assert runtime.calls[:3] == ["gc_collect", "synchronize", "empty_cache"]
    assert second.peak_reserved_bytes == _round_up(expected_phase_peaks(1)["backward"], RESERVE_BLOCK)
    assert second.peak_reserved_bytes < first.peak_reserved_bytes  # type: ignore[operator]


def _threshold_batch(budget: int) -> int:
    """The largest batch whose whole step (warm-up included) stays within the budget."""
    batch = 0
    while max(expected_phase_peaks(batch + 1).values()) <= budget:
        batch += 1
    return batch


@pytest.mark.parametrize("budget_gib", [1, 3, 11, 24, 33])
def test_search_over_the_fake_gpu_finds_the_exact_threshold(budget_gib: int, runtime: FakeRuntime) -> None:
    """Guided search over real OOMs (the cuda backend capped at the budget) finds the exact batch."""
    budget = budget_gib * GIB
    backend = CudaBackend(budget_bytes=budget, runtime=runtime, step_runner=fake_step_runner(runtime))
    log = MeasurementLog(backend, None, budget)
    base = _config(1)
    result = guided_search(lambda b: log.outcome(base.with_batch(b)), budget, upper=1024)
    assert result.largest == _threshold_batch(budget)
    batches = [m.config.batch for m in log.taken]
    assert len(batches) == len(set(batches)) == result.steps
    assert any(m.oom for m in log.taken) and runtime.fraction == 1.0
    fresh = CudaBackend(budget_bytes=budget, runtime=runtime, step_runner=fake_step_runner(runtime))
    doubling = doubling_search(
        lambda b: MeasurementLog(fresh, None, budget).outcome(base.with_batch(b)), upper=1024
    )
    assert doubling.largest == result.largest and result.steps <= doubling.steps


def test_warm_up_steps_until_the_optimizer_has_state() -> None:
    """fp16's GradScaler skips optimizer.step() while the scale overflows: warm up until state exists."""
    from memprobe.backends.cuda import warm_up

    state = SimpleNamespace(optimizer=SimpleNamespace(state={}))
    steps: list[int] = []

    def skipping_step(current: Any) -> None:
        steps.append(1)
        if len(steps) == 3:  # the scaler has backed off enough: the optimizer steps
            current.optimizer.state["weight"] = {"exp_avg": 0}

    assert warm_up(state, skipping_step) == 3 and len(steps) == 3  # type: ignore[arg-type]
    assert warm_up(SimpleNamespace(optimizer=SimpleNamespace(state={})), lambda s: None, max_steps=4) == 4  # type: ignore[arg-type]


def test_cuda_measurements_carry_both_peaks_and_the_context(runtime: FakeRuntime) -> None:
    """Reserved is measured per phase; the context outside the allocator is recorded."""
    measurement = CudaBackend(runtime=runtime, step_runner=fake_step_runner(runtime)).measure(_config())
    assert measurement.reserved_source == "measured"
    assert set(measurement.reserved_phase_peaks_bytes) == {"forward", "backward", "optimizer"}
    assert measurement.peak_reserved_bytes == max(measurement.reserved_phase_peaks_bytes.values())
    assert measurement.context_bytes == CONTEXT_BYTES and measurement.warmup_steps == 1
