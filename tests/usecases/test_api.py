"""Tests of memprobe.api: estimates from stored calibrations, without importing torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

import memprobe
from memprobe.core.archs.registry import resolve_arch
from memprobe.core.errors import InvalidInputError, NoCalibrationError, NothingFitsError
from memprobe.planning.size_search import plan_batch, plan_patch
from tests.helpers import make_calibration, write_calibrations

GIB = 2**30
GPU_NAME = "NVIDIA A100-SXM4-80GB"


@pytest.fixture
def mednext_db(db_path: Path) -> Path:
    """Trace calibrations of MedNeXt at fp32 and at the default precision (no GPU in view: bf16-mixed)."""
    return write_calibrations(db_path, make_calibration(), make_calibration(precision="bf16-mixed"))


_CHILD = """
import json, sys
import memprobe
db = sys.argv[1]
estimate = memprobe.estimate("mednext", (128, 128, 128), 2, db=db)
batch = memprobe.max_batch_size("mednext", (128, 128, 128), "24GiB", db=db)
patch = memprobe.max_patch_size("mednext", 2, "24GiB", spacing=(5, 0.8, 0.8), db=db)
heavy = sorted(name for name in ("torch", "monai", "numpy", "scipy", "pandas") if name in sys.modules)
print(json.dumps({"peak": estimate.peak_allocated_bytes, "batch": batch.batch, "patch": list(patch.patch),
                  "heavy": heavy}))
"""


@pytest.mark.parametrize("detect_gpu", [False, True])
def test_estimates_never_import_torch(mednext_db: Path, detect_gpu: bool) -> None:
    """import memprobe and the three estimates leave torch, MONAI and numpy unimported."""
    environment = dict(os.environ)
    if detect_gpu:  # the default device path also asks NVML for the GPU: still no torch
        environment.pop("MEMPROBE_NO_GPU_DETECT", None)
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, str(mednext_db)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["heavy"] == []
    spec = resolve_arch("mednext")
    assert result["peak"] == pytest.approx(make_calibration().predict_peak_bytes(spec, (128, 128, 128), 2))
    assert result["batch"] == plan_batch(make_calibration(), spec, (128, 128, 128), 24 * GIB).batch
    assert result["patch"] == list(
        plan_patch(make_calibration(), spec, 2, 24 * GIB, spacing=(5, 0.8, 0.8)).patch
    )


def test_estimate(mednext_db: Path) -> None:
    """estimate returns the calibration's prediction for the validated configuration."""
    result = memprobe.estimate("MedNeXt-S", ("128", 128, 128), 2, db=mednext_db)  # type: ignore[arg-type]
    expected = make_calibration().predict_peak_bytes(resolve_arch("mednext"), (128, 128, 128), 2)
    assert result.arch == "mednext" and result.patch == (128, 128, 128) and result.batch == 2
    assert result.precision == "bf16-mixed" and result.warning is None  # the default with no GPU in view
    assert result.peak_allocated_bytes == pytest.approx(expected)
    assert result.peak_gib == pytest.approx(expected / GIB)
    assert result.calibration.device == "trace" and result.calibration.source == str(mednext_db)


def test_estimate_uses_the_validated_channels(mednext_db: Path) -> None:
    """Channels given as text are read as numbers, as everywhere else, not repeated as strings."""
    text: Any = {"in_channels": "4", "out_channels": "3"}
    as_text = memprobe.estimate("mednext", (64, 64, 64), 1, db=mednext_db, **text)
    as_int = memprobe.estimate("mednext", (64, 64, 64), 1, in_channels=4, out_channels=3, db=mednext_db)
    assert as_text.peak_allocated_bytes == pytest.approx(as_int.peak_allocated_bytes)
    assert (
        as_int.peak_allocated_bytes
        > memprobe.estimate("mednext", (64, 64, 64), 1, db=mednext_db).peak_allocated_bytes
    )


def test_estimate_grows_with_batch_and_patch(mednext_db: Path) -> None:
    """More samples or more voxels predict more memory."""
    small = memprobe.estimate("mednext", (64, 64, 64), 1, db=mednext_db).peak_allocated_bytes
    assert memprobe.estimate("mednext", (64, 64, 64), 2, db=mednext_db).peak_allocated_bytes > small
    assert memprobe.estimate("mednext", (96, 96, 96), 1, db=mednext_db).peak_allocated_bytes > small


