"""Input files and API arguments that once ran away or tracebacked (robustness issue, round 3).

3: a config or fingerprint that never ends (``/dev/zero``, a FIFO) is refused in one line.
4: a YAML alias bomb is refused before it expands; an error never echoes a whole value.
5: non-finite or fractional numbers in an inference fingerprint's shapes are refused in one line.
13: the Python API refuses wrong argument types at its boundary, naming the argument.
14: ``plan --config --out`` keeps CRLF line endings and a byte-order mark, and refuses recursive anchors.
"""

from __future__ import annotations

import json
import os
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import memprobe
from memprobe.core.errors import InvalidInputError
from memprobe.store.database import Database
from tests.helpers import Result, invoke, make_calibration, run_cli

GPU_MEM = ("--gpu-mem", "24GiB")
SHORT_ERROR = 400  # characters: an error line names the problem, never the whole value
INFERENCE = ("suggest", "--mode", "inference", "--arch", "unet", "--patch", "96", "96", "96", *GPU_MEM)


def _one_line(result: Result) -> str:
    assert result.code == 2, (result.code, result.out[:500], result.err[:500])
    assert len(result.error_lines) == 1 and "Traceback" not in result.err, result.err[:2000]
    assert result.err.strip() == result.error_lines[0]
    assert len(result.error_lines[0]) < SHORT_ERROR, result.error_lines[0][:500]
    return result.error_lines[0]


def _bounded_memory() -> None:
    """A child that reads without end dies of MemoryError here instead of taking the machine's memory."""
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def _bounded_cli(*arguments: str) -> Result:
    return run_cli(*arguments, timeout=90, preexec_fn=_bounded_memory)


@pytest.fixture
def calibrated(db_path: Path) -> Path:
    """MedNeXt calibrated at fp32 and bf16-mixed on trace (what a config plans without a GPU)."""
    with Database.open(db_path) as database:
        for precision in ("fp32", "bf16-mixed"):
            database.add_calibration(make_calibration("mednext", precision))
    return db_path


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    return path


# --- 3: files that never end ---


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_a_config_that_never_ends_is_refused_in_one_line(fifo: Path, kind: str) -> None:
    """/dev/zero was read until the kernel killed memprobe; a FIFO blocked forever."""
    source = "/dev/zero" if kind == "dev-zero" else str(fifo)
    error = _one_line(_bounded_cli("plan", "--config", source, *GPU_MEM))
    assert "not a regular file" in error and source in error


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_an_inference_fingerprint_that_never_ends_is_refused_in_one_line(fifo: Path, kind: str) -> None:
    source = "/dev/zero" if kind == "dev-zero" else str(fifo)
    error = _one_line(_bounded_cli(*INFERENCE, "--fingerprint", source))
    assert "--fingerprint" in error and "not a regular file" in error


def test_a_config_over_the_size_cap_is_refused_naming_the_cap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as stream:
        stream.truncate(65 << 20)  # sparse: nothing is written to disk
    error = _one_line(invoke(capsys, "plan", "--config", str(huge), *GPU_MEM))
    assert "64 MiB" in error and "--config" in error


# --- 4: YAML alias bombs and values echoed whole ---


def _alias_bomb(levels: int) -> str:
    """The "billion laughs": each level aliases the one before nine times."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, levels)]
    return "\n".join(lines) + f"\ndata:\n  batch_size: *a{levels - 1}\n"


def test_an_alias_bomb_is_refused_before_it_expands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Six levels (531,441 values once expanded) gave a 4 MB "one-line" error."""
    config = tmp_path / "bomb.yaml"
    config.write_text(_alias_bomb(7))
    out = tmp_path / "planned.yaml"
    error = _one_line(invoke(capsys, "plan", "--config", str(config), *GPU_MEM, "--out", str(out)))
    assert "alias" in error and not out.exists()


def test_a_billion_laughs_ends_at_once(tmp_path: Path) -> None:
    """Nine levels (10^9 values) ran for minutes."""
    config = tmp_path / "bomb.yaml"
    config.write_text(_alias_bomb(10))
    error = _one_line(_bounded_cli("plan", "--config", str(config), *GPU_MEM))
    assert "alias" in error


