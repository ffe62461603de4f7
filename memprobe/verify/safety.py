"""Put `suggest` answers to the test: three consecutive steps at the batch and at batch + 1.

The check is a pure function over ``fits(batch) -> bool`` (three steps under the emulated
budget on CUDA); finding the true largest batch reuses memprobe's doubling search, started
just above the suggestion, so a close suggestion costs few steps.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from memprobe.core.bisection import Outcome, doubling_search, linear_boundary
from memprobe.core.config import StepConfig
from memprobe.core.errors import NoCalibrationError
from memprobe.verify.results import SafetyRow
from memprobe.verify.table import SafetyCase

SAFETY_STEPS = 3
SAFETY_MARGIN = 0.9  # memprobe suggest's default safety
Suggestion = tuple[int, str]  # (batch, where it came from)
Fits = Callable[[int], bool]


def check_suggestion(case: SafetyCase, budget_bytes: int, suggestion: Suggestion, fits: Fits) -> SafetyRow:
    """Run the suggestion and the batch above it, then find the true largest batch (bounded)."""
    batch, source = suggestion
    seen: dict[int, bool] = {}

    def probe(n: int) -> Outcome:
        if n not in seen:
            seen[n] = fits(n)
        return Outcome(seen[n])

    fits_suggested = probe(batch).fits if batch else True
    fits_next = probe(batch + 1).fits
    largest, capped = batch, False
    if fits_next:  # step up from the suggestion, doubling, to see how much it leaves unused
        result = doubling_search(probe, start=batch + 1, upper=4 * batch + 8)
        largest, capped = result.largest, result.capped
    elif not fits_suggested:
        largest = doubling_search(probe, start=1, upper=max(batch - 1, 1)).largest
    return SafetyRow(
        case.arch,
        case.patch,
        case.precision.value,
        budget_bytes,
        batch,
        source,
        fits_suggested,
        fits_next,
        largest,
        capped,
    )


def suggest_from_calibrations(case: SafetyCase, budget_bytes: int, db: Any = None) -> Suggestion:
    """What `memprobe suggest --device trace` answers; two trace probes stand in where no calibration exists."""
    from memprobe.api import max_batch_size

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = max_batch_size(
                case.arch, case.patch, budget_bytes, case.precision.value, device="trace", db=db
            )
        return plan.batch, f"trace calibration ({plan.calibration.source})"
    except NoCalibrationError:
        return _suggest_from_two_probes(case, budget_bytes), "two trace probes (no calibration)"


def _suggest_from_two_probes(case: SafetyCase, budget_bytes: int) -> int:
    from memprobe.backends.trace_backend import TraceBackend
    from memprobe.core.config import make_step_config

    backend = TraceBackend()
    points = []
    for batch in (1, 2):
        config = make_step_config(case.arch, case.patch, batch, precision=case.precision)
        points.append((batch, backend.measure(config).peak_allocated_bytes or 0))
    boundary = linear_boundary(points, budget_bytes * SAFETY_MARGIN)  # type: ignore[arg-type]
    return max(0, int(boundary)) if boundary is not None else 0


def run_consecutive_steps(
    config: StepConfig, device: torch.device, on_phase: Any, before_measured: Any
) -> tuple[float, int]:
    """A CudaBackend step runner: three steps in a row, all of them measured as one phase."""
    from memprobe.training.networks import build_for_config
    from memprobe.training.step import parameter_count, prepare_training, train_step

    model = build_for_config(config).to(device)
    state = prepare_training(config, model, device)
    before_measured()
    on_phase("steps")
    started = time.perf_counter()
    for _ in range(SAFETY_STEPS):
        train_step(state)
    on_phase(None)
    return time.perf_counter() - started, parameter_count(model)