def test_max_batch_size(mednext_db: Path) -> None:
    """max_batch_size gives the planner's consistent answer for a memory size written as text."""
    plan = memprobe.max_batch_size("mednext", (128, 128, 128), "24GiB", db=mednext_db)
    assert plan.budget_bytes == 24 * GIB and plan.batch >= 1
    assert plan.need.total_bytes <= 24 * GIB < plan.next_need.total_bytes
    assert plan.predicted_peak_bytes < plan.need.total_bytes
    assert memprobe.max_batch_size("mednext", (128, 128, 128), 24 * GIB, db=mednext_db).batch == plan.batch
    assert memprobe.max_batch_size("mednext", (128, 128, 128), "80GiB", db=mednext_db).batch > plan.batch
    with pytest.raises(NothingFitsError):
        memprobe.max_batch_size("mednext", (128, 128, 128), "4GiB", db=mednext_db)
    with pytest.raises(InvalidInputError, match="fixed overheads"):
        memprobe.max_batch_size("mednext", (128, 128, 128), "1GiB", db=mednext_db)


def test_max_patch_size(mednext_db: Path) -> None:
    """max_patch_size returns a divisible patch within budget and median shape."""
    plan = memprobe.max_patch_size(
        "mednext", 2, "24GiB", spacing=(1, 1, 1), median_shape=(128, 256, 256), db=mednext_db
    )
    assert all(size % 16 == 0 for size in plan.patch)
    assert all(size <= limit for size, limit in zip(plan.patch, (128, 256, 256), strict=True))
    assert plan.need.total_bytes <= 24 * GIB and plan.batch == 2


def test_missing_calibration_names_the_command(mednext_db: Path) -> None:
    """Without a matching calibration the error says exactly what to run."""
    with pytest.raises(NoCalibrationError) as caught:
        memprobe.estimate("basicunet", (128, 128, 128), 2, db=mednext_db)
    assert (
        "memprobe calibrate --arch basicunet --precision bf16-mixed --optimizer adamw --device trace"
        in str(caught.value)
    )
    with pytest.raises(NoCalibrationError, match="--precision fp16-mixed"):
        memprobe.max_batch_size("mednext", (128, 128, 128), "24GiB", "fp16-mixed", db=mednext_db)
    with pytest.raises(NoCalibrationError, match="--device cuda"):
        memprobe.estimate(
            "mednext", (128, 128, 128), 2, precision="fp16-mixed", db=mednext_db, device=GPU_NAME
        )


def test_gpu_without_its_calibration_falls_back_with_a_warning(mednext_db: Path) -> None:
    """A GPU with only a trace calibration is answered from trace, with a warning naming the GPU."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = memprobe.estimate("mednext", (128, 128, 128), 2, db=mednext_db, device=GPU_NAME)
        plan = memprobe.max_batch_size("mednext", (128, 128, 128), "24GiB", db=mednext_db, device=GPU_NAME)
        patch = memprobe.max_patch_size("mednext", 2, "24GiB", db=mednext_db, device=GPU_NAME)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3 and all(GPU_NAME in m and "trace calibration" in m for m in messages)
    assert all(w.filename == __file__ for w in caught)  # the warning points at the caller's line
    assert result.warning == messages[0] and result.calibration.device == "trace"
    assert plan.warnings[0] == messages[1] and patch.warnings[0] == messages[2]


def test_gpu_calibration_is_preferred_over_trace(db_path: Path) -> None:
    """When the GPU has its own calibration it is used, silently."""
    write_calibrations(db_path, make_calibration(), make_calibration(device=GPU_NAME, per_voxel=80.0))
    # An A100 runs bf16: the default precision there; these calibrations are fp32, so ask for it.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        on_gpu = memprobe.estimate("mednext", (128, 128, 128), 2, "fp32", db=db_path, device=GPU_NAME)
        on_trace = memprobe.estimate("mednext", (128, 128, 128), 2, "fp32", db=db_path, device="trace")
    assert on_gpu.calibration.device == GPU_NAME and on_gpu.warning is None
    assert on_gpu.peak_allocated_bytes > on_trace.peak_allocated_bytes


def test_default_db_comes_from_the_environment(
    mednext_db: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no db argument, $MEMPROBE_DB is read, and a change of it is noticed."""
    monkeypatch.setenv("MEMPROBE_DB", str(tmp_path / "missing.sqlite"))
    monkeypatch.setattr("memprobe.store.calibration_sources.shipped_calibrations", lambda: [])
    with pytest.raises(NoCalibrationError):
        memprobe.estimate("mednext", (128, 128, 128), 2)
    monkeypatch.setenv("MEMPROBE_DB", str(mednext_db))
    assert memprobe.estimate("mednext", (128, 128, 128), 2).calibration.source == str(mednext_db)


