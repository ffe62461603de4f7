"""How a plan shows what it rests on: its memory need term by term, and the calibration that answered."""

from __future__ import annotations

from typing import Any

from memprobe.core.units import format_bytes
from memprobe.formula.calibration import Calibration
from memprobe.planning.exports import ddp_buckets, ddp_buckets_text
from memprobe.planning.need import MemoryNeed

TRACE_NOTE = "trace: checked against published real-GPU runs only; their gap is charged"


def _heldout_worst(calibration: Calibration) -> float | None:
    qualities = [q for q in (calibration.quality, calibration.reserved_quality) if q is not None]
    errors = [q.heldout_max_relative_error for q in qualities if q.heldout_max_relative_error is not None]
    return max(errors) if errors else None


def calibration_text(calibration: Calibration) -> str:
    """One line: device, where it was read from, date, held-out error, and whether a GPU checked it."""
    worst = _heldout_worst(calibration)
    fit = f"held-out worst {100 * worst:.1f}%" if worst is not None else "no held-out points"
    checked = "" if calibration.measured_on_gpu else f"; {TRACE_NOTE}"
    step = "" if calibration.measured_step == "memprobe" else f"step {calibration.measured_step}, "
    buckets = ddp_buckets(calibration)
    bucket_text = f"; {ddp_buckets_text(buckets)}" if buckets else ""
    return (
        f"{calibration.device} ({step}{calibration.source}, {calibration.created_at[:10]}, {fit}{checked}"
        f"{bucket_text})"
    )


def calibration_data(calibration: Calibration) -> dict[str, Any]:
    quality, reserved = calibration.quality, calibration.reserved_quality
    return {
        "device": calibration.device,
        "step": calibration.measured_step,
        "source": calibration.source,
        "created_at": calibration.created_at,
        "measured_on_gpu": calibration.measured_on_gpu,
        "note": None if calibration.measured_on_gpu else TRACE_NOTE,
        "points": quality.points,
        "heldout_median_relative_error": quality.heldout_median_relative_error,
        "heldout_max_relative_error": quality.heldout_max_relative_error,
        "reserved_heldout_max_relative_error": reserved.heldout_max_relative_error if reserved else None,
        "reserved_fitted": calibration.reserved_coefficients is not None,
        "fit_range": calibration.fit_range,
        **({"ddp_buckets": buckets} if (buckets := ddp_buckets(calibration)) else {}),
    }


def need_rows(need: MemoryNeed, budget_bytes: float) -> list[dict[str, Any]]:
    """The need's terms, then their total and the budget, as table rows."""
    rows = [
        {"term": name, "size": format_bytes(size), "source": source} for name, size, source in need.terms()
    ]
    rows.append(
        {
            "term": "total",
            "size": format_bytes(need.total_bytes),
            "source": f"{need.total_bytes / budget_bytes:.0%} of budget",
        }
    )
    rows.append({"term": "budget", "size": format_bytes(budget_bytes), "source": ""})
    return rows


def check_prediction(predicted_bytes: float, arch: str) -> None:
    """Never show a plan whose predicted peak is negative or not finite: its calibration is broken."""
    import math

    from memprobe.core.errors import DatabaseError

    if not math.isfinite(predicted_bytes) or predicted_bytes < 0:
        raise DatabaseError(
            f"the calibration of {arch} predicts a peak of {predicted_bytes} bytes: "
            "run `memprobe db check` and re-run `memprobe calibrate`"
        )
