"""Rebuild nnU-Net's shipped topologies and topology families (memprobe/data/nnunet_*.json) on trace.

The topologies are those nnU-Net's planners visit for the three fingerprints of the
side-by-side benchmark (benchmarks/nnunet_side_by_side.py) with the default, ResEnc M and
ResEnc L presets, as `memprobe nnunet plan` plans them, plus the topology of nnU-Net's own plan
for each. Each plan is made by the library call behind that command on a database of its own
(calibration/nnunet_trace.sqlite), which calibrates what it visits. A calibration in
benchmarks/nnunet_calibrations.json of the same topology, precision and step, taken by the same
memprobe and torch, is reused instead of measured again.

The calibration design points of every shipped topology are measured into the same database
(reused on a re-run, so an interrupted build resumes). A topology's calibration is refitted to
them with its backward pass in parts (``fit_topology``) and the refit shipped where it holds
the held-out points better than the stored one. Each network's topology family is fitted to
the design points of all its shipped topologies and validated by leaving each topology out.
Run: `make shipped`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK_CALIBRATIONS = ROOT / "benchmarks" / "nnunet_calibrations.json"
GB = 10**9  # nnU-Net's VRAM targets are in GB
BETTER_BY = 1e-4  # a refit replaces a reused calibration when its held-out worst error is 0.01% smaller


def _reusable(path: Path, environment: dict[str, Any]) -> list[Any]:
    """The benchmark's calibrations of nnU-Net's step taken by this memprobe and torch."""
    from memprobe.integrations.nnunet.topology_sources import OPTIMIZER, PRECISION, STEP
    from memprobe.store.row_checks import calibration_from_fields

    if not path.is_file():
        return []
    found = []
    for item in json.loads(path.read_text()):
        calibration = calibration_from_fields(item, source="user")
        same_code = all(
            calibration.environment.get(key) == environment[key]
            for key in ("memprobe_version", "torch_version")
        )
        modes = (calibration.precision, calibration.optimizer, calibration.step, calibration.deep_supervision)
        if same_code and calibration.device == "trace" and modes == (PRECISION, OPTIMIZER, STEP, True):
            found.append(calibration)
    return found


def _import_missing(db: Path, calibrations: Iterable[Any]) -> int:
    """Store the calibrations whose key the database lacks; return how many."""
    from memprobe.store.database import Database

    with Database.open(db) as database:
        have = {c.key for c in database.calibrations()}
        added = [c for c in calibrations if c.key not in have]
        for calibration in added:
            database.add_calibration(calibration)
    return len(added)


def _plan_all(work: Path, db: Path) -> list[str]:
    """Plan every benchmark fingerprint with every preset; the topologies visited, in order."""
    from benchmarks.nnunet_side_by_side import DATASETS, NAME, PRESETS
    from memprobe.integrations.nnunet.plan_run import plan_dataset
    from memprobe.integrations.nnunet.planner import planner_base, topology_arch
    from tests.nnunet_dataset import write_dataset

    visited: list[str] = []
    for label, (spacings, shapes, channels, classes) in DATASETS.items():
        for folder in ("nnUNet_raw", "nnUNet_preprocessed"):
            for path in sorted((work / folder).glob(f"{NAME}*"), reverse=True):
                _remove(path)
        write_dataset(work, NAME, spacings, shapes, channels, classes)
        for preset, gigabytes in PRESETS.items():
            started = time.perf_counter()
            plan = plan_dataset(NAME, gigabytes * GB, preset, device="trace", db=db)
            theirs = planner_base(preset)(NAME, gigabytes)
            theirs.lowres_creation_threshold = 0.0  # 3d_fullres only, as the side-by-side benchmark
            with contextlib.redirect_stdout(io.StringIO()):
                own = theirs.plan_experiment()["configurations"]["3d_fullres"]["architecture"]
            visited += [a.arch for a in plan.topologies]
            visited.append(topology_arch(own["network_class_name"], own["arch_kwargs"]))
            print(
                f"{label[:28]:28s} {preset:8s} {'x'.join(map(str, plan.patch)):12s} b{plan.batch} "
                f"{len(plan.topologies)} topologies, {len(plan.calibrated)} calibrated, "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
    return list(dict.fromkeys(visited))


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _design_measurements(db: Path, archs: list[str]) -> dict[str, tuple[list[Any], list[Any]]]:
    """The calibration design points of each topology on trace (fitted, held out): stored, else measured now."""
    from memprobe.backends import get_backend
    from memprobe.backends.recorder import MeasurementLog
    from memprobe.calibration_run import design_points, measure_or_record
    from memprobe.core.archs.registry import resolve_arch
    from memprobe.integrations.nnunet.topology_sources import TRACE_BUDGET_BYTES, design_base
    from memprobe.store.database import Database

    backend, measured = get_backend("trace"), {}
    with Database.open(db) as database:
        for arch in archs:
            started = time.perf_counter()
            points = design_points(design_base(arch), resolve_arch(arch))
            log = MeasurementLog(backend, database, TRACE_BUDGET_BYTES)
            measured[arch] = (
                [measure_or_record(log, config) for config in points.fit],
                [measure_or_record(log, config) for config in points.heldout],
            )
            print(
                f"{arch:45s} design points: {len(log.taken)} measured, {log.reused} reused, "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
    return measured


def _shipped(stored: dict[str, Any], measured: dict[str, tuple[list[Any], list[Any]]]) -> list[Any]:
    """Each topology's calibration: the stored one (reused), or a refit of its design points if that
    holds its held-out points better by ``BETTER_BY`` (``fit_topology``: the backward pass in parts)."""
    from dataclasses import replace

    from memprobe.core.archs.registry import resolve_arch
    from memprobe.integrations.nnunet.topology_sources import design_base, fit_topology

    shipped = []
    for arch, (fitted, heldout) in measured.items():
        environment = fitted[0].environment.to_dict()
        refit = fit_topology(resolve_arch(arch), design_base(arch), "trace", fitted, heldout, environment)
        own = stored.get(arch)
        error = lambda c: c.quality.heldout_max_relative_error or 0.0
        chosen = own if own is not None and error(own) <= error(refit) + BETTER_BY else refit
        print(
            f"{arch:45s} held-out worst: stored {'-' if own is None else f'{100 * error(own):.3f}%'}, "
            f"refit {100 * error(refit):.3f}%: shipping the {'stored' if chosen is own else 'refit'} one",
            flush=True,
        )
        shipped.append(replace(chosen, source="shipped"))
    return shipped


def _families(measured: dict[str, tuple[list[Any], list[Any]]], environment: dict[str, Any]) -> list[Any]:
    from dataclasses import replace

    from memprobe.core.archs.nnunet_specs import PLAIN, RESENC
    from memprobe.core.archs.registry import resolve_arch
    from memprobe.formula.topology_family import fit_family

    families = []
    for network in (PLAIN, RESENC):
        own = [
            m
            for arch, (fit, held) in measured.items()
            if arch.startswith(network + "[")
            for m in (*fit, *held)
        ]
        family = fit_family(network, own, resolve_arch, "trace", environment)
        families.append(replace(family, source="shipped"))
        print(repr(family))
        for topology, error in family.leave_one_out.items():
            print(f"  left out {topology:45s} worst error {100 * error:.3f}%")
    return families


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=ROOT / "calibration" / "nnunet_trace.sqlite")
    parser.add_argument("--out", type=Path, default=ROOT / "memprobe" / "data" / "nnunet_calibrations.json")
    parser.add_argument("--families", type=Path, default=ROOT / "memprobe" / "data" / "nnunet_families.json")
    parser.add_argument("--reuse", type=Path, default=BENCHMARK_CALIBRATIONS)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="memprobe-shipped-nnunet-"))
    # Before nnunetv2 reads them; and the build must not answer from what it rebuilds.
    os.environ.update(
        nnUNet_raw=str(work / "nnUNet_raw"),
        nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
        nnUNet_results=str(work / "nnUNet_results"),
        MEMPROBE_NO_SHIPPED="1",
        MEMPROBE_NO_GPU_DETECT="1",
    )
    sys.path.insert(0, str(ROOT))  # the benchmark's fingerprints and the tests' dataset writer
    from memprobe.backends import get_backend
    from memprobe.store.database import Database

    environment = get_backend("trace").environment().to_dict()
    args.db.parent.mkdir(parents=True, exist_ok=True)
    reused = _import_missing(args.db, _reusable(args.reuse, environment))
    print(f"reused {reused} calibrations from {args.reuse.relative_to(ROOT)}", flush=True)
    archs = sorted(_plan_all(work, args.db))
    with Database.open(args.db) as database:
        stored = {c.arch: c for c in database.calibrations() if c.arch in archs and c.device == "trace"}
    measured = _design_measurements(args.db, archs)
    shipped = [c.to_dict() for c in _shipped(stored, measured)]
    args.out.write_text(json.dumps(shipped, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(shipped)} topology calibrations to {args.out}", flush=True)
    families = _families(measured, environment)
    args.families.write_text(json.dumps([f.to_dict() for f in families], indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(families)} topology families to {args.families}")
    _remove(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