def test_new_calibration_is_seen_without_restarting(db_path: Path) -> None:
    """A calibration added to the database after a first estimate answers the next one."""
    write_calibrations(db_path, make_calibration(precision="bf16-mixed"))
    with pytest.raises(NoCalibrationError):
        memprobe.estimate("basicunet", (128, 128, 128), 2, db=db_path)
    write_calibrations(db_path, make_calibration(arch="basicunet", precision="bf16-mixed"))
    assert memprobe.estimate("basicunet", (128, 128, 128), 2, db=db_path).arch == "basicunet"


def test_custom_model_calibration_answers_estimates(db_path: Path) -> None:
    """A calibration of a package.module:factory model is used for that model's estimates."""
    write_calibrations(db_path, make_calibration(arch="tests.tiny_models:tiny_net", precision="bf16-mixed"))
    result = memprobe.estimate("tests.tiny_models:tiny_net", (64, 64, 64), 2, db=db_path)
    assert result.arch == "tests.tiny_models:tiny_net" and result.peak_allocated_bytes > 0
    plan = memprobe.max_batch_size("tests.tiny_models:tiny_net", (64, 64, 64), "8GiB", db=db_path)
    assert plan.batch >= 1
    assert all(
        size >= 1
        for size in memprobe.max_patch_size("tests.tiny_models:tiny_net", 1, "8GiB", db=db_path).patch
    )


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda db: memprobe.estimate("mednext", (100, 128, 128), 2, db=db), "divisible by 16"),
        (lambda db: memprobe.estimate("mednext", (128, 128, 128), 0, db=db), "batch size"),
        (
            lambda db: memprobe.max_batch_size("mednext", (128, 128, 128), "abc", db=db),
            "cannot read memory size",
        ),
        (
            lambda db: memprobe.max_batch_size("mednext", (128, 128, 128), "24GiB", safety=1.5, db=db),
            "safety",
        ),
        (lambda db: memprobe.max_patch_size("mednext", 2, "24GiB", spacing=(1, 1), db=db), "spacing"),
        (lambda db: memprobe.estimate("nonet", (128, 128, 128), 2, db=db), "unknown architecture"),
    ],
)
def test_bad_input_is_an_input_error(mednext_db: Path, call: object, fragment: str) -> None:
    """Invalid arguments raise one-line InvalidInputErrors before any calibration is used."""
    with pytest.raises(InvalidInputError, match=fragment):
        call(mednext_db)  # type: ignore[operator]


@pytest.mark.slow
def test_calibrate_a_custom_model_then_estimate(db_path: Path) -> None:
    """A package.module:factory model calibrates on trace, and its estimates match a probe."""
    tiny = "tests.tiny_models:tiny_net"
    report = memprobe.calibrate(tiny, device="trace", gpu_mem="2GiB", db=db_path)  # 1.5 GiB of it overheads
    assert report.calibration.arch == tiny and report.calibration.device == "trace"
    assert report.searches and all(search.result.largest >= 1 for search in report.searches)
    estimate = memprobe.estimate(tiny, (48, 48, 48), 2, db=db_path)
    assert estimate.calibration.source == str(db_path)
    measured = memprobe.probe(tiny, (48, 48, 48), 2, device="trace")
    assert estimate.peak_allocated_bytes == pytest.approx(measured.peak_allocated_bytes, rel=0.05)


