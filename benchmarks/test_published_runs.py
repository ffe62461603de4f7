"""Published real-GPU runs beside trace predictions; the shipped evidence must match a fresh run."""

from __future__ import annotations

import json

from benchmarks.harness import ResultTable, gib, percent, write_results
from benchmarks.published_runs import EVIDENCE, Comparison, compare, evidence, published_runs


def write_table(comparisons: list[Comparison]) -> None:
    from memprobe.planning.overheads import CONTEXT_DEFAULTS, CUBLAS_WORKSPACE_BYTES, trace_evidence

    found = evidence(comparisons)
    rows, records = [], []
    for c in comparisons:
        run = c.run
        context = CONTEXT_DEFAULTS["ampere" if "A100" in run["gpu"] else "unknown"][0]
        whole = (c.predicted_reserved_bytes * (1 + found["reserved_underprediction"] + 0.01)
                 + found["cuda_only_allocation_bytes"] + context + CUBLAS_WORKSPACE_BYTES)  # fmt: skip
        real_alloc = (
            gib(c.real_allocated_bytes) if c.real_allocated_bytes else f">= {gib(c.allocated_at_least_bytes)}"
        )
        rows.append({
            "run": run["id"],
            "GPU": run["gpu"],
            "configuration": f"{run['arch'].rsplit(':', 1)[-1]} {'x'.join(map(str, run['patch']))} b{run['batch']} {run['precision']}",
            "read": "allocated, reserved" if c.real_reserved_bytes else "OOM message (lower bound)",
            "real allocated GiB": real_alloc,
            "trace allocated GiB": gib(c.predicted_allocated_bytes),
            "allocated gap": percent(c.real_allocated_bytes / c.predicted_allocated_bytes - 1) if c.real_allocated_bytes else "-",
            "real reserved GiB": gib(c.real_reserved_bytes) if c.real_reserved_bytes else "-",
            "simulated reserved GiB": gib(c.predicted_reserved_bytes),
            "reserved gap": percent(c.real_reserved_bytes / c.predicted_reserved_bytes - 1) if c.real_reserved_bytes else "-",
            "trace whole need GiB": gib(whole),
            "source verified": "yes" if run["source"]["verified"] else "quoted",
        })  # fmt: skip
        records.append({**run, "predicted_allocated_bytes": c.predicted_allocated_bytes,
                        "predicted_reserved_bytes": c.predicted_reserved_bytes, "whole_need_bytes": round(whole)})  # fmt: skip
    shipped = trace_evidence()
    notes = (
        "Real: figures published by others for the configuration in the row (benchmarks/data/published_runs.json "
        "gives each source: repository, path, commit, the quoted line). Trace: memprobe's trace backend on the same "
        "network, patch, batch, precision and loss family (training step only; AdamW for Adam, whose state is the "
        "same size); simulated reserved: its allocations replayed through the allocator model.",
        "The MONAI tutorial's peaks also cover validation (sliding_window_inference, roi 160x160x128, sw_batch_size "
        "4) in the same process, which a training-step trace does not run: part of the real reserve comes from there.",
        f"Evidence derived from the exact rows (plans on trace charge it): cuDNN/CUDA-only allocations "
        f"{found['cuda_only_allocation_bytes'] / 2**20:.0f} MiB (the largest allocated gap), and a reserve "
        f"under-prediction of {found['reserved_underprediction']:.1%} of the predicted reserve beyond that gap. "
        f"Shipped in memprobe/data/gpu_evidence.json: {shipped.cuda_only_allocation_bytes / 2**20:.0f} MiB and "
        f"{shipped.reserved_underprediction:.1%}.",
        "Trace whole need: simulated reserved x (1 + that under-prediction + the 1% least fit margin) + the CUDA-only "
        "term + the CUDA context default for the GPU's family + the cuBLAS workspace; it covers the exact rows by "
        "construction (they are where the allowances come from), so the check it gives is on new rows.",
    )
    write_results(
        ResultTable("published_runs", "Published real-GPU runs vs memprobe's trace", rows, records, notes)
    )


def test_published_runs_table_and_shipped_evidence() -> None:
    comparisons = [compare(run) for run in published_runs()]
    write_table(comparisons)
    found = evidence(comparisons)
    shipped = json.loads(EVIDENCE.read_text())["trace_vs_published_gpu_runs"]
    assert shipped["cuda_only_allocation_bytes"] == found["cuda_only_allocation_bytes"], (
        "rerun --write-evidence"
    )
    assert abs(shipped["reserved_underprediction"] - found["reserved_underprediction"]) < 1e-6, (
        "rerun --write-evidence"
    )
    for c in comparisons:  # an OOM's lower bound: the trace must not predict less than the GPU had allocated
        if c.allocated_at_least_bytes is not None:
            assert c.predicted_allocated_bytes >= c.allocated_at_least_bytes, c.run["id"]
