"""The report as one HTML file that opens offline: plotly's figures, its JavaScript inline.

plotly (a well-kept, widely used plotting library) draws the interactive parts: hover on every
point, zoom, legends; its JavaScript bundle is embedded once, so the page loads nothing from a
network. The numbers the figures show are embedded too (``#memprobe-data``), so scripts and
tests read exactly what is drawn. Errors a browser meets while drawing are shown on the page
(``#memprobe-errors``), not hidden in a console.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from memprobe.core.output_paths import write_atomically
from memprobe.core.units import GIB, format_bytes, format_shape

# The content is a memprobe.reporting.content.ReportContent; not imported here, since that module
# imports this one to draw itself (``ReportContent.to_html``).
ReportContent = Any

_PHASE_COLOURS = {"forward": "rgba(31,119,180,0.10)", "backward": "rgba(255,127,14,0.10)",
                  "optimizer": "rgba(44,160,44,0.12)", "step": "rgba(148,103,189,0.10)"}  # fmt: skip
_ROLE_SYMBOLS = {"fit": "circle", "held out": "diamond", "report": "x"}
_CONFIG = {"displaylogo": False, "responsive": True}
_ERROR_CATCHER = """<script>
window.memprobeErrors = [];
function memprobeShowError(text) {
  window.memprobeErrors.push(text);
  var box = document.getElementById('memprobe-errors');
  if (box) { box.textContent = window.memprobeErrors.join('\\n'); box.style.display = 'block'; }
}
window.addEventListener('error', function (e) { memprobeShowError(String(e.message)); });
</script>"""
_STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
.note { color: #555; font-size: 0.9em; max-width: 70em; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; }
#memprobe-errors { display: none; color: #a00; white-space: pre-wrap; border: 1px solid #a00; padding: 0.5em; }
.row { display: flex; flex-wrap: wrap; gap: 1em; } .row > div { flex: 1 1 30em; }
</style>"""


def write_html(content: ReportContent, path: str | Path) -> Path:
    """Render ``content`` and write it to ``path`` whole (a partial file never appears)."""
    target = Path(path)
    write_atomically(target, render_html(content))
    return target


def render_html(content: ReportContent) -> str:
    """The page: title, what the numbers measure, each figure, and the embedded data."""
    import plotly.offline

    sections = [_header(content)]
    if content.timeline is not None:
        sections.append(_timeline_section(content))
    sections += [_calibration_section(content), _plan_section(content)]
    if content.archs:
        sections.append(_archs_section(content))
    data = json.dumps(embedded_data(content)).replace("</", "<\\/")
    return "\n".join([
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>memprobe report: {html.escape(content.figure.spec.name)}</title>", _STYLE, _ERROR_CATCHER,
        f"<script>{plotly.offline.get_plotlyjs()}</script>", "</head><body>",
        "<pre id='memprobe-errors'></pre>", *sections,
        f"<script type='application/json' id='memprobe-data'>{data}</script>", "</body></html>",
    ])  # fmt: skip


def embedded_data(content: ReportContent) -> dict[str, Any]:
    """The numbers the page draws, for scripts and tests."""
    timeline = content.timeline
    return {
        "arch": content.figure.spec.name,
        "budget_bytes": content.figure.budget_bytes,
        "timeline": None
        if timeline is None
        else {
            "configuration": timeline.label,
            "peak_allocated_bytes": timeline.peak_allocated_bytes,
            "peak_reserved_bytes": timeline.peak_reserved_bytes,
            "peak_event": timeline.peak_event,
            "phase_peaks_bytes": timeline.phase_peaks_bytes,
            "phases": [list(phase) for phase in timeline.phases],
            "by_module_bytes": dict(timeline.by_module),
            "by_kind_bytes": timeline.by_kind,
            "events": len(timeline.points),
        },
        "calibration": {
            "device": content.calibration.device,
            "precision": content.calibration.precision,
            "points": [
                {
                    "configuration": p.config.label(),
                    "role": p.role,
                    "allocated_bytes": p.allocated_bytes,
                    "reserved_bytes": p.reserved_bytes,
                    "predicted_allocated_bytes": round(p.predicted_allocated_bytes),
                }
                for p in content.calibration.points
            ],
            "largest": [
                {"patch": list(patch), "batch": batch} for patch, batch in content.calibration.largest
            ],
        },
        "plan": {
            "configuration": content.plan.label,
            "usable_bytes": round(content.plan.usable_bytes),
            "terms": [
                {"name": name, "bytes": round(size), "source": source}
                for name, size, source in content.plan.terms
            ],
            "alternatives": [
                {"change": change, "outcome": outcome} for change, outcome in content.plan.alternatives
            ],
        },
        "archs": [
            {
                "arch": row.arch,
                "bytes_per_voxel": row.bytes_per_voxel,
                "largest_batch": row.largest_batch,
                "calibration": row.calibration,
            }
            for row in content.archs
        ],
    }


def _figure_div(figure: Any, name: str) -> str:
    return str(figure.to_html(full_html=False, include_plotlyjs=False, div_id=name, config=_CONFIG))


