"""Tests of memprobe.planning.size_search: batch and patch plans from a hand-made calibration."""

from __future__ import annotations

import math

import pytest

from memprobe.core.archs.registry import get_arch, smallest_patch_size
from memprobe.core.checks import MAX_BATCH_SIZE as MAX_BATCH
from memprobe.core.errors import InvalidInputError, NothingFitsError
from memprobe.formula.calibration import Calibration, FitQuality
from memprobe.planning.need import memory_need
from memprobe.planning.size_search import initial_patch, is_anisotropic, plan_batch, plan_patch

GIB = 2**30
SPEC = get_arch("mednext")
CALIBRATION = Calibration(
    arch="mednext",
    device="trace",
    precision="fp32",
    optimizer="adamw",
    deep_supervision=False,
    phase_coefficients={
        "forward": {
            "constant": 1e8,
            "parameters": 16.0,
            "feature_maps": 40.0,
            "input_voxels": 4.0,
            "output_voxels": 8.0,
        },
        "backward": {"constant": 1e8, "parameters": 20.0, "feature_maps": 30.0},
    },
    parameter_model={"constant": 5.6e6, "in_channels": 100.0, "out_channels": 100.0, "tokens": 0.0},
    quality=FitQuality(10, 0.01, 0.02),
    fit_range={"batch": [1, 4096], "voxels": [1, 2**30], "in_channels": [1, 8], "out_channels": [1, 8]},
)
PATCHES = [(64, 64, 64), (128, 128, 128), (32, 160, 160), (96, 128, 160)]


def _peak(patch: tuple[int, ...] | list[int], batch: int) -> float:
    return CALIBRATION.predict_peak_bytes(SPEC, patch, batch)


def _total(patch: tuple[int, ...] | list[int], batch: int) -> float:
    """Everything the step needs: allocated, reserve, context, workspaces, margin."""
    return memory_need(CALIBRATION, SPEC, patch, batch).total_bytes


@pytest.mark.parametrize("patch", PATCHES)
def test_plan_batch_is_the_boundary(patch: tuple[int, int, int]) -> None:
    """For many budgets the batch's whole need fits budget*safety and the next batch's does not."""
    for mib in range(4000, 200_000, 1999):
        budget = mib * 2**20
        for safety in (0.9, 0.75, 1.0):
            usable = budget * safety
            if _total(patch, 1) > usable:
                with pytest.raises(NothingFitsError):
                    plan_batch(CALIBRATION, SPEC, patch, budget, safety=safety)
                continue
            plan = plan_batch(CALIBRATION, SPEC, patch, budget, safety=safety)
            assert plan.predicted_peak_bytes == pytest.approx(_peak(patch, plan.batch))
            assert plan.next_batch_peak_bytes == pytest.approx(_peak(patch, plan.batch + 1))
            assert plan.need.total_bytes <= usable < plan.next_need.total_bytes
            assert plan.need.total_bytes == pytest.approx(_total(patch, plan.batch))
            assert plan.usable_bytes == pytest.approx(usable)
            assert plan.utilisation == pytest.approx(plan.need.total_bytes / budget)
            assert plan.accumulate_grad_batches == 1 and plan.effective_batch == plan.batch
            assert not plan.warnings


def test_plan_batch_raises_when_batch_one_does_not_fit() -> None:
    """Nothing fits: a typed error (exit 3) naming what batch 1 needs, never a plan with batch 0."""
    with pytest.raises(NothingFitsError, match="batch 1 of mednext at 128x128x128 needs") as raised:
        plan_batch(CALIBRATION, SPEC, (128, 128, 128), 4 * GIB)
    assert raised.value.exit_code == 3
    assert f"{_total((128, 128, 128), 1) / GIB:.2f} GiB" in str(raised.value)


def test_budget_below_fixed_overheads_is_an_input_error() -> None:
    """A budget the context and workspaces alone use up is refused, naming them."""
    with pytest.raises(InvalidInputError, match=r"24.00 MiB is less than the fixed overheads \(CUDA context"):
        plan_batch(CALIBRATION, SPEC, (64, 64, 64), 24 * 2**20)


@pytest.mark.parametrize("effective", [1, 4, 6, 7, 16, 25])
def test_accumulation_reaches_the_effective_batch(effective: int) -> None:
    """The fewest accumulation steps that reach the effective batch, and never a larger batch than needed."""
    largest = plan_batch(CALIBRATION, SPEC, (128, 128, 128), 24 * GIB).batch
    plan = plan_batch(CALIBRATION, SPEC, (128, 128, 128), 24 * GIB, effective_batch=effective)
    accumulation = plan.accumulate_grad_batches
    assert accumulation == math.ceil(effective / largest)
    assert plan.batch <= min(largest, effective)
    assert plan.effective_batch == plan.batch * accumulation >= effective
    assert (accumulation - 1) * largest < effective and plan.batch * (accumulation - 1) < effective


def test_plan_batch_caps_at_max_batch() -> None:
    """A tiny patch on a huge budget is capped at MAX_BATCH."""
    plan = plan_batch(CALIBRATION, SPEC, (32, 32, 32), 10_000 * GIB)
    assert plan.batch == MAX_BATCH


@pytest.mark.parametrize(("budget", "safety"), [(0, 0.9), (-1, 0.9), (GIB, 0.0), (GIB, 1.5), (GIB, -0.1)])
def test_plan_batch_rejects_bad_budget_or_safety(budget: int, safety: float) -> None:
    """A non-positive budget or a safety outside (0, 1] is an input error."""
    with pytest.raises(InvalidInputError):
        plan_batch(CALIBRATION, SPEC, (128, 128, 128), budget, safety=safety)


