"""Published real-GPU runs beside memprobe's trace predictions, and the evidence plans charge.

Each run in ``benchmarks/data/published_runs.json`` (a configuration whose GPU memory was
published with enough detail to rebuild it, with its source) is probed on the trace backend:
allocated and (simulated) reserved peaks of the training step, and the whole need a trace plan
charges around them. Where the published figures are exact (not a lower bound from an OOM), the
gaps become the evidence in ``memprobe/data/gpu_evidence.json``: the largest allocated gap (CUDA
allocations a trace cannot see, such as cuDNN workspaces) and the reserved under-prediction left
beyond it, as a share of the predicted reserve. Plans on trace calibrations charge both.

    PYTHONPATH=. python -m benchmarks.published_runs            # the table, in benchmarks/results
    PYTHONPATH=. python -m benchmarks.published_runs --write-evidence
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memprobe.core.units import parse_bytes

DATA = Path(__file__).parent / "data" / "published_runs.json"
EVIDENCE = Path(__file__).resolve().parents[1] / "memprobe" / "data" / "gpu_evidence.json"
SNAPSHOT_TABLE = "benchmarks/results/snapshot_replay.md"
TABLE = "benchmarks/results/published_runs.md"


@dataclass(frozen=True)
class Comparison:
    run: dict[str, Any]
    predicted_allocated_bytes: int
    predicted_reserved_bytes: int
    real_allocated_bytes: int | None  # None: the source gives a lower bound only
    real_reserved_bytes: int | None
    allocated_at_least_bytes: int | None


def published_runs() -> list[dict[str, Any]]:
    return list(json.loads(DATA.read_text())["runs"])


def compare(run: dict[str, Any]) -> Comparison:
    """Probe ``run``'s configuration on trace and pair it with the published figures."""
    from memprobe.backends.trace_backend import TraceBackend
    from memprobe.core.config import make_step_config

    config = make_step_config(
        run["arch"], run["patch"], run["batch"], precision=run["precision"], optimizer=run["optimizer"],
        in_channels=run.get("in_channels", 1), out_channels=run.get("out_channels", 2), step=run["step"],
    )  # fmt: skip
    measured = TraceBackend().measure(config)
    assert measured.ok and measured.peak_reserved_bytes is not None, run["id"]
    at_least = None
    if "allocated_at_oom" in run:
        at_least = parse_bytes(run["allocated_at_oom"]) + parse_bytes(run["failed_request"])
    return Comparison(
        run,
        measured.peak_allocated_bytes or 0,
        measured.peak_reserved_bytes,
        parse_bytes(run["peak_allocated"]) if "peak_allocated" in run else None,
        parse_bytes(run["peak_reserved"]) if "peak_reserved" in run else None,
        at_least,
    )


def evidence(comparisons: list[Comparison]) -> dict[str, Any]:
    """The gaps plans charge on trace, from the exact published figures.

    ``cuda_only_allocation_bytes`` is the largest (real - predicted) allocated peak;
    ``reserved_underprediction`` the largest share of the predicted reserve by which the real
    reserve exceeded predicted reserved + that allocation gap. Together a plan covers every run.
    """
    exact = [
        c for c in comparisons if c.real_allocated_bytes is not None and c.real_reserved_bytes is not None
    ]
    gap = max(0, *(c.real_allocated_bytes - c.predicted_allocated_bytes for c in exact))  # type: ignore[operator]
    shares = [
        (c.real_reserved_bytes - c.predicted_reserved_bytes - gap) / c.predicted_reserved_bytes for c in exact
    ]  # type: ignore[operator]
    return {
        "cuda_only_allocation_bytes": gap,
        "reserved_underprediction": round(max(0.0, *shares), 6),
        "runs": [c.run["id"] for c in exact],
        "gpus": sorted({c.run["gpu"] for c in exact}),
        "source": TABLE,
    }


def allocator_model_evidence() -> dict[str, Any]:
    """The snapshot-replay benchmark's summary (the allocator model against real traces)."""
    results = Path(__file__).parent / "results" / "snapshot_replay.json"
    records = json.loads(results.read_text())["records"]
    errors = sorted(abs(record["peak_reserved_error"]) for record in records)
    agreements = sorted(record["decision_agreement"] for record in records)
    return {
        "traces": len(records),
        "median_abs_reserved_error": errors[len(errors) // 2],
        "worst_abs_reserved_error": errors[-1],
        "median_decision_agreement": agreements[len(agreements) // 2],
        "source": SNAPSHOT_TABLE,
    }


def evidence_document(comparisons: list[Comparison]) -> dict[str, Any]:
    return {
        "about": "Derived, not typed: `PYTHONPATH=. python -m benchmarks.published_runs --write-evidence` writes "
        "this file; benchmarks/test_published_runs.py checks that it matches a fresh run.",
        "trace_vs_published_gpu_runs": evidence(comparisons),
        "allocator_model_vs_real_traces": allocator_model_evidence(),
    }


def main(arguments: list[str]) -> None:
    from benchmarks.test_published_runs import write_table

    comparisons = [compare(run) for run in published_runs()]
    write_table(comparisons)
    if "--write-evidence" in arguments:
        EVIDENCE.write_text(json.dumps(evidence_document(comparisons), indent=1) + "\n")
        print(f"wrote {EVIDENCE}")


if __name__ == "__main__":
    main(sys.argv[1:])
