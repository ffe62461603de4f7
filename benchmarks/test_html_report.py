"""The HTML report of MedNeXt 128^3 on trace: its size, and how long a headless browser takes to draw it."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from benchmarks.harness import ResultTable, write_results
from tests.browser import chromium, render

SIZE_LIMIT_BYTES = 10 * 2**20
RENDER_TARGET_SECONDS = 5.0


def test_html_report_size_and_render_time(tmp_path: Path) -> None:
    import memprobe

    started = time.perf_counter()
    content = memprobe.report("mednext", patches=[(128, 128, 128)], db=tmp_path / "db.sqlite")
    built = time.perf_counter() - started
    page = content.to_html(tmp_path / "mednext.html")
    size = page.stat().st_size
    row = {
        "report": f"mednext 128x128x128 ({content.calibration.precision}), trace",
        "events drawn": len(content.timeline.points) if content.timeline else 0,
        "size MB": f"{size / 2**20:.2f}",
        "size limit MB": SIZE_LIMIT_BYTES / 2**20,
        "built s": f"{built:.1f}",
    }
    notes = [
        "Built: memprobe.report() on the trace backend (steps measured or read from a fresh database, one traced "
        "event by event), from the shipped calibration. Size: the whole page, plotly's JavaScript included.",
    ]
    if chromium() is None:
        pytest.skip("no chromium here: .ci/run installs Debian's chromium")
    shown = render(page, tmp_path / "shot.png")
    figures = len(re.findall(r'class="main-svg"', shown.dom))
    row |= {"browser s": f"{shown.seconds:.2f}", "render / target": f"{shown.seconds / RENDER_TARGET_SECONDS:.2f}",
            "plotly SVGs": figures}  # fmt: skip
    notes.append(
        "Browser: headless chromium, network off, from start to the DOM after every script ran (--dump-dom with "
        f"a virtual-time budget): browser start included. Target {RENDER_TARGET_SECONDS:g} s; timings depend on the "
        "machine and are reported, not asserted."
    )
    write_results(
        ResultTable("html_report", "HTML report: size and drawing time", [row], [row], tuple(notes))
    )
    assert size < SIZE_LIMIT_BYTES
    assert figures >= 6 and re.search(r'<pre id="memprobe-errors"[^>]*></pre>', shown.dom)
