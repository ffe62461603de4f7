"""Search cost: training steps to find the exact largest batch, memprobe against the baselines.

Three strategies search the largest batch whose traced (allocated) peak fits the budget, over
the same measurements (each batch is traced once per session; every strategy is charged for
each probe it makes, and for that probe's measured-step seconds):

- exhaustive: batch 1, 2, 3, ... until one does not fit (the reference answer);
- doubling: Lightning's batch-size finder, double until a failure, then bisect;
- memprobe: ``guided_search`` starting from the calibrated formula's prediction, as
  ``memprobe calibrate`` searches. Its first answer for an architecture is also charged the
  calibration's own steps (design points and held-out points); later answers reuse it.

"formula alone" is the largest batch whose predicted allocated peak fits, without any step.
The patches are neither design points nor held-out points of the calibration.
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
    base_config,
    patch_text,
    selected_archs,
    write_results,
)
from memprobe.calibration_run import MAX_MEASURED_BATCH, design_points, patch_unit
from memprobe.core.archs.registry import get_arch
from memprobe.core.bisection import (
    Outcome,
    SearchResult,
    doubling_search,
    exhaustive_search,
    guided_search,
    largest_at_most,
)
from memprobe.core.config import StepConfig, make_step_config
from memprobe.core.errors import NothingFitsError
from memprobe.formula.calibration import Calibration
from memprobe.planning.size_search import plan_batch

Patch = tuple[int, int, int]
# (architecture, patch): an odd-unit cube and an anisotropic patch each, none of them a design or
# held-out point; largest batches from about 2 to 11 within 24 GiB.
SEARCH_CASES: tuple[tuple[str, Patch], ...] = (
    ("mednext", (112, 112, 112)),
    ("mednext", (48, 96, 96)),
    ("basicunet", (144, 144, 144)),
    ("basicunet", (96, 128, 160)),
    ("dynunet", (96, 96, 96)),
    ("dynunet", (64, 192, 192)),
)
STRATEGIES = ("exhaustive", "doubling", "memprobe")
FALLBACK_BATCHES = (2, 12)  # without a default case: odd-unit cubes predicted to hold 2 to 12


def search_cases(calibrations: Calibrations) -> list[tuple[str, Patch]]:
    """The default cases of the selected architectures, else two odd-unit cubes of the first one selected."""
    selected = selected_archs()
    cases = [case for case in SEARCH_CASES if case[0] in selected]
    if cases:
        return cases
    arch, spec = selected[0], get_arch(selected[0])
    calibration = calibrations.get(arch).calibration
    cubes = [
        p for k in range(3, 33, 2) if (p := (patch_unit(spec) * k,) * 3) not in _calibration_patches(arch)
    ]
    fitting = [
        p for p in cubes if FALLBACK_BATCHES[0] <= formula_batch(calibration, arch, p) <= FALLBACK_BATCHES[1]
    ]
    return [(arch, p) for p in dict.fromkeys([fitting[0], fitting[-1]])] if fitting else [(arch, cubes[0])]


def formula_batch(
    calibration: Calibration, arch: str, patch: Patch, in_channels: int = 1, out_channels: int = 2
) -> int:
    """The largest batch whose predicted allocated peak fits the budget (0 if not even batch 1 does)."""
    spec = get_arch(arch)
    predict = lambda b: calibration.predict_peak_bytes(spec, patch, b, in_channels, out_channels)
    return largest_at_most(predict, BUDGET_BYTES, 1, MAX_MEASURED_BATCH) if predict(1) <= BUDGET_BYTES else 0


def _calibration_patches(arch: str) -> set[tuple[int, ...]]:
    """The patches ``memprobe calibrate`` measures: design points and held-out points."""
    points = design_points(base_config(arch), get_arch(arch))
    return {c.patch for c in (*points.fit, *points.heldout)}


def _planned_batch(calibration: Calibration, arch: str, patch: Patch) -> int:
    """``plan_batch``'s answer at safety 1.0 (0 where it says nothing fits)."""
    try:
        return plan_batch(calibration, get_arch(arch), patch, BUDGET_BYTES).batch
    except NothingFitsError:
        return 0


def _design_step_seconds(measurements: SessionMeasurements, arch: str) -> list[float]:
    """Measured-step seconds of every step ``memprobe calibrate`` runs to fit ``arch``."""
    points = design_points(base_config(arch), get_arch(arch))
    return [measurements.calibration_step(c).step_seconds or 0.0 for c in (*points.fit, *points.heldout)]


@dataclass(frozen=True)
class Case:
    base: StepConfig
    results: dict[str, SearchResult]
    step_seconds: dict[str, float]
    formula_only: int
    planned: int  # what `memprobe suggest` answers: the whole need (reserve, context, ...) fits
    calibration_steps: int  # charged to the first answer for an architecture, 0 for later ones
    calibration_seconds: float

    @property
    def exact(self) -> int:
        return self.results["exhaustive"].largest

    @property
    def memprobe_total_steps(self) -> int:
        return self.calibration_steps + self.results["memprobe"].steps

    @property
    def memprobe_total_seconds(self) -> float:
        return self.calibration_seconds + self.step_seconds["memprobe"]


