"""Find the largest size that fits, as pure functions over a probe ``n -> Outcome``.

Batch and patch searches share these: the caller maps ``n`` to a batch size or a patch
multiple and decides what "fits" means (a real OOM on CUDA, the measured peak against the
budget on trace). Sizes are assumed monotone: if ``n`` does not fit, nothing larger does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Outcome:
    """What one probe showed: whether ``n`` fits, and its peak when it was measured."""

    fits: bool
    peak_bytes: float | None = None


Probe = Callable[[int], Outcome]


@dataclass(frozen=True)
class SearchResult:
    """The largest fitting ``n`` (0 when even the smallest does not fit) and every probe made."""

    largest: int
    probes: tuple[tuple[int, Outcome], ...] = field(default=())
    capped: bool = False  # the largest size allowed fits: the true boundary may lie beyond

    @property
    def steps(self) -> int:
        """How many training steps the search ran (each probe is one)."""
        return len(self.probes)


class _Recorder:
    """Memoise probes so no size is ever measured twice within one search."""

    def __init__(self, probe: Probe, floor: int = 0) -> None:
        self._probe = probe
        self.floor = floor  # the answer when nothing fits: sizes at or below it are never probed
        self.seen: dict[int, Outcome] = {}
        self.order: list[tuple[int, Outcome]] = []

    def __call__(self, n: int) -> Outcome:
        if n not in self.seen:
            self.seen[n] = outcome = self._probe(n)
            self.order.append((n, outcome))
        return self.seen[n]

    def bounds(self, upper: int) -> tuple[int, int]:
        """Largest known fit (0 if none) and smallest known failure (upper + 1 if none)."""
        fitting = [n for n, o in self.seen.items() if o.fits]
        failing = [n for n, o in self.seen.items() if not o.fits]
        return max(fitting, default=self.floor), min(failing, default=upper + 1)

    def result(self, upper: int) -> SearchResult:
        largest, _ = self.bounds(upper)
        largest = 0 if largest == self.floor and not self.seen.get(largest, Outcome(False)).fits else largest
        return SearchResult(largest, tuple(self.order), capped=largest >= upper)


def doubling_search(probe: Probe, *, start: int = 1, upper: int = 4096) -> SearchResult:
    """Lightning's batch-size scaling: double until a failure, then bisect the gap."""
    record = _Recorder(probe, floor=start - 1)
    n = start
    while n <= upper and record(n).fits:
        if n == upper:
            return record.result(upper)
        n = min(n * 2, upper)
    low, high = record.bounds(upper)
    while high - low > 1:
        middle = (low + high) // 2
        record(middle)
        low, high = record.bounds(upper)
    return record.result(upper)


def exhaustive_search(probe: Probe, *, upper: int = 4096) -> SearchResult:
    """Probe 1, 2, 3, ... until the first failure: the reference answer, at the highest cost."""
    record = _Recorder(probe)
    n = 1
    while n <= upper and record(n).fits:
        n += 1
    return record.result(upper)


def linear_boundary(points: list[tuple[float, float]], budget_bytes: float) -> float | None:
    """Where a straight line through measured ``(size, peak)`` points reaches the budget.

    With one point the peak is taken as proportional to size, which underestimates the
    boundary when part of the memory is fixed: a safe first guess.
    """
    if not points:
        return None
    if len(points) == 1 or len({x for x, _ in points}) == 1:
        x, y = points[-1]
        return x * budget_bytes / y if y > 0 else None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var_x = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var_x
    if slope <= 0:
        return None
    return mean_x + (budget_bytes - mean_y) / slope


def guided_search(
    probe: Probe,
    budget_bytes: float,
    *,
    size_of: Callable[[int], float] = float,
    predict: Callable[[int], float] | None = None,
    start: int = 1,
    upper: int = 4096,
) -> SearchResult:
    """Predict the boundary from what is measured, probe there and one step past it.

    Memory grows linearly in the batch size and in the patch volume, so after two measured
    points a line through them lands on or next to the boundary. ``size_of(n)`` maps ``n`` to
    the quantity memory is linear in (the batch itself, or the patch's voxel count);
    ``predict(n)``, when given (a calibrated formula), supplies the first guess instead of a
    probe at ``start``.
    """
    record = _Recorder(probe, floor=start - 1)
    guess = _largest_predicted(predict, budget_bytes, start, upper) if predict is not None else start
    while True:
        low, high = record.bounds(upper)
        if high - low <= 1 or low >= upper:
            return record.result(upper)
        guess = min(max(guess, low + 1), high - 1)
        outcome = record(guess)
        if outcome.fits and guess + 1 < high:
            record(guess + 1)
        elif not outcome.fits and guess - 1 > low:
            record(guess - 1)
        guess = _next_guess(record, budget_bytes, size_of, upper)


def _next_guess(record: _Recorder, budget_bytes: float, size_of: Callable[[int], float], upper: int) -> int:
    low, high = record.bounds(upper)
    points = [
        (size_of(n), o.peak_bytes) for n, o in record.seen.items() if o.fits and o.peak_bytes is not None
    ]
    boundary = linear_boundary(points, budget_bytes)  # type: ignore[arg-type]
    if boundary is None:  # nothing to extrapolate from: bisect a known gap, or double
        return (low + high) // 2 if high <= upper else max(2 * low, 1)
    return largest_at_most(size_of, boundary, low + 1, min(high - 1, upper))


def largest_at_most(value_of: Callable[[int], float], limit: float, low: int, high: int) -> int:
    """The largest n in [low, high] with ``value_of(n) <= limit`` (``low`` if none), for increasing ``value_of``."""
    if value_of(low) > limit:
        return low
    while low < high:
        middle = (low + high + 1) // 2
        if value_of(middle) <= limit:
            low = middle
        else:
            high = middle - 1
    return low


def _largest_predicted(predict: Callable[[int], float], budget_bytes: float, start: int, upper: int) -> int:
    return largest_at_most(predict, budget_bytes, start, upper)
