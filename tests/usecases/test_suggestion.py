"""Tests of memprobe.suggest: what `memprobe suggest` answers, as one library call, without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest

import memprobe
from memprobe.alternatives import alternatives
from memprobe.core.errors import InvalidInputError, NoCalibrationError, NothingFitsError
from memprobe.suggestion import Suggestion, suggest
from tests.helpers import make_calibration, write_calibrations

GIB = 2**30
PATCH = (128, 128, 128)


@pytest.fixture
def archs_db(db_path: Path) -> Path:
    """bf16-mixed trace calibrations of MedNeXt, UNet and DynUNet; MedNeXt also fp32, with deep
    supervision, and as one rank of four with DDP."""
    bf16 = "bf16-mixed"
    return write_calibrations(
        db_path,
        make_calibration(),
        make_calibration(precision=bf16),
        make_calibration("unet", precision=bf16),
        make_calibration("dynunet", precision=bf16),
        replace(make_calibration(precision=bf16), deep_supervision=True),
        replace(make_calibration(precision=bf16), strategy="ddp", world_size=4),
    )


def test_batch_plan_of_one_architecture_is_max_batch_size(archs_db: Path) -> None:
    """Given a patch: one batch plan, the one max_batch_size gives, and no alternatives unasked."""
    found = suggest("mednext", "24GiB", "fp32", patch=PATCH, db=archs_db, effective_batch=8)
    expected = memprobe.max_batch_size("mednext", PATCH, "24GiB", "fp32", db=archs_db, effective_batch=8)
    assert found.fits and found.nothing_fits is None and found.alternatives is None
    assert found.batch_plans == (expected,) and found.patch_plans == () and found.plans == (expected,)
    assert found.archs == ("mednext",) and found.precision == "fp32" and found.budget_bytes == 24 * GIB
    assert found.notes == ("precision fp32 (given)",)
    assert f"mednext batch {expected.batch}" in repr(found)
    with pytest.raises(FrozenInstanceError):
        found.precision = "bf16-mixed"  # type: ignore[misc]


def test_patch_plan_of_one_architecture_is_max_patch_size(archs_db: Path) -> None:
    """Given a batch: the largest patch, shaped by the spacing and capped by the median shape."""
    geometry = {"spacing": (5.0, 0.8, 0.8), "median_shape": (64, 320, 320)}
    found = suggest("mednext", 24 * GIB, batch=2, db=archs_db, **geometry)  # type: ignore[arg-type]
    expected = memprobe.max_patch_size("mednext", 2, 24 * GIB, db=archs_db, **geometry)  # type: ignore[arg-type]
    assert found.patch_plans == (expected,) and found.batch_plans == () and found.plans == (expected,)
    assert found.precision == "bf16-mixed"  # the default with no GPU in view
    assert found.notes[0].startswith("precision bf16-mixed (the default; no GPU detected")


def test_options_adds_the_alternatives(archs_db: Path) -> None:
    """options=True lists what else would fit, exactly as memprobe.alternatives does."""
    found = suggest("mednext", "24GiB", "fp32", patch=PATCH, db=archs_db, options=True)
    assert found.fits and len(found.batch_plans) == 1
    assert found.alternatives == tuple(alternatives("mednext", PATCH, 24 * GIB, "fp32", db=archs_db))


def test_nothing_fits_gives_the_alternatives_and_the_error(archs_db: Path) -> None:
    """When batch 1 does not fit one architecture: no plan, the alternatives, and the error (exit 3)."""
    found = suggest("mednext", "3GiB", "fp32", patch=(256, 256, 256), db=archs_db)
    assert not found.fits and found.batch_plans == ()
    assert isinstance(found.nothing_fits, NothingFitsError)
    assert "nothing fits" in str(found.nothing_fits) and "batch 1" in str(found.nothing_fits)
    assert found.alternatives is not None and found.alternatives
    assert {a.change for a in found.alternatives} >= {
        "bf16-mixed instead of fp32",
        "activation checkpointing",
    }
    assert "nothing fits" in repr(found)


def test_all_archs_plans_every_architecture_calibrated_at_the_precision(archs_db: Path) -> None:
    """all_archs: the registered architectures with a calibration at this precision, in registry order."""
    found = suggest(None, "24GiB", "bf16-mixed", patch=PATCH, all_archs=True, db=archs_db)
    assert found.archs == ("mednext", "unet", "dynunet")
    assert [p.arch for p in found.batch_plans] == list(found.archs)
    assert found.skipped == () and found.alternatives is None
    fp32 = suggest("unet", "24GiB", "fp32", batch=2, all_archs=True, db=archs_db)  # arch is ignored
    assert fp32.archs == ("mednext",) and [p.arch for p in fp32.patch_plans] == ["mednext"]


def test_all_archs_follows_the_data_parallel_layout(archs_db: Path) -> None:
    """With world_size=4 only calibrations of one rank of four answer; the plan is per rank."""
    found = suggest(None, "40GiB", "bf16-mixed", patch=PATCH, all_archs=True, db=archs_db, world_size=4)
    assert found.archs == ("mednext",)
    assert found.batch_plans[0].calibration.world_size == 4
    assert found.batch_plans[0].calibration.strategy == "ddp"


def test_all_archs_with_deep_supervision_skips_networks_without_it(archs_db: Path) -> None:
    """Networks without deep-supervision heads are skipped, said at once through on_skip and in notes."""
    said: list[str] = []
    plan_all = lambda: suggest(
        None, "24GiB", "bf16-mixed", patch=PATCH, all_archs=True, deep_supervision=True, db=archs_db,
        on_skip=said.append,
    )  # fmt: skip
    with pytest.raises(NoCalibrationError, match="dynunet"):  # dynunet has heads but no such calibration
        plan_all()
    assert said == ["skipped unet: no deep supervision"]  # told before the failure
    write_calibrations(
        archs_db, replace(make_calibration("dynunet", precision="bf16-mixed"), deep_supervision=True)
    )
    said.clear()
    found = plan_all()
    assert found.archs == ("mednext", "dynunet") and found.skipped == ("unet",)
    assert said == ["skipped unet: no deep supervision"] and found.notes[-1] == said[0]
    assert all(p.calibration.deep_supervision for p in found.batch_plans)


def test_all_archs_raises_when_nothing_fits(archs_db: Path) -> None:
    """With several architectures there are no alternatives: nothing fitting is an error (exit 3)."""
    with pytest.raises(NothingFitsError, match="nothing fits"):
        suggest(None, "3GiB", "bf16-mixed", patch=(256, 256, 256), all_archs=True, db=archs_db)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "give --patch D H W (to plan the batch) or --batch N"),
        ({"patch": PATCH, "batch": 2}, "not both"),
        ({"patch": PATCH, "options": True, "all_archs": True}, "drop --all-archs"),
        ({"batch": 2, "options": True}, "give --patch D H W, not --batch"),
        ({"patch": PATCH, "all_archs": "yes"}, "all_archs must be True or False"),
        ({"patch": PATCH, "arch": None}, "give an architecture"),
        ({"patch": PATCH, "gpu_mem": "lots"}, "cannot read memory size"),
        ({"patch": PATCH, "precision": "fp8"}, "precision"),
    ],
)
def test_bad_input_is_refused_in_one_line(archs_db: Path, arguments: dict[str, object], message: str) -> None:
    given: dict[str, object] = {"arch": "mednext", "gpu_mem": "24GiB", "db": archs_db, **arguments}
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        suggest(**given)  # type: ignore[arg-type]


def test_exported_lazily_from_memprobe() -> None:
    assert memprobe.suggest is suggest and memprobe.Suggestion is Suggestion
    assert memprobe.suggest.__doc__ and "suggest" in memprobe.__all__ and "Suggestion" in memprobe.__all__


_CHILD = """
import json, sys
import memprobe
found = memprobe.suggest("mednext", "24GiB", patch=(128, 128, 128), db=sys.argv[1], options=True)
heavy = sorted(name for name in ("torch", "monai", "numpy", "scipy", "pandas") if name in sys.modules)
print(json.dumps({"batch": found.batch_plans[0].batch, "heavy": heavy}))
"""


def test_suggest_never_imports_torch(archs_db: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, str(archs_db)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["heavy"] == [] and result["batch"] >= 1


def test_a_setup_answers_as_its_fields_would(archs_db: Path) -> None:
    """A Setup stands for the architecture and its fields, as it does for max_batch_size; given ones win."""
    from memprobe.core.config import Setup

    setup = Setup.of("mednext", precision="bf16-mixed", deep_supervision=True)
    found = suggest(setup, "24GiB", patch=PATCH, db=archs_db)
    expected = memprobe.max_batch_size(
        "mednext", PATCH, "24GiB", "bf16-mixed", deep_supervision=True, db=archs_db
    )
    assert found.batch_plans == (expected,) and found.precision == "bf16-mixed"
    fp32 = suggest(setup, "24GiB", "fp32", patch=PATCH, db=archs_db, deep_supervision=False)
    assert fp32.batch_plans == (memprobe.max_batch_size("mednext", PATCH, "24GiB", "fp32", db=archs_db),)
