"""``memprobe suggest --options``: the alternatives that would make a configuration fit, as a table."""

from __future__ import annotations

from typing import Any

from memprobe.alternatives import Alternative
from memprobe.cli.render.plans import calibration_data, calibration_text
from memprobe.core.units import format_bytes, format_shape


def options_rows(found: list[Alternative]) -> list[dict[str, Any]]:
    """One row per alternative: what changes, the batch that fits, its total need, its calibration."""
    rows = []
    for alternative in found:
        plan = alternative.plan
        rows.append(
            {
                "change": alternative.change,
                "batch": plan.batch if plan is not None else "-",
                "patch": format_shape(plan.patch) if plan is not None else "-",
                "accumulate": getattr(plan, "accumulate_grad_batches", 1) if plan is not None else "-",
                "total need": format_bytes(plan.need.total_bytes) if plan is not None else "-",
                "calibration": calibration_text(plan.calibration)
                if plan is not None
                else alternative.unavailable,
            }
        )
    return rows


def options_data(found: list[Alternative]) -> list[dict[str, Any]]:
    """The alternatives for --json: each plan's batch, patch, need and calibration, or why none."""
    return [
        {
            "change": a.change,
            "fits": a.fits,
            "batch": a.plan.batch if a.plan is not None else None,
            "patch": list(a.plan.patch) if a.plan is not None else None,
            "accumulate_grad_batches": getattr(a.plan, "accumulate_grad_batches", 1) if a.plan else None,
            "need": a.plan.need.to_dict() if a.plan is not None else None,
            "calibration": calibration_data(a.plan.calibration) if a.plan is not None else None,
            "unavailable": a.unavailable,
        }
        for a in found
    ]