def run_case(
    measurements: SessionMeasurements, calibrations: Calibrations, arch: str, patch: Patch, first: bool
) -> Case:
    spec = get_arch(arch)
    base = make_step_config(arch, patch, 1)
    assert patch not in _calibration_patches(arch), f"{patch_text(patch)} is a calibration point"
    calibration = calibrations.get(arch).calibration

    def outcome(batch: int) -> Outcome:
        measured = measurements.measure(base.with_batch(batch))
        return Outcome(measured.fits(BUDGET_BYTES), measured.peak_allocated_bytes)

    def predict(batch: int) -> float:
        return calibration.predict_peak_bytes(spec, base.patch, batch, base.in_channels, base.out_channels)

    results = {
        "exhaustive": exhaustive_search(outcome, upper=MAX_MEASURED_BATCH),
        "doubling": doubling_search(outcome, upper=MAX_MEASURED_BATCH),
        "memprobe": guided_search(outcome, BUDGET_BYTES, predict=predict, upper=MAX_MEASURED_BATCH),
    }
    step_seconds = lambda n: measurements.measure(base.with_batch(n)).step_seconds or 0.0
    seconds = {name: sum(step_seconds(n) for n, _ in result.probes) for name, result in results.items()}
    calibration_seconds = _design_step_seconds(measurements, arch) if first else []
    return Case(
        base,
        results,
        seconds,
        formula_batch(calibration, arch, patch),
        _planned_batch(calibration, arch, patch),
        len(calibration_seconds),
        sum(calibration_seconds),
    )


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
    row["memprobe incl. calibration steps"] = case.memprobe_total_steps
    row["memprobe incl. calibration s"] = f"{case.memprobe_total_seconds:.1f}"
    row["formula alone (0 steps)"] = _yes(case.formula_only, case.exact)
    row["plan (suggest)"] = case.planned
    return row


def _total_row(cases: list[Case]) -> dict[str, Any]:
    row: dict[str, Any] = {"arch": "**total**", "patch": "", "exact largest batch": ""}
    for name in STRATEGIES:
        row[f"{name} steps"] = sum(c.results[name].steps for c in cases)
        row[f"{name} s"] = f"{sum(c.step_seconds[name] for c in cases):.1f}"
        if name != "exhaustive":
            row[f"{name} exact"] = f"{sum(c.results[name].largest == c.exact for c in cases)}/{len(cases)}"
    row["memprobe incl. calibration steps"] = sum(c.memprobe_total_steps for c in cases)
    row["memprobe incl. calibration s"] = f"{sum(c.memprobe_total_seconds for c in cases):.1f}"
    row["formula alone (0 steps)"] = f"{sum(c.formula_only == c.exact for c in cases)}/{len(cases)}"
    row["plan (suggest)"] = ""
    return row


def _record(case: Case) -> dict[str, Any]:
    record: dict[str, Any] = {
        "arch": case.base.arch,
        "patch": patch_text(case.base.patch),
        "budget_bytes": BUDGET_BYTES,
        "exact_largest_batch": case.exact,
        "formula_only_batch": case.formula_only,
        "planned_batch": case.planned,
        "calibration_steps": case.calibration_steps,
        "calibration_step_seconds": round(case.calibration_seconds, 3),
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


def _break_even(cases: list[Case]) -> str:
    """After how many answers calibrating first costs fewer steps than the doubling finder."""
    saved = sum(c.results["doubling"].steps - c.results["memprobe"].steps for c in cases) / len(cases)
    calibration = max(c.calibration_steps for c in cases)
    if saved <= 0:
        return f"memprobe's search saves no steps over doubling here, so its {calibration} calibration steps never pay off"
    return (
        f"calibrating costs {calibration} steps per architecture; each later answer saves {saved:.1f} steps over "
        f"doubling on average, so calibrating pays off after about {calibration / saved:.0f} answers "
        "(with a shipped calibration, from the first)"
    )


def _calibration_seconds_note(measurements: SessionMeasurements) -> str:
    if not measurements.read_from_store:
        return "Calibration seconds: every calibration step was traced in this run."
    return (
        f"Calibration seconds: {len(measurements.read_from_store)} design-point steps were read from "
        "calibration/trace.sqlite, with the seconds `make shipped` measured for them on the same software."
    )


def test_search_cost_table(measurements: SessionMeasurements, calibrations: Calibrations) -> None:
    selected = search_cases(calibrations)
    cases = [
        run_case(measurements, calibrations, arch, patch, first=all(a != arch for a, _ in selected[:i]))
        for i, (arch, patch) in enumerate(selected)
    ]
    notes = (
        f"Largest batch whose traced fp32 training-step peak (allocated) fits {BUDGET_BYTES / GIB:g} GiB; "
        "steps = training steps the strategy ran, s = their measured-step seconds on the trace backend.",
        "exhaustive: 1, 2, 3, ... until a failure (the reference); doubling: Lightning's double-then-bisect "
        "batch-size finder; memprobe: guided_search from the calibrated formula's prediction.",
        "memprobe incl. calibration: the first answer for an architecture also pays for the steps "
        "`memprobe calibrate` runs to fit it (design and held-out points); later answers reuse the fit.",
        f"{_break_even(cases)}.",
        "formula alone: the largest batch whose predicted allocated peak fits the budget, no training step "
        "run. plan (suggest): `plan_batch` at safety 1.0, which also charges reserve, context, workspaces "
        "and margin, so it answers at most the exact batch (asserted).",
        "Patches: neither design points nor held-out points of the calibration. Each configuration is traced "
        "once per run and shared; every strategy is charged for its own probes.",
        _calibration_seconds_note(measurements),
    )
    title = f"Search cost: steps to find the largest batch within {BUDGET_BYTES / GIB:g} GiB"
    rows = [_display(c) for c in cases] + [_total_row(cases)]
    write_results(ResultTable("search_cost", title, rows, [_record(c) for c in cases], notes))
    for case in cases:
        assert case.results["memprobe"].largest == case.exact, case.base.label()
        assert case.results["doubling"].largest == case.exact, case.base.label()
        # What `memprobe suggest` answers (safety 1.0, its most daring) never exceeds the truth.
        assert case.planned <= case.exact, case.base.label()
    assert sum(c.results["memprobe"].steps for c in cases) < sum(c.results["doubling"].steps for c in cases)
