"""`memprobe nnunet plan` from a fresh database (#28): what one command costs and what it plans.

Three scenarios, each plan made by the library call behind the command, on trace, into a
database that did not exist before (one per dataset, as a user with a new dataset has):

- **shipped**: the three fingerprints of the side-by-side benchmark (benchmarks/nnunet_side_by_side.py)
  with the default, ResEnc M and ResEnc L presets, answered by the calibrations memprobe ships;
- **nothing shipped**: the same plans with MEMPROBE_NO_SHIPPED=1, so every topology the planner
  visits is calibrated on the spot; each plan is then made again on the same database;
- **unseen**: fingerprints the shipped files were not built from, answered by shipped
  calibrations, predictions of the topology families, or calibrations made on the spot.

Every row gives nnU-Net's own plan (its planner and proxy, same budget) beside memprobe's, the
topologies the planner visited by where their figures came from, the steps measured, the wall
time, and the peak a trace probe of the planned configuration measures against the plan's
predicted allocated peak. The second table is each shipped family's leave-one-topology-out error.

    PYTHONPATH=. python -m benchmarks.nnunet_plan [--all]

A restricted benchmark run (``$MEMPROBE_BENCH_ARCHS`` set, as ``make test`` does) runs only the
shipped scenario and one unseen dataset; ``make bench`` or ``--all`` (``$MEMPROBE_BENCH_NNUNET=all``)
run everything (about 15 minutes on 2 cores). Needs nnunetv2 (``memprobe[nnunet]``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.harness import ARCHS_VARIABLE, GIB, ResultTable, percent, write_results

FULL_VARIABLE = "MEMPROBE_BENCH_NNUNET"
NAME = "Dataset985_PlanBench"
GB = 10**9
# name: (spacings of the cases, shapes of the cases, channels, classes); none was shown to the build
UNSEEN: dict[str, tuple[list[list[float]], list[list[int]], int, int]] = {
    "prostate-like MRI (3.6 x 0.62 x 0.62 mm, 2 channels, 3 classes)": (
        [[3.6, 0.62, 0.62]] * 8, [[20, 320, 320]] * 8, 2, 3,
    ),
    "kidney-like CT (1 x 0.78 x 0.78 mm, 4 classes)": ([[1.0, 0.78, 0.78]] * 8, [[400, 512, 512]] * 8, 1, 4),
    "heart-like MRI (1.37 x 1.25 x 1.25 mm)": ([[1.37, 1.25, 1.25]] * 8, [[115, 320, 232]] * 8, 1, 2),
    "hippocampus-like MRI (1 mm, small, 3 classes)": ([[1.0, 1.0, 1.0]] * 8, [[36, 50, 35]] * 8, 1, 3),
}  # fmt: skip
# Topologies none of the shipped files was built from, each measured at its calibration design points
UNSEEN_TOPOLOGIES = (
    "nnunet[222.222.222.222.222.222]",
    "nnunet[222.222.222.222.222.221]",
    "nnunet[122.222.222.222.222.222.222]",
    "nnunet[122.122.122.222.222]",
    "nnunet-resenc[122.222.222.222]",
    "nnunet-resenc[222.222.222.222.222.222]",
    "nnunet-resenc[222.222.222.222.222.221]",
    "nnunet-resenc[122.122.122.222.222]",
)


def full_run() -> bool:
    """Everything under ``make bench`` or ``$MEMPROBE_BENCH_NNUNET=all``; a restricted run does less."""
    return os.environ.get(FULL_VARIABLE) == "all" or not os.environ.get(ARCHS_VARIABLE)


@contextlib.contextmanager
def _environment(work: Path, shipped: bool) -> Iterator[None]:
    """nnU-Net's folders under ``work`` (its modules read them at import), shipped files on or off."""
    import nnunetv2.paths
    from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner as planner
    from nnunetv2.utilities import dataset_name_id_conversion as conversion

    folders = {
        "nnUNet_raw": str(work / "nnUNet_raw"),
        "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
    }
    saved = {m: {k: getattr(m, k, None) for k in folders} for m in (nnunetv2.paths, planner, conversion)}
    saved_shipped = os.environ.pop("MEMPROBE_NO_SHIPPED", None)
    if not shipped:
        os.environ["MEMPROBE_NO_SHIPPED"] = "1"
    for module in saved:
        for key, value in folders.items():
            setattr(module, key, value)
    try:
        yield
    finally:
        for module, values in saved.items():
            for key, value in values.items():
                setattr(module, key, value)
        os.environ.pop("MEMPROBE_NO_SHIPPED", None)
        if saved_shipped is not None:
            os.environ["MEMPROBE_NO_SHIPPED"] = saved_shipped