def _header(content: ReportContent) -> str:
    calibration = content.calibration
    worst = calibration.heldout_max_relative_error
    fit = f"held-out worst {100 * worst:.2f}%" if worst is not None else "no held-out points"
    what = ("measured on the trace backend (fake tensors): allocated = live tensor storage in 512-byte blocks, "
            "reserved = the step replayed through a model of PyTorch's caching allocator (simulated)"
            if calibration.device in ("trace", "cpu") else f"measured on {calibration.device}")  # fmt: skip
    return (
        f"<h1>memprobe report: {html.escape(content.figure.spec.name)} ({html.escape(calibration.precision)})</h1>"
        f"<p class='note'>Numbers {html.escape(what)}. Curves are the calibrated formula ({html.escape(calibration.device)} "
        f"calibration, {fit}). Budget {format_bytes(content.figure.budget_bytes)} x safety {content.figure.safety:g}.</p>"
    )


def _timeline_section(content: ReportContent) -> str:
    import plotly.graph_objects as go

    timeline = content.timeline
    assert timeline is not None
    points = timeline.points
    x = [p.event for p in points]
    hover = [[p.op, p.module or "-", p.phase, format_bytes(p.change_bytes)] for p in points]
    template = ("event %{x}<br>%{customdata[0]}<br>module: %{customdata[1]}<br>phase: %{customdata[2]}"
                "<br>change: %{customdata[3]}<br>%{y:.3f} GiB<extra>%{fullData.name}</extra>")  # fmt: skip
    figure = go.Figure()
    figure.add_scatter(x=x, y=[p.allocated_bytes / GIB for p in points], name="allocated (tensors)",
                       customdata=hover, hovertemplate=template, line={"width": 1})  # fmt: skip
    figure.add_scatter(x=x, y=[p.reserved_bytes / GIB for p in points], name="reserved (simulated)",
                       customdata=hover, hovertemplate=template, line={"width": 1, "dash": "dot"})  # fmt: skip
    figure.add_scatter(x=[timeline.peak_event], y=[timeline.peak_allocated_bytes / GIB], mode="markers+text",
                       name="peak", text=[f"peak {format_bytes(timeline.peak_allocated_bytes)}"],
                       textposition="top center", marker={"size": 11, "color": "red"})  # fmt: skip
    for name, first, last in timeline.phases:
        figure.add_vrect(x0=first, x1=last, fillcolor=_PHASE_COLOURS.get(name, "rgba(0,0,0,0.05)"), line_width=0,
                         annotation_text=name, annotation_position="top left")  # fmt: skip
    figure.update_layout(title=f"Memory over the step: {timeline.label}", xaxis_title="allocation event",
                         yaxis_title="GiB", height=460, hovermode="closest")  # fmt: skip
    modules = go.Figure(go.Bar(
        y=[name for name, _ in timeline.by_module][::-1], x=[size / GIB for _, size in timeline.by_module][::-1],
        orientation="h", hovertemplate="%{y}: %{x:.3f} GiB<extra></extra>",
    ))  # fmt: skip
    modules.update_layout(
        title="Live at the peak, by module (or phase) that allocated", xaxis_title="GiB", height=460
    )
    kinds = go.Figure(go.Bar(
        x=[name.replace("_", " ") for name in timeline.by_kind], y=[size / GIB for size in timeline.by_kind.values()],
        hovertemplate="%{x}: %{y:.3f} GiB<extra></extra>",
    ))  # fmt: skip
    kinds.update_layout(title="Live at the peak, by kind", yaxis_title="GiB", height=460)
    return (
        "<h2>The measured step</h2><p class='note'>Every allocation and free of the step, in order; shaded by "
        "phase; hover for the op, module and bytes.</p>"
        + _figure_div(figure, "memprobe-timeline")
        + "<div class='row'><div>"
        + _figure_div(modules, "memprobe-modules")
        + "</div><div>"
        + _figure_div(kinds, "memprobe-kinds")
        + "</div></div>"
    )


