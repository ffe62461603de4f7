"""Plans are safe by construction: every term of the need fits the budget, and the terms add up."""

from __future__ import annotations

import json

import pytest

from memprobe.core.archs.registry import ARCHS, get_arch, smallest_patch_size
from memprobe.core.errors import NothingFitsError
from memprobe.planning.size_search import plan_batch, plan_patch
from memprobe.store.calibration_sources import shipped_calibrations
from tests.helpers import invoke

GIB = 2**30
BUDGET = 24 * GIB


@pytest.fixture
def shipped(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    monkeypatch.delenv("MEMPROBE_NO_SHIPPED", raising=False)
    calibrations = shipped_calibrations()
    assert calibrations, "memprobe ships calibrations"
    return calibrations  # type: ignore[return-value]


def _check_need(need: object) -> None:
    terms = need.terms()  # type: ignore[attr-defined]
    assert all(size >= 0 for _, size, _ in terms)
    assert sum(size for _, size, _ in terms) == pytest.approx(need.total_bytes)  # type: ignore[attr-defined]
    assert need.reserved_bytes >= need.allocated_bytes  # type: ignore[attr-defined]


def test_no_shipped_plan_needs_more_than_24gib(shipped: list[object]) -> None:
    """Every shipped calibration, several patches: the whole need of each plan is within 24 GiB."""
    planned = 0
    for calibration in shipped:
        spec = get_arch(calibration.arch)  # type: ignore[attr-defined]
        for edge in (64, 96, 128, 160):
            if edge % spec.divisor or edge < smallest_patch_size(spec):
                continue
            try:
                plan = plan_batch(calibration, spec, (edge,) * 3, BUDGET)  # type: ignore[arg-type]
            except NothingFitsError:
                continue
            planned += 1
            assert plan.need.total_bytes <= BUDGET < plan.next_need.total_bytes or plan.batch == 4096
            _check_need(plan.need)
        patch_plan = plan_patch(calibration, spec, 2, BUDGET, median_shape=(128, 256, 256))  # type: ignore[arg-type]
        assert patch_plan.need.total_bytes <= BUDGET
        _check_need(patch_plan.need)
    assert planned >= len(shipped)


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_probe_json_reports_a_simulated_reserve(arch: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`memprobe probe --device trace --json` gives a simulated reserve for every registered network."""
    edge = str(smallest_patch_size(get_arch(arch)))
    result = invoke(
        capsys,
        "probe",
        "--arch",
        arch,
        "--patch",
        edge,
        edge,
        edge,
        "--batch",
        "1",
        "--device",
        "trace",
        "--json",
    )
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["reserved_source"] == "simulated"
    assert (
        data["peak_reserved_bytes"] >= data["simulated_allocated_bytes"] >= data["peak_allocated_bytes"] > 0
    )
