"""Search cost: training steps to find the exact largest batch, memprobe against the baselines.

Three strategies search the largest batch whose traced peak fits the budget, over the same
measurements (each batch is traced once per session; every strategy is charged for each
probe it makes, and for that probe's measured-step seconds):

- exhaustive: batch 1, 2, 3, ... until one does not fit (the reference answer);
- doubling: Lightning's batch-size finder, double until a failure, then bisect;
- memprobe: ``guided_search`` starting from the calibrated formula's prediction, as
  ``memprobe calibrate`` searches.

"formula alone" is the calibrated formula's answer without any training step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.harness import (
    BUDGET_BYTES,
    GIB,
    Calibrations,
    ResultTable,
    SessionMeasurements,
    patch_text,
    selected_archs,
    write_results,
)
from memprobe.archs.registry import get_arch, smallest_patch_size
from memprobe.calibrator import MAX_BATCH
from memprobe.config import StepConfig, make_step_config
from memprobe.planner import plan_batch
from memprobe.search import Outcome, SearchResult, doubling_search, exhaustive_search, guided_search

# (architecture, isotropic patch size): boundaries from batch 1 to about 13 within 24 GiB.
SEARCH_CASES = (
    ("mednext", 64),
    ("mednext", 128),
    ("basicunet", 128),
    ("basicunet", 160),
    ("dynunet", 128),
    ("dynunet", 160),
)
STRATEGIES = ("exhaustive", "doubling", "memprobe")


def search_cases() -> list[tuple[str, int]]:
    """The default cases of the selected architectures, else two patches of the first one selected."""
    selected = selected_archs()
    cases = [case for case in SEARCH_CASES if case[0] in selected]
    if cases:
        return cases
    unit = smallest_patch_size(get_arch(selected[0])) // 2
    return [(selected[0], unit * 4), (selected[0], unit * 8)]


@dataclass(frozen=True)
class Case:
    base: StepConfig
    results: dict[str, SearchResult]
    step_seconds: dict[str, float]
    formula_only: int

    @property
    def exact(self) -> int:
        return self.results["exhaustive"].largest


def run_case(measurements: SessionMeasurements, calibrations: Calibrations, arch: str, size: int) -> Case:
    spec = get_arch(arch)
    base = make_step_config(arch, (size,) * 3, 1)
    calibration = calibrations.get(arch).calibration

    def outcome(batch: int) -> Outcome:
        measured = measurements.measure(base.with_batch(batch))
        return Outcome(measured.fits(BUDGET_BYTES), measured.peak_allocated_bytes)

    def predict(batch: int) -> float:
        return calibration.predict_peak_bytes(spec, base.patch, batch, base.in_channels, base.out_channels)

    results = {
        "exhaustive": exhaustive_search(outcome, upper=MAX_BATCH),
        "doubling": doubling_search(outcome, upper=MAX_BATCH),
        "memprobe": guided_search(outcome, BUDGET_BYTES, predict=predict, upper=MAX_BATCH),
    }
    step_seconds = lambda n: measurements.measure(base.with_batch(n)).step_seconds or 0.0
    seconds = {name: sum(step_seconds(n) for n, _ in result.probes) for name, result in results.items()}
    formula_only = plan_batch(calibration, spec, base.patch, BUDGET_BYTES, safety=1.0).batch
    return Case(base, results, seconds, formula_only)


def _yes(answer: int, exact: int) -> str:
    return "yes" if answer == exact else f"no ({answer})"


def _display(case: Case) -> dict[str, Any]:
    row: dict[str, Any] = {
        "arch": case.base.arch,
        "patch": patch_text(case.base.patch),
        "exact largest batch": case.exact,
    }
    for name in STRATEGIES:
        row[f"{name} steps"] = case.results[name].steps
        row[f"{name} s"] = f"{case.step_seconds[name]:.1f}"
        if name != "exhaustive":
            row[f"{name} exact"] = _yes(case.results[name].largest, case.exact)
    row["formula alone (0 steps)"] = _yes(case.formula_only, case.exact)
    return row


def _total_row(cases: list[Case]) -> dict[str, Any]:
    row: dict[str, Any] = {"arch": "**total**", "patch": "", "exact largest batch": ""}
    for name in STRATEGIES:
        row[f"{name} steps"] = sum(c.results[name].steps for c in cases)
        row[f"{name} s"] = f"{sum(c.step_seconds[name] for c in cases):.1f}"
        if name != "exhaustive":
            row[f"{name} exact"] = f"{sum(c.results[name].largest == c.exact for c in cases)}/{len(cases)}"
    row["formula alone (0 steps)"] = f"{sum(c.formula_only == c.exact for c in cases)}/{len(cases)}"
    return row


def _record(case: Case) -> dict[str, Any]:
    record: dict[str, Any] = {
        "arch": case.base.arch,
        "patch": patch_text(case.base.patch),
        "budget_bytes": BUDGET_BYTES,
        "exact_largest_batch": case.exact,
        "formula_only_batch": case.formula_only,
    }
    for name in STRATEGIES:
        result = case.results[name]
        record |= {
            f"{name}_batch": result.largest,
            f"{name}_steps": result.steps,
            f"{name}_step_seconds": round(case.step_seconds[name], 3),
            f"{name}_probes": " ".join(str(n) for n, _ in result.probes),
        }
    return record


def test_search_cost_table(measurements: SessionMeasurements, calibrations: Calibrations) -> None:
    cases = [run_case(measurements, calibrations, arch, size) for arch, size in search_cases()]
    notes = (
        f"Largest batch whose traced fp32 training-step peak fits {BUDGET_BYTES / GIB:g} GiB; "
        "steps = training steps the strategy ran, s = their measured-step seconds on the trace backend.",
        "exhaustive: 1, 2, 3, ... until a failure (the reference); doubling: Lightning's double-then-bisect "
        "batch-size finder; memprobe: guided_search from the calibrated formula's prediction.",
        "formula alone: the calibrated formula's largest batch (safety 1.0), no training step run.",
        "Each configuration is traced once per run and shared; every strategy is charged for its own probes.",
    )
    title = f"Search cost: steps to find the largest batch within {BUDGET_BYTES / GIB:g} GiB"
    rows = [_display(c) for c in cases] + [_total_row(cases)]
    write_results(ResultTable("search_cost", title, rows, [_record(c) for c in cases], notes))
    for case in cases:
        assert case.results["memprobe"].largest == case.exact, case.base.label()
        assert case.results["doubling"].largest == case.exact, case.base.label()
        # What `memprobe suggest` would answer (safety 1.0, its most daring) never exceeds the truth.
        assert case.formula_only <= case.exact, case.base.label()
    assert sum(c.results["memprobe"].steps for c in cases) < sum(c.results["doubling"].steps for c in cases)