def _calibration_section(content: ReportContent) -> str:
    import plotly.graph_objects as go

    view = content.calibration
    usable = content.figure.usable_bytes / GIB
    by_batch = go.Figure()
    for patch, curve in view.batch_curves:
        label = format_shape(patch)
        by_batch.add_scatter(x=[b for b, _, _ in curve], y=[a / GIB for _, a, _ in curve], mode="lines",
                             name=f"{label} allocated (formula)")  # fmt: skip
        if any(r is not None for _, _, r in curve):
            by_batch.add_scatter(x=[b for b, _, _ in curve], y=[(r or 0) / GIB for _, _, r in curve], mode="lines",
                                 line={"dash": "dot"}, name=f"{label} reserved (formula)")  # fmt: skip
    for patch, batch in view.largest:
        if batch:
            allocated = dict((b, a) for b, a, _ in dict(view.batch_curves)[patch])[batch]
            by_batch.add_scatter(x=[batch], y=[allocated / GIB], mode="markers", marker={"symbol": "star", "size": 15},
                                 name=f"largest batch, {'x'.join(map(str, patch))}")  # fmt: skip
    curve_patches = {patch for patch, _ in view.batch_curves}
    _add_points(
        by_batch, [p for p in view.points if p.config.patch in curve_patches], lambda p: p.config.batch
    )
    by_batch.add_hline(y=usable, line_dash="dash", annotation_text="budget x safety")
    by_batch.update_layout(title="Peak vs batch", xaxis_title="batch", yaxis_title="GiB", height=460)
    by_voxels = go.Figure()
    by_voxels.add_scatter(x=[v for v, _, _ in view.voxel_curve], y=[a / GIB for _, a, _ in view.voxel_curve],
                          mode="lines", name="allocated (formula, batch 1)")  # fmt: skip
    _add_points(
        by_voxels, [p for p in view.points if p.config.batch == 1], lambda p: math.prod(p.config.patch)
    )
    by_voxels.add_hline(y=usable, line_dash="dash", annotation_text="budget x safety")
    by_voxels.update_layout(
        title="Peak vs voxels at batch 1", xaxis_title="voxels", yaxis_title="GiB", height=460
    )
    rows = "".join(
        f"<tr><td>{html.escape(p.config.label())}</td><td>{p.role}</td><td>{format_bytes(p.allocated_bytes)}</td>"
        f"<td>{format_bytes(p.predicted_allocated_bytes)}</td>"
        f"<td>{100 * (p.predicted_allocated_bytes / p.allocated_bytes - 1):+.2f}%</td></tr>"
        for p in view.points if p.allocated_bytes
    )  # fmt: skip
    return (
        "<h2>The calibration</h2><p class='note'>Measured points (circles: the calibration's fit points, diamonds: "
        "its held-out points, where the database holds them; crosses: measured for this report) against the "
        "fitted formula; stars: the largest batch whose whole need fits.</p><div class='row'><div>"
        + _figure_div(by_batch, "memprobe-calibration-batch")
        + "</div><div>"
        + _figure_div(by_voxels, "memprobe-calibration-voxels")
        + "</div></div>"
        + "<table><tr><th>configuration</th><th>role</th><th>measured allocated</th><th>formula</th><th>error</th></tr>"
        + rows
        + "</table>"
    )


def _add_points(figure: Any, points: list[Any], x_of: Any) -> None:
    for role, symbol in _ROLE_SYMBOLS.items():
        chosen = [p for p in points if p.role == role]
        if chosen:
            figure.add_scatter(x=[x_of(p) for p in chosen], y=[p.allocated_bytes / GIB for p in chosen],
                               mode="markers", marker={"symbol": symbol, "size": 9}, name=f"measured ({role})",
                               text=[p.config.label() for p in chosen],
                               hovertemplate="%{text}<br>%{y:.3f} GiB<extra></extra>")  # fmt: skip


def _plan_section(content: ReportContent) -> str:
    import plotly.graph_objects as go

    plan = content.plan
    figure = go.Figure()
    for name, size, source in plan.terms:
        figure.add_bar(y=["whole need"], x=[size / GIB], name=name, orientation="h", customdata=[[source]],
                       hovertemplate=f"{html.escape(name)}: %{{x:.3f}} GiB<br>%{{customdata[0]}}<extra></extra>")  # fmt: skip
    figure.add_vline(x=plan.budget_bytes / GIB, line_dash="dash", annotation_text="budget")
    if plan.usable_bytes != plan.budget_bytes:
        figure.add_vline(x=plan.usable_bytes / GIB, line_dash="dot", annotation_text="budget x safety")
    figure.update_layout(
        barmode="stack", title=f"What {plan.label} needs of the GPU", xaxis_title="GiB", height=300
    )
    alternatives = ""
    if plan.alternatives:
        alternatives = "<table><tr><th>change</th><th>plan</th></tr>" + "".join(
            f"<tr><td>{html.escape(change)}</td><td>{html.escape(outcome)}</td></tr>" for change, outcome in plan.alternatives
        ) + "</table>"  # fmt: skip
    return ("<h2>The plan</h2><p class='note'>Each term of the whole need; hover for where its size comes from.</p>"
            + _figure_div(figure, "memprobe-plan") + alternatives)  # fmt: skip


def _archs_section(content: ReportContent) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = content.archs
    figure = make_subplots(rows=1, cols=2, subplot_titles=("bytes per voxel at batch 1", "largest batch"))
    names = [row.arch for row in rows]
    figure.add_trace(
        go.Bar(x=names, y=[row.bytes_per_voxel for row in rows], name="bytes per voxel"), row=1, col=1
    )
    figure.add_trace(
        go.Bar(x=names, y=[row.largest_batch for row in rows], name="largest batch"), row=1, col=2
    )
    patch = format_shape(content.archs_patch or ())
    figure.update_layout(
        title=f"Architectures at {patch}, from their calibrations", height=420, showlegend=False
    )
    return "<h2>Architectures side by side</h2>" + _figure_div(figure, "memprobe-archs")