@pytest.mark.parametrize("budget_gib", [2, 4, 8, 16, 24, 48, 80])
@pytest.mark.parametrize(
    ("spacing", "median_shape"),
    [
        (None, None),
        ((1, 1, 1), (128, 256, 256)),
        ((5, 0.8, 0.8), (64, 320, 320)),
        ((5, 0.8, 0.8), None),
        ((3, 1, 1), (100, 400, 400)),
        ((1.5, 0.7, 0.7), (90, 250, 300)),
    ],
)
def test_plan_patch_is_valid_and_fits(
    budget_gib: int, spacing: tuple[float, ...] | None, median_shape: tuple[int, ...] | None
) -> None:
    """The patch is divisible, at least the smallest size, within the median shape and the budget."""
    budget = budget_gib * GIB
    if _total((32, 32, 32), 2) > budget:
        pytest.skip("nothing fits this budget: covered by test_plan_patch_when_nothing_fits")
    plan = plan_patch(CALIBRATION, SPEC, 2, budget, spacing=spacing, median_shape=median_shape)
    assert all(size % SPEC.divisor == 0 and size >= smallest_patch_size(SPEC) for size in plan.patch)
    if median_shape:
        assert all(size <= shape for size, shape in zip(plan.patch, median_shape, strict=True))
    assert plan.predicted_peak_bytes == pytest.approx(_peak(plan.patch, 2))
    assert plan.need.total_bytes == pytest.approx(_total(plan.patch, 2)) and plan.need.total_bytes <= budget
    assert plan.reasons[0].startswith("start:") and plan.reasons[-1].startswith("largest within")
    assert plan.batch == 2 and plan.utilisation == pytest.approx(plan.need.total_bytes / budget)


@pytest.mark.parametrize("budget_gib", [4, 8, 16, 24])
@pytest.mark.parametrize("median_shape", [None, (120, 400, 400)])
def test_anisotropic_spacing_gives_a_thinner_first_axis(
    budget_gib: int, median_shape: tuple[int, ...] | None
) -> None:
    """Thick slices (5 mm against 0.8 mm) get fewer through-plane voxels than in-plane ones."""
    plan = plan_patch(
        CALIBRATION, SPEC, 2, budget_gib * GIB, spacing=(5, 0.8, 0.8), median_shape=median_shape
    )
    assert plan.patch[0] < plan.patch[1] and plan.patch[0] < plan.patch[2]


def test_isotropic_start_is_cubic_in_millimetres() -> None:
    """The start patch has 256^3 voxels' volume and equal extent in mm on every axis."""
    sizes = initial_patch(SPEC, (5, 0.8, 0.8), None)
    assert math.prod(sizes) == pytest.approx(256**3)
    assert sizes[0] * 5 == pytest.approx(sizes[1] * 0.8) == pytest.approx(sizes[2] * 0.8)
    assert initial_patch(SPEC, None, (64, 100, 500)) == pytest.approx([64, 100, 256])


def test_plan_patch_uses_the_budget() -> None:
    """Growing one axis by a divisor would break the budget or the median shape (no slack left)."""
    budget = 16 * GIB
    plan = plan_patch(CALIBRATION, SPEC, 2, budget, median_shape=(256, 256, 256))
    for axis in range(3):
        grown = list(plan.patch)
        grown[axis] += SPEC.divisor
        assert grown[axis] > 256 or _total(grown, 2) > budget


def test_plan_patch_small_median_shape_is_the_patch() -> None:
    """When the whole median image fits, the patch is the median shape rounded to the divisor."""
    plan = plan_patch(CALIBRATION, SPEC, 2, 80 * GIB, median_shape=(70, 130, 200))
    assert plan.patch == (64, 128, 192)


def test_plan_patch_when_nothing_fits() -> None:
    """If even the smallest patch is over budget, a typed error gives its need."""
    with pytest.raises(NothingFitsError, match="even 32x32x32 at batch 40 needs"):
        plan_patch(CALIBRATION, SPEC, 40, 2 * GIB)


def test_plan_patch_without_median_shape_stays_within_its_start() -> None:
    """Without a median shape the patch never grows past the 256^3 start it names (not 240: 255.999...)."""
    plan = plan_patch(CALIBRATION, SPEC, 1, 10_000 * GIB)
    assert plan.patch == (256, 256, 256)
    assert "start: 256x256x256" in plan.reasons[0]


@pytest.mark.parametrize(
    ("spacing", "median_shape"),
    [
        ((1, 1), None),
        ((1, 0, 1), None),
        ((1, -1, 1), None),
        (None, (64, 64)),
        (None, (64, 0, 64)),
    ],
)
def test_plan_patch_rejects_bad_geometry(
    spacing: tuple[float, ...] | None, median_shape: tuple[int, ...] | None
) -> None:
    """Spacing and median shape need three positive values."""
    with pytest.raises(InvalidInputError):
        plan_patch(CALIBRATION, SPEC, 2, 24 * GIB, spacing=spacing, median_shape=median_shape)


def test_is_anisotropic() -> None:
    """Spacing counts as anisotropic beyond a ratio of 3."""
    assert is_anisotropic((5, 0.8, 0.8)) and not is_anisotropic((1, 1, 1)) and not is_anisotropic(None)
    assert not is_anisotropic((3, 1, 1))
