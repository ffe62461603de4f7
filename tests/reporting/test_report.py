"""`memprobe report`: the figure is written and --json holds the points it shows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from memprobe.core.archs.registry import resolve_arch
from memprobe.planning.need import memory_need
from memprobe.planning.size_search import largest_batch_rule
from tests.conftest import TINY
from tests.helpers import invoke

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PATCHES = ("--patch", "16", "16", "16", "--patch", "32", "32", "32")
BUDGET = "1700MiB"  # the fixed overheads a plan charges on trace (context, workspaces) are about 1.5 GiB


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    arguments = [
        "report",
        "--arch",
        TINY,
        *PATCHES,
        "--gpu-mem",
        BUDGET,
        "--out",
        str(tmp_path / "report.png"),
        "--db",
        str(tmp_path / "report.sqlite"),
        "--json",
    ]
    result = invoke(capsys, *arguments)
    assert result.code == 0, result.err
    return json.loads(result.out)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_report_writes_the_figure_and_its_points_then_reuses_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _run(tmp_path, capsys)
    assert Path(data["figure"]).read_bytes()[:8] == PNG_SIGNATURE
    points = {(tuple(p["patch"]), p["batch"]): p for p in data["points"]}
    assert {((16, 16, 16), 1), ((16, 16, 16), 2), ((32, 32, 32), 1), ((32, 32, 32), 2)} <= set(points)
    assert all(p["peak_allocated_bytes"] > 0 and p["predicted_bytes"] > 0 for p in points.values())
    calibration = _calibration(tmp_path)
    for largest in data["largest"]:
        assert largest["batch"] >= 1
        assert (tuple(largest["patch"]), largest["batch"]) in points  # the predicted largest is measured
        # suggest's rule: the whole need of the largest batch fits the budget, the next one's does not
        patch, batch = largest["patch"], largest["batch"]
        need = [
            memory_need(calibration, resolve_arch(TINY), patch, b).total_bytes for b in (batch, batch + 1)
        ]
        assert need[0] <= data["budget_bytes"] < need[1]
    assert data["largest_batch_rule"] == largest_batch_rule(data["budget_bytes"])
    breakdown = data["breakdown"]
    assert set(breakdown["bytes"]) >= {"parameters", "gradients", "optimizer_state", "activations"}
    assert sum(breakdown["bytes"].values()) == pytest.approx(breakdown["peak_allocated_bytes"], rel=0.01)
    again = _run(tmp_path, capsys)  # every point is now stored: nothing is measured twice
    assert data["measured"] > 0 and again["measured"] == 0
    assert again["reused"] == len(again["points"])


def _calibration(tmp_path: Path) -> Any:
    from memprobe.api import load_calibrations

    return next(c for c in load_calibrations(tmp_path / "report.sqlite") if c.arch == TINY)


def test_report_refuses_a_safety_outside_0_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = invoke(capsys, "report", "--arch", TINY, "--safety", "1.5", "--out", str(tmp_path / "r.png"))
    assert result.code != 0
    assert "--safety" in result.err + result.out


def test_report_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    result = invoke(capsys, "report", "--help")
    assert result.code == 0
    assert "memprobe report --arch mednext" in result.out


def test_report_html_sets_architectures_side_by_side_and_names_those_it_cannot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "report.html"
    arguments = ["report", "--arch", TINY, "--arch", "basicunet", *PATCHES, "--gpu-mem", BUDGET,
                 "--html", str(page), "--db", str(tmp_path / "report.sqlite"), "--json"]  # fmt: skip
    result = invoke(capsys, *arguments)
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["html"] == str(page) and data["figure"] is None and not (tmp_path / "report.png").exists()
    assert [row["arch"] for row in data["archs"]] == [TINY]  # basicunet has no calibration in this database
    assert data["notes"] == ["no bf16-mixed calibration on trace to compare: basicunet"]
    assert page.read_text().count("id='memprobe-data'") == 1
