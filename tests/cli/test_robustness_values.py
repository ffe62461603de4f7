"""Values that parse but mean nothing (#15): exit 2 in one line from the CLI, typed errors from the API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import memprobe
from memprobe.core.errors import InvalidInputError, MemprobeError
from tests.helpers import make_calibrated_db, run_cli

SUGGEST_PATCH = ("suggest", "--gpu-mem", "24GiB", "--precision", "fp32", "--batch", "2")
SUGGEST_BATCH = ("suggest", "--gpu-mem", "24GiB", "--precision", "fp32", "--patch", "64", "64", "64")
PLAN = ("plan", "--gpu-mem", "24GiB", "--precision", "fp32")

CLI_CASES: dict[str, tuple[str, ...]] = {
    "nan spacing": (*SUGGEST_PATCH, "--spacing", "nan", "1", "1"),
    "inf spacing": (*SUGGEST_PATCH, "--spacing", "1", "inf", "1"),
    "subnormal spacing": (*SUGGEST_PATCH, "--spacing", "1", "1", "1e-320"),
    "negative spacing": (*SUGGEST_PATCH, "--spacing", "-1", "1", "1"),
    "nan median shape": (*SUGGEST_PATCH, "--median-shape", "nan", "128", "128"),
    "superscript median shape": (*SUGGEST_PATCH, "--median-shape", "²", "128", "128"),
    "superscript batch": ("suggest", "--gpu-mem", "24GiB", "--batch", "²"),
    "Arabic-Indic batch": ("suggest", "--gpu-mem", "24GiB", "--batch", "\u0661\u0662"),
    "absurd batch": ("suggest", "--gpu-mem", "24GiB", "--batch", "10000000000000000000000"),
    "superscript patch": ("suggest", "--gpu-mem", "24GiB", "--patch", "64", "64", "6²"),
    "absurd effective batch": (*SUGGEST_BATCH, "--effective-batch", "99999999999"),
    "superscript channels": (*SUGGEST_BATCH, "--in-channels", "²"),
    "plan nan spacing": (*PLAN, "--spacing", "nan", "1", "1"),
    "plan inf median shape": (*PLAN, "--median-shape", "inf", "1", "1"),
    "plan lr nan": (*PLAN, "--lr", "nan"),
    "plan lr inf": (*PLAN, "--lr", "inf"),
    "plan negative lr": (*PLAN, "--lr", "-0.001"),
    "plan zero lr": (*PLAN, "--lr", "0"),
    "plan absurd batch": (*PLAN, "--batch", "1e30"),
    "memory of 1e400 GiB": ("suggest", "--patch", "64", "64", "64", "--gpu-mem", "9" * 400 + "GiB"),
    "probe superscript batch": ("probe", "--patch", "64", "64", "64", "--batch", "²", "--device", "trace"),
    "probe absurd batch": ("probe", "--patch", "64", "64", "64", "--batch", "9" * 30, "--device", "trace"),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_a_meaningless_value_exits_2_in_one_line(tmp_path: Path, case: str) -> None:
    db = make_calibrated_db(tmp_path / "calib.sqlite")
    arguments = CLI_CASES[case]
    if arguments[0] != "probe":
        arguments = (*arguments, "--db", str(db))
    before = db.read_bytes()
    result = run_cli(*arguments)
    assert result.code == 2, (result.code, result.out, result.err)
    assert len(result.error_lines) == 1 and "Traceback" not in result.err
    assert result.out == "" and db.read_bytes() == before


def _api_cases() -> dict[str, Callable[[str], Any]]:
    patch = (64, 64, 64)
    return {
        "patch as a set": lambda db: memprobe.estimate("mednext", {64, 96, 128}, 1, db=db),
        "patch as text": lambda db: memprobe.estimate("mednext", "646464", 1, db=db),
        "patch of 2": lambda db: memprobe.estimate("mednext", (64, 64), 1, db=db),
        "patch of floats": lambda db: memprobe.estimate("mednext", (64.0, 64, 64), 1, db=db),
        "patch of None": lambda db: memprobe.estimate("mednext", None, 1, db=db),  # type: ignore[arg-type]
        "float batch": lambda db: memprobe.estimate("mednext", patch, 2.0, db=db),  # type: ignore[arg-type]
        "bool batch": lambda db: memprobe.estimate("mednext", patch, True, db=db),
        "absurd batch": lambda db: memprobe.estimate("mednext", patch, 10**30, db=db),
        "arch as a number": lambda db: memprobe.estimate(7, patch, 1, db=db),  # type: ignore[arg-type]
        "str safety": lambda db: memprobe.max_batch_size("mednext", patch, "24GiB", safety="0.9", db=db),  # type: ignore[arg-type]
        "nan safety": lambda db: memprobe.max_batch_size(
            "mednext", patch, "24GiB", safety=float("nan"), db=db
        ),
        "'no' for a bool": lambda db: memprobe.estimate("mednext", patch, 1, deep_supervision="no", db=db),  # type: ignore[arg-type]
        "float effective batch": lambda db: memprobe.max_batch_size(
            "mednext",
            patch,
            "24GiB",
            effective_batch=8.0,
            db=db,  # type: ignore[arg-type]
        ),
        "bare 24 as bytes": lambda db: memprobe.max_batch_size("mednext", patch, 24, db=db),
        "infinite memory": lambda db: memprobe.max_batch_size("mednext", patch, float("inf"), db=db),
        "memory as a set": lambda db: memprobe.max_batch_size("mednext", patch, {24}, db=db),  # type: ignore[arg-type]
        "spacing as a set": lambda db: memprobe.max_patch_size(
            "mednext", 1, "24GiB", spacing={1.0, 2.0, 3.0}, db=db
        ),  # type: ignore[arg-type]
        "nan spacing": lambda db: memprobe.max_patch_size(
            "mednext", 1, "24GiB", spacing=(float("nan"), 1, 1), db=db
        ),
        "subnormal spacing": lambda db: memprobe.max_patch_size(
            "mednext", 1, "24GiB", spacing=(5e-324, 1, 1), db=db
        ),
        "float median shape": lambda db: memprobe.max_patch_size(
            "mednext", 1, "24GiB", median_shape=(64.5, 64, 64), db=db
        ),  # type: ignore[arg-type]
        "db as a number": lambda db: memprobe.estimate("mednext", patch, 1, db=5),  # type: ignore[arg-type]
        "device as a number": lambda db: memprobe.estimate("mednext", patch, 1, db=db, device=0),  # type: ignore[arg-type]
    }


API_CASES = _api_cases()


@pytest.mark.parametrize("case", API_CASES)
def test_the_api_raises_typed_errors_for_meaningless_arguments(tmp_path: Path, case: str) -> None:
    db = str(make_calibrated_db(tmp_path / "calib.sqlite"))
    with pytest.raises(MemprobeError) as raised:
        API_CASES[case](db)
    assert isinstance(raised.value, InvalidInputError) and "\n" not in str(raised.value)


def test_a_bare_int_under_1_mib_asks_for_gib(tmp_path: Path) -> None:
    db = str(make_calibrated_db(tmp_path / "calib.sqlite"))
    with pytest.raises(InvalidInputError, match="did you mean '24GiB'"):
        memprobe.max_batch_size("mednext", (64, 64, 64), 24, db=db)


@pytest.mark.parametrize("memory", ["24", float("nan"), float("inf"), -1, None, [24]])
def test_the_connectomics_shim_checks_its_memory_argument(tmp_path: Path, memory: object) -> None:
    """A string once made it build a multi-gigabyte string ("24" * 2**30)."""
    from memprobe.integrations.pytc.compat import suggest_batch_size

    db = str(make_calibrated_db(tmp_path / "calib.sqlite"))
    with pytest.raises(InvalidInputError, match="available_gpu_memory_gb"):
        suggest_batch_size([64, 64, 64], 1, 2, memory, db=db)  # type: ignore[arg-type]


@pytest.mark.parametrize("memory", ["24", float("nan"), float("inf")])
def test_the_connectomics_planner_checks_its_memory_argument(memory: object) -> None:
    from memprobe.integrations.pytc.planner import AutoConfigPlanner

    with pytest.raises(InvalidInputError, match="gpu_memory_gb"):
        AutoConfigPlanner(gpu_memory_gb=memory)  # type: ignore[arg-type]
