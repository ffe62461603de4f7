"""``suggest --options``: what would make a configuration fit, each from its own calibration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memprobe.alternatives import alternatives
from memprobe.api import estimate
from memprobe.backends.trace_backend import TraceBackend
from memprobe.core.archs.registry import resolve_arch
from memprobe.core.config import make_step_config
from tests.helpers import TINY, invoke

PATCH = (128, 128, 128)
TRACE_BUDGET = 24 * 2**30
VARIANTS = {"fp32": {}, "bf16": {"precision": "bf16-mixed"}, "checkpointing": {"checkpointing": True}}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny network calibrated on trace in fp32, bf16-mixed and fp32 with checkpointing."""
    from memprobe.backends.recorder import MeasurementLog
    from memprobe.calibration_run import calibrate
    from memprobe.store.database import Database

    path = tmp_path_factory.mktemp("options") / "db.sqlite"
    backend = TraceBackend()
    with Database.open(path) as database:
        for changes in VARIANTS.values():
            base = make_step_config(TINY, (32, 32, 32), 1, **changes)  # type: ignore[arg-type]
            calibrate(MeasurementLog(backend, database, TRACE_BUDGET), base, TRACE_BUDGET, search=False)
    return str(path)


def _total_need(db: str, **changes: object) -> int:
    changes = {"precision": "fp32", **changes}  # the calibrations' own precision unless changed
    return estimate(TINY, PATCH, 1, db=db, device="trace", **changes).total_bytes  # type: ignore[arg-type]


def _budget_where_only_fp32_fails(db: str) -> int:
    fp32 = _total_need(db)
    cheaper = max(_total_need(db, precision="bf16-mixed"), _total_need(db, checkpointing=True))
    assert cheaper < fp32, "bf16 and checkpointing must each need less than fp32 here"
    return (cheaper + fp32) // 2


def test_when_fp32_does_not_fit_the_alternatives_that_do_are_listed_and_confirmed(
    calibrated: str, capsys: pytest.CaptureFixture[str]
) -> None:
    budget = _budget_where_only_fp32_fails(calibrated)
    args = (
        "suggest",
        "--arch",
        TINY,
        "--patch",
        *map(str, PATCH),
        "--device",
        "trace",
        "--precision",
        "fp32",
        "--db",
        calibrated,
    )
    result = invoke(capsys, *args, "--gpu-mem", f"{budget}B", "--json")
    assert result.code == 3, result.err
    assert "nothing fits" in result.err and "batch 1" in result.err  # the smallest need, one line
    found = {a["change"]: a for a in json.loads(result.out)["alternatives"]}
    fitting = {change for change, a in found.items() if a["fits"]}
    assert {"bf16-mixed instead of fp32", "activation checkpointing"} <= fitting
    assert not found["fp16-mixed instead of fp32"]["fits"]
    assert "memprobe calibrate" in found["fp16-mixed instead of fp32"]["unavailable"]  # never guessed
    assert "memprobe calibrate" in found["SGD instead of AdamW"]["unavailable"]

    spec = resolve_arch(TINY)
    for change, changes in (
        ("bf16-mixed instead of fp32", VARIANTS["bf16"]),
        ("activation checkpointing", VARIANTS["checkpointing"]),
    ):
        planned = found[change]
        assert planned["need"]["total_bytes"] <= budget
        config = make_step_config(TINY, PATCH, planned["batch"], **changes)  # type: ignore[arg-type]
        measured = TraceBackend().measure(config).peak_allocated_bytes
        assert measured is not None
        calibration = estimate(
            TINY, PATCH, planned["batch"], db=calibrated, device="trace", **{"precision": "fp32", **changes}
        ).calibration  # type: ignore[arg-type]
        predicted = calibration.predict_peak_bytes(spec, PATCH, planned["batch"])
        error = abs(predicted - measured) / measured
        allowed = calibration.quality.heldout_max_relative_error
        assert allowed is not None and error <= allowed, (change, error, allowed)


def test_options_also_list_alternatives_when_the_configuration_fits(
    calibrated: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = (
        "suggest",
        "--arch",
        TINY,
        "--patch",
        *map(str, PATCH),
        "--device",
        "trace",
        "--precision",
        "fp32",
        "--db",
        calibrated,
    )
    result = invoke(capsys, *args, "--gpu-mem", "8GiB", "--options", "--effective-batch", "64")
    assert result.code == 0, result.err
    assert "Alternatives (same patch and budget, one change each)" in result.out
    for change in ("bf16-mixed instead of fp32", "activation checkpointing", "largest patch at batch 2"):
        assert change in result.out
    assert "gradient accumulation to reach batch 64" in result.out


def test_the_library_returns_each_alternative_with_its_plan_or_why_not(calibrated: str) -> None:
    found = {a.change: a for a in alternatives(TINY, PATCH, "8GiB", "fp32", db=calibrated, device="trace")}
    bf16 = found["bf16-mixed instead of fp32"]
    assert bf16.plan is not None and bf16.plan.calibration.precision == "bf16-mixed"
    checkpointed = found["activation checkpointing"].plan
    assert checkpointed is not None and checkpointed.calibration.checkpointing
    assert found["SGD instead of AdamW"].plan is None  # not calibrated: listed, not guessed
    assert found["fp16-mixed instead of fp32"].plan is None
    assert "fp16-mixed" in (found["fp16-mixed instead of fp32"].unavailable or "")


def test_options_need_one_architecture_and_a_patch(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = invoke(capsys, "suggest", "--batch", "2", "--gpu-mem", "24GiB", "--options")
    assert result.code == 2 and "--options plans the batch of one architecture" in result.err
