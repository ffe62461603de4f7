"""The allocator model against the real CUDA caching allocator, on real recorded traces.

Every snapshot in ``benchmarks/data/gpu_traces`` (recorded on NVIDIA GPUs, published by others;
``sources.json`` names each) is replayed through the model from the state rebuilt at its first
event, and compared with what the real allocator did: peak reserved, peak allocated, and each
allocation's decision (cached block or a new segment of some size). This measures the allocator
model alone, on other networks' traces; it says nothing about how well memprobe's trace backend
predicts the allocations of a 3D network.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from benchmarks.harness import ResultTable, gib, percent, write_results
from memprobe.snapshots.check import check_snapshot
from memprobe.snapshots.reader import load_snapshot

TRACES = Path(__file__).parent / "data" / "gpu_traces"
MEDIAN_RESERVED_ERROR, WORST_RESERVED_ERROR, MEDIAN_AGREEMENT = 0.01, 0.05, 0.99


def test_snapshot_replay_table() -> None:
    sources = {entry["file"]: entry for entry in json.loads((TRACES / "sources.json").read_text())}
    rows, records, errors, agreements = [], [], [], []
    for path in sorted(TRACES.glob("*.json.gz")):
        started = time.perf_counter()
        result = check_snapshot(load_snapshot(path))
        seconds = time.perf_counter() - started
        source = sources[path.name]
        error = result.peak_reserved_error
        errors.append(abs(error))
        agreements.append(result.decision_agreement)
        rows.append({
            "trace": f"{source['repository']}:{source['path']}",
            "events": result.events_replayed,
            "real peak reserved GiB": gib(result.real_peak_reserved_bytes),
            "model GiB": gib(result.simulated_peak_reserved_bytes),
            "reserved error": percent(error),
            "real peak allocated GiB": gib(result.real_peak_allocated_bytes),
            "model allocated GiB": gib(result.simulated_peak_allocated_bytes),
            "same decisions": f"{result.decision_agreement:.2%}",
            "replay s": f"{seconds:.2f}",
        })  # fmt: skip
        records.append({**source, **result.to_dict(), "replay_seconds": round(seconds, 3)})
    median_error, worst_error = statistics.median(errors), max(errors)
    median_agreement = statistics.median(agreements)
    notes = (
        "What this measures: the allocator model alone (memprobe/backends/caching_allocator.py), replaying real "
        "traces' own requests, on transformer language models recorded on NVIDIA GPUs by others; not memprobe's "
        "tracing of 3D segmentation networks.",
        "Real peaks are the real allocator's over the recorded trace, rebuilt from its addresses (reserved from "
        "its segments, allocated from its blocks); model peaks come from the model deciding every allocation for "
        "itself from the same start state, with each run of segment_free events applied as one empty_cache().",
        f"|peak reserved error|: median {median_error:.3%} (target {MEDIAN_RESERVED_ERROR:.0%}), worst "
        f"{worst_error:.3%} (target {WORST_RESERVED_ERROR:.0%}); same decisions: median {median_agreement:.2%} "
        f"(target {MEDIAN_AGREEMENT:.0%}), over {len(rows)} traces.",
        "Sources: benchmarks/data/gpu_traces/sources.json (repository, path and commit of every original).",
    )
    write_results(
        ResultTable("snapshot_replay", "Allocator model vs real CUDA allocator traces", rows, records, notes)
    )
    assert median_error <= MEDIAN_RESERVED_ERROR and worst_error <= WORST_RESERVED_ERROR
    assert median_agreement >= MEDIAN_AGREEMENT