def test_ordinary_anchors_and_merges_still_plan(
    calibrated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "defaults: &defaults\n  in_channels: 1\n  out_channels: 2\n"
        "model:\n  <<: *defaults\n  architecture: mednext\n"
        "spacing: &spacing [1.0, 1.0, 1.0]\ndata:\n  target_spacing: *spacing\n"
    )
    result = invoke(capsys, "plan", "--config", str(config), *GPU_MEM, "--db", str(calibrated))
    assert result.code == 0, result.err
    assert "<<: *defaults" in result.out and "target_spacing: *spacing" in result.out


@pytest.mark.parametrize(
    "content",
    [
        f"data:\n  batch_size: {'x' * 20_000}\n",
        f"data:\n  target_spacing: [{', '.join(['1'] * 20_000)}]\n",
        f"training:\n  precision: {'y' * 20_000}\n",
        f"data: {'z' * 20_000}\n",
        f"model:\n  architecture: {'a' * 20_000}\n",
    ],
    ids=["batch", "spacing", "precision", "section", "architecture"],
)
def test_an_error_echoes_only_a_short_prefix_of_a_value(
    calibrated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(content)
    _one_line(invoke(capsys, "plan", "--config", str(config), *GPU_MEM, "--db", str(calibrated)))


# --- 5: numbers in an inference fingerprint ---


@pytest.mark.parametrize(
    "shape",
    ["[1, NaN, 512, 512]", "[1, Infinity, 512, 512]", "[1, 1e400, 512, 512]", "[1, -Infinity, 512, 512]",
     "[1, 600.5, 512, 512]", "[1, true, 512, 512]", '[1, "600", 512, 512]', "[512, 512]", "600",
     "[1, 0, 512, 512]"],
)  # fmt: skip
def test_a_fingerprint_shape_that_is_not_whole_numbers_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shape: str
) -> None:
    fingerprint = tmp_path / "dataset_fingerprint.json"
    fingerprint.write_text(
        '{"spacings": [[1.0, 1.0, 1.0]], "shapes_after_crop": [[1, 100, 200, 200], ' + shape + "]}"
    )
    error = _one_line(invoke(capsys, *INFERENCE, "--fingerprint", str(fingerprint)))
    assert "shapes_after_crop" in error


@pytest.mark.parametrize(
    "content",
    ["NaN", "[" * 200_000, '{"shapes_after_crop": []}', '{"shapes_after_crop": {"a": 1}}'],
    ids=["nan", "nested", "no shapes", "a mapping"],
)
def test_a_fingerprint_without_usable_shapes_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    fingerprint = tmp_path / "dataset_fingerprint.json"
    fingerprint.write_text(content)
    _one_line(invoke(capsys, *INFERENCE, "--fingerprint", str(fingerprint)))


def test_the_largest_image_of_a_good_fingerprint_is_still_read(tmp_path: Path) -> None:
    from memprobe.inference.api import largest_image_shape

    fingerprint = tmp_path / "dataset_fingerprint.json"
    shapes = [[1, 100, 200, 200], [1, 600, 512, 512], [300, 512, 512]]
    fingerprint.write_text(json.dumps({"spacings": [[1.0, 0.8, 0.8]] * 3, "shapes_after_crop": shapes}))
    assert largest_image_shape(fingerprint) == (600, 512, 512)


# --- 13: the Python API checks its arguments at the boundary ---


