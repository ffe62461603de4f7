"""Sliding windows: a probe never traces an unbounded number; every plan says how many (round 3)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from memprobe.store.database import Database
from tests.cli.test_inference_cli import TINY, _suggest
from tests.helpers import invoke, make_inference_calibration

PROBE = ("probe", "--mode", "inference", "--arch", TINY, "--patch", "16", "16", "16", "--device", "trace")


@pytest.fixture
def calibrated(db_path: Path) -> Path:
    with Database.open(db_path) as database:
        database.add_calibration(make_inference_calibration())
    return db_path


@pytest.mark.parametrize("predictor", ["monai", "nnunet"])
def test_a_probe_refuses_millions_of_windows_with_their_count(
    capsys: pytest.CaptureFixture[str], predictor: str
) -> None:
    started = time.perf_counter()
    extra = ("--precision", "fp16-mixed") if predictor == "nnunet" else ()
    result = invoke(capsys, *PROBE, "--image-shape", "400", "400", "400", "--overlap", "0.99",
                    "--predictor", predictor, *extra)  # fmt: skip
    assert result.code == 2 and "windows at overlap 0.99" in result.error_lines[0], result.err
    assert time.perf_counter() - started < 30  # refused, not traced one by one


def test_every_inference_plan_says_how_many_windows(
    calibrated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = invoke(capsys, *_suggest(calibrated, "--gpu-mem", "24GiB", "--overlap", "0.99"), "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    said = [reason for reason in data["reasons"] if "windows at overlap 0.99" in reason]
    assert said and f"{data['windows']:,} windows" in said[0]
    if data["windows"] > 100_000:
        assert "lower --overlap" in said[0]


def test_a_window_batch_beyond_the_images_windows_is_a_named_clamp(
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = invoke(capsys, *PROBE, "--image-shape", "32", "32", "32", "--sw-batch-size", "50")
    assert result.code == 0, result.err
    assert (
        "sw_batch_size 50 is more than the 27 windows the image has: MONAI runs batches of 27" in result.out
    )
