"""Run the verify table: trace and CUDA on each configuration, suggestion checks, memory histories.

Every CUDA-side collaborator is injected (``VerifyTools``), so the whole flow runs in tests on
fakes and, with ``--rehearse``, on the CPU; ``cuda_tools()`` gives the real ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memprobe.backends.base import Backend
from memprobe.core.config import StepConfig, make_step_config
from memprobe.core.errors import MemprobeError
from memprobe.core.units import format_bytes
from memprobe.verify.extras import CudaExtras
from memprobe.verify.history import Allocation, allocations_from_snapshot, unseen_allocations
from memprobe.verify.log import ResultLog
from memprobe.verify.results import (
    ContextSize,
    HistoryDiff,
    SafetyRow,
    VerifyResult,
    VerifyRow,
    from_record,
    to_record,
)
from memprobe.verify.safety import Suggestion, check_suggestion
from memprobe.verify.table import SafetyCase, VerifyPlan

CudaBackendFactory = Callable[[int | None, bool], Backend]  # (budget, three steps) -> backend
Progress = Callable[[int, int, str, bool], None]  # (index, total, item, reused)


@dataclass
class VerifyTools:
    """What a run measures with: the real GPU (``cuda_tools``), fakes in tests, the CPU in a rehearsal."""

    device: str  # names the run's results in the log, so two devices' results never mix
    cuda_backend: CudaBackendFactory
    trace_backend: Backend
    extras: CudaExtras
    trace_allocations: Callable[[StepConfig], list[Allocation]]
    suggest: Callable[[SafetyCase, int], Suggestion]
    rehearsal: bool = False


def cuda_tools(db: Any = None) -> VerifyTools:
    """The real collaborators on the current CUDA device."""
    from memprobe.backends.cuda import CudaBackend, run_real_step
    from memprobe.backends.trace_backend import TraceBackend
    from memprobe.core.gpus import detect_gpu
    from memprobe.verify.extras import TorchCudaExtras
    from memprobe.verify.history import trace_allocations
    from memprobe.verify.safety import run_consecutive_steps, suggest_from_calibrations

    def backend(budget_bytes: int | None, three_steps: bool) -> Backend:
        runner = run_consecutive_steps if three_steps else run_real_step
        return CudaBackend(budget_bytes=budget_bytes, step_runner=runner)

    gpu = detect_gpu()  # NVML: naming the device must not create the CUDA context before it is measured
    return VerifyTools(
        device=gpu.name if gpu else "cuda",
        cuda_backend=backend,
        trace_backend=TraceBackend(),
        extras=TorchCudaExtras(),
        trace_allocations=trace_allocations,
        suggest=lambda case, budget: suggest_from_calibrations(case, budget, db),
    )


@dataclass
class _Run:
    plan: VerifyPlan
    tools: VerifyTools
    log: ResultLog
    on_progress: Progress
    deadline: float | None
    failures: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    def item(self, index: int, total: int, kind: str, name: str, measure: Callable[[], Any]) -> Any:
        """The stored result of ``kind|name``, else measure and store it; None if failed or out of time."""
        key = f"{kind}|{name}"
        stored = self.log.get(key)
        if stored is None and self.deadline is not None and time.monotonic() > self.deadline:
            self.pending.append(f"{kind} {name}")
            return None
        self.on_progress(index, total, f"{kind} {name}", stored is not None)
        if stored is None:
            try:
                stored = to_record(measure())
            except MemprobeError as error:  # the model failed: it would again, so it is stored
                stored = {"failed": _one_line(error)}
            except Exception as error:  # one broken item must not cost a GPU run the rest
                self.failures.append(
                    f"{kind} {name}: {type(error).__name__}: {_one_line(error)} (not stored)"
                )
                return None
            self.log.add(kind, key, stored)
        if "failed" in stored:
            self.failures.append(f"{kind} {name}: {stored['failed']}")
            return None
        return stored

    def row(self, config: StepConfig, cudnn_benchmark: bool) -> VerifyRow:
        traced = self.tools.trace_backend.measure(config)
        with self.tools.extras.cudnn_benchmark(cudnn_benchmark):
            cuda = self.tools.cuda_backend(None, False).measure(config)
        return VerifyRow(
            config.label(),
            config.arch,
            config.patch,
            config.batch,
            config.precision.value,
            traced.peak_allocated_bytes,
            traced.peak_reserved_bytes,
            cuda.peak_allocated_bytes,
            cuda.peak_reserved_bytes,
            cudnn_benchmark,
            cuda.oom,
        )

    def safety(self, case: SafetyCase) -> SafetyRow:
        budget = self.plan.budget_bytes
        backend = self.tools.cuda_backend(budget, True)
        fits = lambda batch: (
            backend.measure(make_step_config(case.arch, case.patch, batch, precision=case.precision)).ok
        )
        return check_suggestion(case, budget, self.tools.suggest(case, budget), fits)

    def history(self, config: StepConfig) -> HistoryDiff:
        backend = self.tools.cuda_backend(None, False)
        snapshot = self.tools.extras.record_history(lambda: backend.measure(config))
        cuda = allocations_from_snapshot(snapshot)
        trace = self.tools.trace_allocations(config)
        return HistoryDiff(config.label(), len(cuda), len(trace), tuple(unseen_allocations(cuda, trace)))


def _one_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _ignore_progress(index: int, total: int, item: str, reused: bool) -> None:
    """Default progress callback."""


def run_verify(
    plan: VerifyPlan,
    tools: VerifyTools,
    log: ResultLog,
    *,
    on_progress: Progress = _ignore_progress,
    time_limit_seconds: float | None = None,
) -> VerifyResult:
    """Measure ``plan`` with ``tools``, reusing what ``log`` holds and appending each new result.

    The context is measured first, before anything else touches the GPU. Past
    ``time_limit_seconds`` no new item starts; the result lists them as pending.
    """
    deadline = time.monotonic() + time_limit_seconds if time_limit_seconds is not None else None
    run = _Run(plan, tools, log, on_progress, deadline)
    total = 1 + len(plan.configs) + len(plan.cudnn_configs) + len(plan.safety) + len(plan.history)
    counter = iter(range(1, total + 1))
    step = lambda kind, name, measure: run.item(next(counter), total, kind, name, measure)
    context = step("context", "size", tools.extras.context_size)
    rows = [
        step("row", f"{c.label()} cudnn.benchmark=off", lambda c=c: run.row(c, False)) for c in plan.configs
    ]
    rows += [
        step("row", f"{c.label()} cudnn.benchmark=on", lambda c=c: run.row(c, True))
        for c in plan.cudnn_configs
    ]
    budget = plan.budget_bytes
    safety = [
        step(
            "safety",
            f"{s.arch} {'x'.join(map(str, s.patch))} {s.precision.value} at {format_bytes(budget)}",
            lambda s=s: run.safety(s),
        )
        for s in plan.safety
    ]
    history = [step("history", c.label(), lambda c=c: run.history(c)) for c in plan.history]
    environment = tools.cuda_backend(None, False).environment().to_dict()
    return VerifyResult(
        environment=environment,
        rehearsal=tools.rehearsal,
        budget_bytes=budget,
        rows=tuple(from_record(VerifyRow, r) for r in rows if r),
        safety=tuple(from_record(SafetyRow, s) for s in safety if s),
        context=from_record(ContextSize, context) if context else None,
        history=tuple(from_record(HistoryDiff, h) for h in history if h),
        failures=tuple(run.failures),
        pending=tuple(run.pending),
    )
