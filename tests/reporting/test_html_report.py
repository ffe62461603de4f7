"""`memprobe report --html`: the page's data, its independence from any network, and a real browser."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from memprobe.planning.need import memory_need
from memprobe.reporting.content import ReportContent
from tests.browser import chromium, render
from tests.helpers import invoke

ARGS = dict(patches=[(32, 32, 32), (64, 64, 64)], precision="fp32", compare=["unet"], options=True)


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> ReportContent:
    import memprobe

    db = tmp_path_factory.mktemp("report") / "db.sqlite"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(
            "MEMPROBE_NO_SHIPPED", "1"
        )  # the report calibrates: its fit and held-out points are stored
        return memprobe.report("basicunet", db=db, **ARGS)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def page(content: ReportContent, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return content.to_html(tmp_path_factory.mktemp("page") / "report.html")


def _embedded(page: Path) -> dict:
    match = re.search(
        r"<script type='application/json' id='memprobe-data'>(.*?)</script>", page.read_text(), re.S
    )
    assert match is not None
    return json.loads(match.group(1).replace("<\\/", "</"))


def test_the_timeline_is_the_measured_steps_own(content: ReportContent, page: Path) -> None:
    step = content.figure.breakdown
    assert step is not None and content.timeline is not None
    data = _embedded(page)["timeline"]
    assert data["peak_allocated_bytes"] == step.peak_allocated_bytes
    assert data["peak_reserved_bytes"] == step.peak_reserved_bytes
    assert data["phase_peaks_bytes"] == {k: v for k, v in step.phase_peaks_bytes.items() if "." not in k}
    assert data["by_kind_bytes"] == step.breakdown_bytes
    assert sum(data["by_module_bytes"].values()) == step.peak_allocated_bytes  # everything live at the peak
    assert [name for name, _, _ in data["phases"]] == ["forward", "backward", "optimizer"]


def test_the_plan_terms_are_the_need_suggest_computes(content: ReportContent, page: Path) -> None:
    figure = content.figure
    step = figure.breakdown
    assert step is not None
    need = memory_need(figure.calibration, figure.spec, step.config.patch, step.config.batch)
    plan = _embedded(page)["plan"]
    assert plan["configuration"] == step.config.label()
    assert [(t["name"], t["bytes"]) for t in plan["terms"]] == [(n, round(b)) for n, b, _ in need.terms()]
    assert plan["alternatives"] and all(a["outcome"] for a in plan["alternatives"])


def test_calibration_points_carry_their_measurements(content: ReportContent, page: Path) -> None:
    points = _embedded(page)["calibration"]["points"]
    measured = {m.config.label(): m.peak_allocated_bytes for c in content.figure.curves for m in c.measured}
    report_points = [p for p in points if p["role"] == "report"]
    assert report_points and all(measured[p["configuration"]] == p["allocated_bytes"] for p in report_points)
    assert {p["role"] for p in points} >= {
        "fit",
        "held out",
    }  # the report calibrated here: its points are stored


def test_architectures_are_compared_from_their_calibrations(page: Path) -> None:
    assert [row["arch"] for row in _embedded(page)["archs"]] == ["basicunet"]  # no unet fp32 calibration here


def test_the_page_loads_nothing_from_a_network(page: Path) -> None:
    text = page.read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.I)
    assert not re.search(r"<link[^>]*\bhref\s*=", text, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?https?:", text)
    assert "Plotly.newPlot" in text or "Plotly.react" in text or "newPlot" in text


@pytest.mark.skipif(chromium() is None, reason="no chromium here: .ci/run installs Debian's chromium")
def test_a_real_browser_draws_every_figure_without_errors(page: Path, tmp_path: Path) -> None:
    from PIL import Image

    shown = render(page, tmp_path / "shot.png")
    assert re.search(r"<pre id=\"memprobe-errors\"[^>]*></pre>", shown.dom), "the page reported errors"
    assert shown.dom.count('class="main-svg"') >= 7  # every plotly figure drew its SVG
    image = Image.open(shown.screenshot).convert("RGB").resize((350, 950))
    pixels = list(image.getdata())
    inked = sum(1 for p in pixels if sum(p) < 700) / len(pixels)
    assert inked > 0.05 and len(set(pixels)) > 200, (inked, len(set(pixels)))


def test_bad_html_paths_exit_2_before_measuring(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    db.write_bytes(b"")
    for target in (str(tmp_path), str(db), str(tmp_path / "missing" / "r.html"), str(tmp_path / "r.txt")):
        result = invoke(
            capsys, "report", "--arch", "basicunet", "--html", target, "--db", str(tmp_path / "x.sqlite")
        )
        assert result.code == 2 and "measuring" not in result.err and len(result.error_lines) == 1, result.err
    same = invoke(capsys, "report", "--html", str(tmp_path / "a.html"), "--out", str(tmp_path / "a.html"))
    assert same.code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.sqlite"]


def test_an_interrupted_page_leaves_no_file(
    content: ReportContent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import memprobe.reporting.html_page as html_page

    def interrupted(*args: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(html_page, "render_html", interrupted)
    with pytest.raises(KeyboardInterrupt):
        content.to_html(tmp_path / "r.html")
    assert list(tmp_path.iterdir()) == []