def _api_cases() -> dict[str, tuple[Callable[[], Any], str]]:
    from memprobe.integrations.pytc.compat import AutoConfigPlanner, auto_plan_config

    patch = (64, 64, 64)
    return {
        "image_shape None": (
            lambda: memprobe.max_sw_batch_size("unet", (96, 96, 96), None, "24GiB"),  # type: ignore[arg-type]
            "image_shape",
        ),
        "image_shape a number": (
            lambda: memprobe.max_sw_batch_size("unet", (96, 96, 96), 600, "24GiB"),  # type: ignore[arg-type]
            "image_shape",
        ),
        "inference safety as text": (
            lambda: memprobe.max_sw_batch_size("unet", (96, 96, 96), (200, 200, 200), "24GiB", safety="x"),  # type: ignore[arg-type]
            "safety",
        ),
        "config None": (lambda: auto_plan_config(None, print_results=False), "config"),
        "config text": (lambda: auto_plan_config("x", print_results=False), "config"),
        "config a list": (lambda: auto_plan_config([], print_results=False), "config"),
        "overrides a list": (
            lambda: AutoConfigPlanner(manual_overrides=[("batch_size", 2)], gpu_memory_gb=24.0),  # type: ignore[arg-type]
            "manual_overrides",
        ),
        "unknown override": (
            lambda: AutoConfigPlanner(manual_overrides={"batch_sise": 2}, gpu_memory_gb=24.0),
            "batch_sise",
        ),
        "batch as text": (lambda: memprobe.estimate("mednext", patch, "2"), "batch"),  # type: ignore[arg-type]
        "patch-size batch as text": (
            lambda: memprobe.max_patch_size("mednext", "2", "24GiB"),  # type: ignore[arg-type]
            "batch",
        ),
    }


API_CASES = _api_cases()


@pytest.mark.parametrize("case", API_CASES)
def test_the_api_names_a_wrong_argument(calibrated: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    monkeypatch.setenv("MEMPROBE_DB", str(calibrated))
    call, name = API_CASES[case]
    with pytest.raises((InvalidInputError, TypeError)) as raised:
        call()
    message = str(raised.value)
    assert isinstance(raised.value, InvalidInputError), repr(raised.value)
    assert name in message and "\n" not in message and len(message) < SHORT_ERROR


def test_known_overrides_of_unplanned_fields_are_still_copied(calibrated: Path) -> None:
    from memprobe.integrations.pytc.compat import AutoConfigPlanner

    planner = AutoConfigPlanner(
        manual_overrides={"batch_size": 2, "base_features": 48}, gpu_memory_gb=24.0, db=calibrated
    )
    result = planner.plan()
    assert result.batch_size == 2 and result.base_features == 48


@pytest.mark.parametrize("gpu_mem", ["lots", float("nan"), -1, [24]])
def test_the_lightning_callback_checks_gpu_mem_when_constructed(gpu_mem: object) -> None:
    pytest.importorskip("lightning")
    from memprobe.integrations.lightning import MemprobeBatchSizeFinder

    with pytest.raises(InvalidInputError, match="gpu_mem"):
        MemprobeBatchSizeFinder(gpu_mem=gpu_mem)  # type: ignore[arg-type]


# --- 14: plan --config --out changes only the planned keys ---

CONFIG = "model:\n  architecture: mednext  # the network\ndata:\n  batch_size:  # planned\n"


@pytest.mark.parametrize("layout", ["crlf", "bom", "bom-crlf"])
def test_line_endings_and_the_byte_order_mark_are_kept(
    calibrated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    text = CONFIG.replace("\n", "\r\n") if "crlf" in layout else CONFIG
    raw = (b"\xef\xbb\xbf" if "bom" in layout else b"") + text.encode()
    config, out = tmp_path / "config.yaml", tmp_path / "planned.yaml"
    config.write_bytes(raw)
    arguments = ("plan", "--config", str(config), *GPU_MEM, "--db", str(calibrated))
    result = invoke(capsys, *arguments, "--out", str(out))
    assert result.code == 0, result.err
    written = out.read_bytes()
    assert written.startswith(b"\xef\xbb\xbfmodel:") == ("bom" in layout)
    assert written.count(b"\xef\xbb\xbf") == ("bom" in layout)
    newline = b"\r\n" if "crlf" in layout else b"\n"
    assert written.count(b"\n") == written.count(newline) > 5
    assert b"  architecture: mednext  # the network" + newline in written
    assert config.read_bytes() == raw


@pytest.mark.parametrize(
    "content",
    ["data: &d\n  extra: *d\n", "model:\n  architecture: mednext\nloop: &l [1, [2, *l]]\n"],
    ids=["mapping", "sequence"],
)
def test_a_recursive_anchor_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    """It was written back as null."""
    config, out = tmp_path / "config.yaml", tmp_path / "planned.yaml"
    config.write_text(content)
    error = _one_line(invoke(capsys, "plan", "--config", str(config), *GPU_MEM, "--out", str(out)))
    assert "recursive" in error and "line" in error and not out.exists()
