"""Charge trace plans the gap a user's own real GPU runs measured, when there are any.

A snapshot imported with ``memprobe snapshot import`` is a real peak reserved of one
configuration on one GPU. A trace calibration of the same training setup predicts that
configuration without torch; the worst share by which a real run reserved more than the
prediction (plus the CUDA-only term every trace plan charges) replaces the published
evidence in that calibration's margin, and the plan names the snapshots it came from.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from memprobe.core.archs.registry import get_arch
from memprobe.core.errors import MemprobeError
from memprobe.core.measurement import Measurement
from memprobe.formula.calibration import Calibration
from memprobe.planning.overheads import UNCALIBRATED_RESERVE_ALLOWANCE, trace_evidence

SNAPSHOT_SOURCE = "snapshot"


def snapshot_measurements(db_path: str | Path | None) -> list[Measurement]:
    """The imported real runs in the user's database (none when it does not exist)."""
    from memprobe.store.database import Database, database_exists

    if not database_exists(db_path):
        return []
    with Database.open(db_path, create=False, readonly=True) as db:
        return [m for m in db.measurements(reserved_source=SNAPSHOT_SOURCE) if m.ok and m.peak_reserved_bytes]


def charge_snapshot_evidence(
    calibrations: list[Calibration], snapshots: list[Measurement]
) -> list[Calibration]:
    """Each trace calibration with imported runs of its setup, charged the gap they measured."""
    if not snapshots:
        return calibrations
    return [_charged(calibration, snapshots) if not calibration.measured_on_gpu else calibration
            for calibration in calibrations]  # fmt: skip


def _charged(calibration: Calibration, snapshots: list[Measurement]) -> Calibration:
    same_setup = [m for m in snapshots if _same_setup(calibration, m)]
    if not same_setup:
        return calibration
    fixed = trace_evidence().cuda_only_allocation_bytes
    gaps = []
    for m in same_setup:
        try:
            shape = (get_arch(m.config.arch), m.config.patch, m.config.batch, m.config.in_channels,
                     m.config.out_channels)  # fmt: skip
            predicted = calibration.predict_reserved_bytes(*shape)
            if predicted is None:  # no reserve fitted: plans charge the named allowance instead
                predicted = calibration.predict_peak_bytes(*shape) * (1 + UNCALIBRATED_RESERVE_ALLOWANCE)
        except MemprobeError:
            continue
        if predicted:
            gaps.append(((m.peak_reserved_bytes or 0) - predicted - fixed) / predicted)
    if not gaps:
        return calibration
    gpus = sorted({m.environment.device_name for m in same_setup})
    source = (
        f"{len(gaps)} imported snapshot{'s' if len(gaps) > 1 else ''} of {calibration.arch} on {', '.join(gpus)} "
        "(memprobe snapshot import): the worst reserve under-prediction"
    )
    return replace(calibration, trace_gap=max(0.0, max(gaps)), trace_gap_source=source)


def _same_setup(calibration: Calibration, m: Measurement) -> bool:
    config = m.config
    return (
        config.arch == calibration.arch
        and config.precision.value == calibration.precision
        and config.optimizer.value == calibration.optimizer
        and config.deep_supervision == calibration.deep_supervision
        and config.step == calibration.step
        and config.checkpointing == calibration.checkpointing
        and (config.strategy.value, config.world_size) == (calibration.strategy, calibration.world_size)
    )
