"""`memprobe nnunet plan` from a fresh database (#28): shipped plans measure nothing, predictions hold."""

from __future__ import annotations

import pytest

pytest.importorskip("nnunetv2")

from benchmarks.nnunet_plan import full_run, run, write


def test_nnunet_plan_from_a_fresh_database() -> None:
    result = run(full_run())
    write(result)
    rows = result["rows"]
    shipped = [r for r in rows if r["scenario"] == "shipped"]
    assert len(shipped) == 9 and all(r["steps measured"] == 0 for r in shipped), shipped
    probed = [r for r in rows if r["allocated GiB (trace)"] is not None]
    assert probed
    for r in probed:  # the plan's predicted peak against a trace probe of the planned configuration
        error = r["allocated GiB (plan)"] / r["allocated GiB (trace)"] - 1
        assert abs(error) < 0.02, r
    assert all(r.get("second run: steps measured", 0) == 0 for r in rows)
    for r in result["unseen_topologies"]:  # a prediction nnunet plan relies on: within 2% of the trace
        if r["what nnunet plan does"] == "predicts":
            assert abs(float(r["worst error of the prediction"].rstrip("%"))) < 2.0, r
