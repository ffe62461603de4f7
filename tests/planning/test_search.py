"""Tests of memprobe.core.bisection as pure functions over a fake out-of-memory threshold.

As in Lightning's batch-size-finder test, a probe "runs out of memory" above a threshold and
every search must return that exact threshold.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from memprobe.core.bisection import (
    Outcome,
    SearchResult,
    doubling_search,
    exhaustive_search,
    guided_search,
    largest_at_most,
    linear_boundary,
)

GIB = 2**30
FIXED_BYTES = (0, 300e6, 2.5 * GIB)
PER_ITEM_BYTES = (4e6, 90e6, 700e6, 3.1 * GIB)
BUDGET_BYTES = (1 * GIB, 11 * GIB, 24 * GIB, 80 * GIB)
CASES = list(itertools.product(FIXED_BYTES, PER_ITEM_BYTES, BUDGET_BYTES))
UPPER = 4096


class ThresholdProbe:
    """Fits iff ``fixed + per * size(n) <= budget``; records every n it is asked about."""

    def __init__(
        self,
        fixed: float,
        per: float,
        budget: float,
        *,
        report_peak: bool = True,
        size_of: Callable[[int], float] = float,
    ) -> None:
        self.fixed, self.per, self.budget = fixed, per, budget
        self.report_peak, self.size_of = report_peak, size_of
        self.calls: list[int] = []

    def peak(self, n: int) -> float:
        return self.fixed + self.per * self.size_of(n)

    def __call__(self, n: int) -> Outcome:
        self.calls.append(n)
        peak = self.peak(n)
        fits = peak <= self.budget
        # Like a real OOM, a failing step reports no peak; a fitting one reports it when measured.
        return Outcome(fits, peak if fits and self.report_peak else None)

    def truth(self, start: int = 1, upper: int = UPPER) -> int:
        largest = 0
        for n in range(start, upper + 1):
            if self.peak(n) > self.budget:
                break
            largest = n
        return largest


def _ids(case: tuple[float, float, float]) -> str:
    fixed, per, budget = case
    return f"fixed{fixed / GIB:.2f}-per{per / GIB:.3f}-budget{budget / GIB:.0f}"


@pytest.mark.parametrize(("fixed", "per", "budget"), CASES, ids=[_ids(c) for c in CASES])
def test_all_searches_find_the_exact_threshold(fixed: float, per: float, budget: float) -> None:
    """Doubling, exhaustive and guided search agree with the true threshold, never probing twice."""
    truth = ThresholdProbe(fixed, per, budget).truth()
    for search in (doubling_search, exhaustive_search, lambda p: guided_search(p, budget)):
        probe = ThresholdProbe(fixed, per, budget)
        result = search(probe)
        assert result.largest == truth
        assert len(probe.calls) == len(set(probe.calls)) == result.steps
        assert [n for n, _ in result.probes] == probe.calls
        assert result.capped == (truth >= UPPER)


def test_guided_search_is_never_costlier_and_usually_cheaper() -> None:
    """On every case guided search needs no more steps than doubling; on most, strictly fewer."""
    cheaper = 0
    for fixed, per, budget in CASES:
        guided = guided_search(ThresholdProbe(fixed, per, budget), budget)
        doubling = doubling_search(ThresholdProbe(fixed, per, budget))
        assert guided.steps <= doubling.steps, (fixed, per, budget, guided.probes, doubling.probes)
        cheaper += guided.steps < doubling.steps
    assert cheaper > len(CASES) // 2


@pytest.mark.parametrize(("fixed", "per", "budget"), CASES, ids=[_ids(c) for c in CASES])
def test_fits_only_probe_still_gets_the_exact_answer(fixed: float, per: float, budget: float) -> None:
    """A probe that reports no peak (CUDA's OOM-or-not) still yields the exact threshold."""
    probe = ThresholdProbe(fixed, per, budget, report_peak=False)
    result = guided_search(probe, budget)
    assert result.largest == probe.truth()
    assert len(probe.calls) == len(set(probe.calls))


@pytest.mark.parametrize("start", [2, 3, 5])
@pytest.mark.parametrize(("fixed", "per", "budget"), CASES[::3])
def test_searches_never_probe_below_start(start: int, fixed: float, per: float, budget: float) -> None:
    """With a smallest size (patch search), nothing below it is probed and the answer is exact."""
    size_of = lambda n: float(n**3)
    for search in (
        lambda p: guided_search(p, budget, size_of=size_of, start=start, upper=64),
        lambda p: doubling_search(p, start=start, upper=64),
    ):
        probe = ThresholdProbe(fixed, per / 500, budget, size_of=size_of)
        result = search(probe)
        assert result.largest == probe.truth(start, 64)
        assert min(probe.calls) >= start and max(probe.calls) <= 64
        assert len(probe.calls) == len(set(probe.calls))


def test_nothing_fits_answers_zero() -> None:
    """When even the smallest size fails, every search answers 0 after one probe."""
    for search in (
        doubling_search,
        exhaustive_search,
        lambda p: guided_search(p, 1e9),
        lambda p: guided_search(p, 1e9, start=4),
        lambda p: doubling_search(p, start=4),
    ):
        probe = ThresholdProbe(2e9, 1e6, 1e9)
        result = search(probe)
        assert result.largest == 0 and not result.capped and len(probe.calls) == 1


def test_capped_when_the_upper_limit_fits() -> None:
    """If the largest allowed size fits, it is the answer and the result says it is capped."""
    for search in (
        lambda p: doubling_search(p, upper=10),
        lambda p: exhaustive_search(p, upper=10),
        lambda p: guided_search(p, 1e12, upper=10),
    ):
        probe = ThresholdProbe(0, 1e6, 1e12)
        result = search(probe)
        assert result.largest == 10 and result.capped and max(probe.calls) == 10


def test_not_capped_just_below_upper() -> None:
    """A boundary just below the upper limit is found exactly and is not capped."""
    probe = ThresholdProbe(0, 1.0, 9.0)
    result = guided_search(probe, 9.0, upper=10)
    assert result.largest == 9 and not result.capped


@pytest.mark.parametrize("factor", [0.5, 0.9, 1.0, 1.1, 2.0])
def test_guided_search_with_a_prediction_is_exact_and_cheap(factor: float) -> None:
    """A calibrated prediction, right or off by a factor, still yields the exact answer."""
    for fixed, per, budget in CASES:
        probe = ThresholdProbe(fixed, per, budget)

        def predict(n: int, probe: ThresholdProbe = probe) -> float:
            return factor * probe.peak(n)

        result = guided_search(probe, budget, predict=predict)
        assert result.largest == probe.truth()
        assert len(probe.calls) == len(set(probe.calls))
        if factor == 1.0:
            assert result.steps <= 2  # an exact prediction lands on the boundary: check it and one past


def test_doubling_probes_powers_of_two_then_bisects() -> None:
    """Doubling search follows Lightning: 1, 2, 4, ... until a failure, then bisection."""
    probe = ThresholdProbe(0, 1.0, 11.0)
    result = doubling_search(probe)
    assert probe.calls[:5] == [1, 2, 4, 8, 16]
    assert result.largest == 11


def test_search_result_counts_steps() -> None:
    """steps is the number of probes made."""
    result = SearchResult(3, ((1, Outcome(True)), (4, Outcome(False))))
    assert result.steps == 2 and not result.capped


def test_linear_boundary() -> None:
    """The line through measured points meets the budget where expected; one point is proportional."""
    assert linear_boundary([], 10.0) is None
    assert linear_boundary([(2.0, 4.0)], 10.0) == pytest.approx(5.0)
    assert linear_boundary([(1.0, 5.0), (2.0, 7.0)], 11.0) == pytest.approx(4.0)
    assert linear_boundary([(1.0, 5.0), (2.0, 5.0)], 11.0) is None  # flat: no boundary to extrapolate
    assert linear_boundary([(1.0, 0.0)], 11.0) is None


def test_largest_at_most() -> None:
    """The largest n in the range whose value stays within the limit; low when none does."""
    assert largest_at_most(lambda n: n * 10.0, 55.0, 1, 100) == 5
    assert largest_at_most(lambda n: n * 10.0, 5.0, 1, 100) == 1
    assert largest_at_most(lambda n: n * 10.0, 1e9, 1, 100) == 100
    assert largest_at_most(lambda n: float(n), 7.0, 7, 7) == 7