def _nnunets_own(preset: str, gigabytes: int) -> dict[str, Any]:
    """nnU-Net's own 3d_fullres plan (its proxy), networks built on the meta device for speed only."""
    import torch

    from memprobe.integrations.nnunet.planner import planner_base

    planner = planner_base(preset)(NAME, gigabytes)
    planner.lowres_creation_threshold = 0.0  # 3d_fullres only, as the side-by-side benchmark
    with torch.device("meta"), contextlib.redirect_stdout(io.StringIO()):
        return dict(planner.plan_experiment()["configurations"]["3d_fullres"])


def _traced_peak(plan: Any, channels: int, classes: int) -> int | None:
    """The peak allocated bytes a trace probe measures for the plan's configuration."""
    from memprobe.backends import get_backend
    from memprobe.core.config import make_step_config
    from memprobe.integrations.nnunet.topology_sources import OPTIMIZER, PRECISION, STEP

    config = make_step_config(
        plan.arch, plan.patch, plan.batch, precision=PRECISION, optimizer=OPTIMIZER,
        in_channels=channels, out_channels=classes, deep_supervision=True, step=STEP,
    )  # fmt: skip
    measured = get_backend("trace").measure(config)
    return measured.peak_allocated_bytes if measured.ok else None


def _row(
    scenario: str, dataset: str, preset: str, plan: Any, theirs: dict[str, Any], traced: int | None
) -> dict[str, Any]:
    figures = [a.figure.value for a in plan.topologies]
    chosen = next(a for a in plan.topologies if a.arch == plan.arch)
    predicted = plan.need.allocated_bytes
    return {
        "scenario": scenario,
        "dataset": dataset,
        "preset": preset,
        "patch (memprobe)": "x".join(map(str, plan.patch)),
        "batch (memprobe)": plan.batch,
        "patch (nnU-Net)": "x".join(map(str, theirs["patch_size"])),
        "batch (nnU-Net)": theirs["batch_size"],
        "topology": plan.arch,
        "its figure": chosen.figure.value,
        "visited: measured/calibrated/predicted": "/".join(
            str(figures.count(f)) for f in ("measured", "calibrated", "predicted")
        ),
        "steps measured": plan.steps_measured,
        "wall s": round(plan.seconds, 1),
        "allocated GiB (plan)": round(predicted / GIB, 3),
        "allocated GiB (trace)": None if traced is None else round(traced / GIB, 3),
        "error": None if traced is None else percent(predicted / traced - 1),
    }


def _plans(
    scenario: str,
    datasets: dict[str, tuple[list[list[float]], list[list[int]], int, int]],
    presets: dict[str, int],
    shipped: bool,
    probe: bool,
    again: bool = False,
) -> list[dict[str, Any]]:
    """Plan each dataset with each preset on a database of its own; a row per plan."""
    from memprobe.integrations.nnunet.plan_run import plan_dataset
    from tests.nnunet_dataset import write_dataset

    rows = []
    for label, (spacings, shapes, channels, classes) in datasets.items():
        work = Path(tempfile.mkdtemp(prefix="memprobe-nnunet-plan-"))
        db = work / "fresh.sqlite"
        write_dataset(work, NAME, spacings, shapes, channels, classes)
        with _environment(work, shipped):
            for preset, gigabytes in presets.items():
                plan = plan_dataset(NAME, gigabytes * GB, preset, device="trace", db=db)
                theirs = _nnunets_own(preset, gigabytes)
                traced = _traced_peak(plan, channels, classes) if probe else None
                row = _row(scenario, label, preset, plan, theirs, traced)
                if again:
                    row["second run: steps measured"] = plan_dataset(
                        NAME, gigabytes * GB, preset, device="trace", db=db
                    ).steps_measured
                rows.append(row)
        shutil.rmtree(work, ignore_errors=True)
    return rows


def _leave_one_out() -> list[dict[str, Any]]:
    """Each shipped family's error on each topology when fitted without it."""
    from memprobe.store.calibration_sources import shipped_topology_families

    rows = []
    for family in shipped_topology_families():
        for topology, error in family.leave_one_out.items():
            rows.append({
                "network": family.network,
                "topology left out": topology,
                "stages": topology.count(".") + 2,
                "worst error on its design points": percent(error, sign=""),
            })  # fmt: skip
    return rows