def test_the_package_exports_results_and_errors_without_importing_torch() -> None:
    """Result types and error classes are importable from memprobe; none of it needs torch."""
    code = (
        "import sys, memprobe\n"
        "from memprobe import BatchPlan, PatchPlan, Measurement, CalibrationReport, MemoryNeed\n"
        "from memprobe import MemprobeError, InvalidInputError, NothingFitsError, NoCalibrationError\n"
        "assert issubclass(NothingFitsError, MemprobeError) and NothingFitsError.exit_code == 3\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr


def test_results_are_exported_with_one_line_reprs(mednext_db: Path) -> None:
    """Result types and errors come from the top level; each result reads in one short line."""
    from memprobe.core.config import StepConfig
    from memprobe.core.measurement import Environment

    for name in ("BatchPlan", "PatchPlan", "Measurement", "CalibrationReport", "Calibration", "Estimate"):
        assert isinstance(getattr(memprobe, name), type)
    for name in ("MemprobeError", "InvalidInputError", "NothingFitsError", "StandInCalibrationWarning"):
        assert issubclass(getattr(memprobe, name), Exception)
    estimate = memprobe.estimate("mednext", (128, 128, 128), 2, db=mednext_db)
    assert type(estimate.peak_allocated_bytes) is int
    batch = memprobe.max_batch_size("mednext", (128, 128, 128), "24GiB", db=mednext_db)
    patch = memprobe.max_patch_size("mednext", 2, "24GiB", db=mednext_db)
    measured = memprobe.Measurement(
        StepConfig(arch="mednext", patch=(64, 64, 64), batch=1), Environment("trace", "trace"), 2**30
    )
    for result in (estimate, batch, patch, batch.need, batch.calibration, measured):
        text = repr(result)
        assert "\n" not in text and len(text) < 200, text
    assert repr(batch).startswith(f"BatchPlan(mednext 128x128x128: batch {batch.batch}")
    assert batch.calibration.phase_coefficients  # the tables stay reachable as attributes


def test_the_pytorch_connectomics_drop_ins_live_in_compat() -> None:
    import memprobe.integrations.pytc.compat

    assert (
        memprobe.estimate_gpu_memory_required
        is memprobe.integrations.pytc.compat.estimate_gpu_memory_required
    )
    assert memprobe.suggest_batch_size is memprobe.integrations.pytc.compat.suggest_batch_size


def test_the_api_builds_every_step_configuration_from_a_checked_setup() -> None:
    """Every configuration comes from ``Setup.of(...).at(...)``: checked once, the same way."""
    import inspect

    import memprobe.api

    source = inspect.getsource(memprobe.api)
    assert "make_step_config(" not in source and "StepConfig(" not in source
    assert "Setup.of(" in source


def test_renamed_arguments_keep_working_and_say_their_new_name(mednext_db: Path) -> None:
    """``budget=`` became ``gpu_mem=``: old scripts run, warned; giving both is refused."""
    with (
        pytest.warns(DeprecationWarning, match="budget= is deprecated: use gpu_mem="),
        pytest.raises(InvalidInputError, match="cannot read memory size"),
    ):
        memprobe.probe("mednext", (64, 64, 64), 1, device="trace", budget="24XB")
    with pytest.warns(DeprecationWarning), pytest.raises(InvalidInputError, match="give only gpu_mem"):
        memprobe.probe("mednext", (64, 64, 64), 1, device="trace", budget="1GiB", gpu_mem="1GiB")


def test_one_default_precision_everywhere(tmp_path: Path) -> None:
    """A calibration made with the defaults is the one the plans read with the defaults."""
    from memprobe.core.config import Setup

    db = write_calibrations(
        tmp_path / "db.sqlite", make_calibration(precision=Setup.of("mednext").precision.value)
    )
    assert memprobe.estimate("mednext", (64, 64, 64), 1, db=db).calibration.precision == "bf16-mixed"
    assert (
        memprobe.max_batch_size("mednext", (64, 64, 64), "24GiB", db=db).calibration.precision == "bf16-mixed"
    )