def _unseen_topologies() -> list[dict[str, Any]]:
    """Each unseen topology's design points traced, against its family's prediction (validated or not)."""
    from memprobe.backends import get_backend
    from memprobe.calibration_run import design_points
    from memprobe.core.archs.nnunet_topology import parse_arch_name
    from memprobe.core.archs.registry import resolve_arch, smallest_patch
    from memprobe.core.config import make_step_config
    from memprobe.integrations.nnunet.parameters import parameter_model
    from memprobe.store.calibration_sources import shipped_topology_families

    families = {f.network: f for f in shipped_topology_families()}
    backend, rows = get_backend("trace"), []
    for arch in UNSEEN_TOPOLOGIES:
        network, topology = parse_arch_name(arch)  # type: ignore[misc]
        spec, family = resolve_arch(arch), families[network]
        calibration = family.calibration_for(spec, parameter_model(network, topology))
        base = make_step_config(
            arch, smallest_patch(spec), 1, precision="fp16-mixed", optimizer="sgd", deep_supervision=True,
            step="nnunet",
        )  # fmt: skip
        points = design_points(base, spec)
        errors = []
        for config in (*points.fit, *points.heldout):
            traced = backend.measure(config).peak_allocated_bytes or 0
            c = config
            predicted = calibration.predict_peak_bytes(spec, c.patch, c.batch, c.in_channels, c.out_channels)
            errors.append(predicted / traced - 1)
        outside = family.uncovered(spec)
        rows.append({
            "topology (never shipped)": arch,
            "stages": len(spec.stage_features),
            "validated range": "inside" if outside is None else f"outside: {outside}",
            "what nnunet plan does": "predicts" if outside is None else "calibrates",
            "worst error of the prediction": percent(max(errors, key=abs)),
        })  # fmt: skip
    return rows


def run(full: bool) -> dict[str, Any]:
    """Every scenario (``full``) or the shipped one and one unseen dataset; the rows, and the time taken."""
    from benchmarks.nnunet_side_by_side import DATASETS, PRESETS

    os.environ["MEMPROBE_NO_GPU_DETECT"] = "1"  # planned on trace, whatever this machine has
    started = time.perf_counter()
    rows = _plans("shipped", DATASETS, PRESETS, shipped=True, probe=full)
    unseen = UNSEEN if full else dict(list(UNSEEN.items())[:1])
    rows += _plans("unseen", unseen, PRESETS if full else {"default": 8}, shipped=True, probe=True)
    unseen_topologies = _unseen_topologies() if full else []
    if full:
        rows += _plans("nothing shipped", DATASETS, PRESETS, shipped=False, probe=False, again=True)
    seconds = round(time.perf_counter() - started)
    return {"rows": rows, "unseen_topologies": unseen_topologies, "seconds": seconds, "full": full}


def write(result: dict[str, Any]) -> Path:
    from memprobe.store.calibration_sources import shipped_topology_families

    rows = result["rows"]
    loto = _leave_one_out()
    families = {f.network: f for f in shipped_topology_families()}
    worst = {n: percent(f.quality.heldout_max_relative_error or 0.0, sign="") for n, f in families.items()}
    notes = (
        "Each plan: `memprobe nnunet plan`'s library call (`plan_dataset`) on trace, budget nnU-Net's own "
        "target in GB (default and ResEnc M 8, ResEnc L 24), into a database that did not exist before "
        "(one per dataset); nnU-Net's own plan: its planner and proxy for the same budget.",
        "visited: the topologies nnU-Net's planner asked about while shrinking the patch, by where their "
        "figures came from: measured (a calibration made before: shipped, or earlier in the same database), "
        "calibrated (on the spot), predicted (the network's topology family; the topology was never measured).",
        "allocated GiB (plan) is the plan's predicted peak of allocated tensors, (trace) a trace probe of the "
        "planned patch and batch; error = plan / trace - 1.",
        f"Leave-one-topology-out (table below): each shipped family fitted without one topology predicts that "
        f"topology's 14 design points; worst over all: {', '.join(f'{n} {w}' for n, w in worst.items())}.",
        "Topologies never shipped (last table, full run only): measured at their 14 design points and predicted by "
        "the shipped family; `nnunet plan` predicts those inside the validated range and calibrates the others.",
        f"This run: {len(rows)} plans in {result['seconds']} s"
        + ("" if result["full"] else " (a restricted run: `--all` or `make bench` runs every scenario)")
        + ". Reproduce: `PYTHONPATH=. python -m benchmarks.nnunet_plan --all`.",
    )
    path = write_results(
        ResultTable("nnunet_plan", "memprobe nnunet plan from a fresh database", rows, rows, notes,
                    extra={"leave_one_topology_out": loto, "unseen_topologies": result.get("unseen_topologies", []),
                           "seconds": result["seconds"], "full": result["full"]})
    )  # fmt: skip
    text = _markdown("Leave one topology out", loto)
    text += _markdown(
        "Topologies never shipped: each design point traced against its family's prediction",
        result.get("unseen_topologies", []),
    )
    path.write_text(path.read_text() + text)
    return path


def _markdown(title: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["", f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--all", action="store_true", help="every scenario (default: as $MEMPROBE_BENCH_NNUNET)"
    )
    arguments = parser.parse_args()
    print(write(run(arguments.all or full_run())).read_text())


if __name__ == "__main__":
    main()
