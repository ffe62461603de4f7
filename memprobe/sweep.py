"""Calibration sweeps: one submitit job per (architecture, precision, card type).

submitit's ``LocalExecutor`` runs the jobs as processes on this machine (a workstation, the
tests); its ``SlurmExecutor`` submits them to a SLURM cluster. memprobe schedules nothing
itself: it keeps, in ``sweep.json`` in the sweep folder, which job each calibration went to,
and reads each job's state from the result file submitit writes when it ends. Every job
calibrates on its node into the sweep's database (a file, or one PostgreSQL server for all
nodes), so a rerun resubmits only what has not finished.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from memprobe.errors import InvalidInputError
from memprobe.output_paths import write_atomically

STATE_FILE = "sweep.json"
ANY_CARD = "any"  # whatever card the node has (the executor's own --slurm-constraint, if any)


class JobState(StrEnum):
    MISSING = "missing"  # never submitted
    SUBMITTED = "submitted"  # queued or running
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class SweepJob:
    """One calibration of the sweep, and what became of it."""

    arch: str
    precision: str
    card: str
    state: JobState = JobState.MISSING
    job_id: str | None = None
    detail: str | None = None  # the error's last line, or the calibration's held-out error

    @property
    def key(self) -> str:
        return f"{self.arch}/{self.precision}/{self.card}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "precision": self.precision,
            "card": self.card,
            "state": self.state.value,
            "job_id": self.job_id,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class SweepSpec:
    """What to calibrate, where to store it, and how to run the jobs."""

    archs: tuple[str, ...]
    precisions: tuple[str, ...]
    cards: tuple[str, ...]  # card types; the measuring device of every job is ``device``
    db: str
    folder: Path
    executor: str = "local"  # local or slurm
    device: str | None = None  # cuda, trace or cpu; None: cuda if present, else trace
    budget: str | None = None
    slurm: dict[str, str] = field(default_factory=dict)  # partition, gres, constraint, time

    def jobs(self) -> list[SweepJob]:
        return [
            SweepJob(arch, precision, card)
            for arch in self.archs
            for precision in self.precisions
            for card in self.cards
        ]


def calibration_job(
    arch: str, precision: str, device: str | None, budget: str | None, db: str
) -> dict[str, Any]:
    """Run on the node: calibrate one (architecture, precision) into ``db``."""
    from memprobe.api import calibrate

    report = calibrate(arch, precision, device=device, budget=budget, db=db)
    quality = report.calibration.quality
    return {"device": report.calibration.device, "points": quality.points}


def sweep_status(spec: SweepSpec) -> list[SweepJob]:
    """Each job of ``spec``: missing, submitted, done or failed (from submitit's result files)."""
    submitted = _read_state(spec.folder)
    result = []
    for job in spec.jobs():
        job_id = submitted.get(job.key)
        if job_id is None:
            result.append(job)
            continue
        state, detail = _job_state(spec.folder, job_id)
        result.append(SweepJob(job.arch, job.precision, job.card, state, job_id, detail))
    return result


def run_sweep(
    spec: SweepSpec,
    *,
    wait: bool = False,
    on_progress: Callable[[SweepJob], None] = lambda job: None,
) -> list[SweepJob]:
    """Submit every job of ``spec`` that is missing or failed; with ``wait``, wait for them.

    Raises:
        InvalidInputError: the executor cannot run here (submitit or ``sbatch`` missing).
    """
    executor = _executor(spec)
    state = _read_state(spec.folder)
    handles = {}
    for job in sweep_status(spec):
        if job.state in (JobState.DONE, JobState.SUBMITTED):
            continue
        if spec.executor == "slurm" and job.card != ANY_CARD:
            executor.update_parameters(constraint=job.card)
        handle = executor.submit(calibration_job, job.arch, job.precision, spec.device, spec.budget, spec.db)
        handles[job.key] = handle
        state[job.key] = str(handle.job_id)
        _write_state(spec.folder, state)  # each job is recorded as submitted, so a rerun never repeats it
        on_progress(SweepJob(job.arch, job.precision, job.card, JobState.SUBMITTED, str(handle.job_id)))
    if wait:
        for key, handle in handles.items():
            _wait(handle)
            on_progress(next(job for job in sweep_status(spec) if job.key == key))
    return sweep_status(spec)


def _wait(handle: Any) -> None:
    try:
        handle.result()
    except Exception:
        return


def _executor(spec: SweepSpec) -> Any:
    try:
        import submitit
    except ImportError:
        raise InvalidInputError("memprobe sweep needs submitit: pip install 'memprobe[cluster]'") from None
    spec.folder.mkdir(parents=True, exist_ok=True)
    if spec.executor == "local":
        local = submitit.LocalExecutor(folder=spec.folder)
        local.update_parameters(timeout_min=24 * 60)
        return local
    if spec.executor != "slurm":
        raise InvalidInputError(f"--executor {spec.executor}: use local or slurm")
    if shutil.which("sbatch") is None:
        raise InvalidInputError(
            "--executor slurm needs SLURM's sbatch on PATH: run on a cluster login node, "
            "or install slurm-client; use --executor local on a workstation"
        )
    executor = submitit.SlurmExecutor(folder=spec.folder)
    executor.update_parameters(**{name: value for name, value in spec.slurm.items() if value})
    return executor


def _job_state(folder: Path, job_id: str) -> tuple[JobState, str | None]:
    import pickle

    from submitit.core.utils import JobPaths

    paths = JobPaths(folder, job_id=job_id)
    if not paths.result_pickle.exists():
        return JobState.SUBMITTED, None
    try:
        with paths.result_pickle.open("rb") as stream:
            outcome, value = pickle.load(stream)  # written by submitit in our own job
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as error:
        return JobState.FAILED, f"unreadable result: {error}"
    if outcome == "success":
        return JobState.DONE, f"{value.get('points')} points on {value.get('device')}"
    lines = str(value).strip().splitlines()
    return JobState.FAILED, lines[-1] if lines else "failed"


def _read_state(folder: Path) -> dict[str, str]:
    path = folder / STATE_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidInputError(
            f"{path} is damaged ({error}): move it away to start the sweep afresh"
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.get("jobs", {}).values()):
        raise InvalidInputError(f"{path} is not a memprobe sweep state: move it away")
    return dict(data.get("jobs", {}))


def _write_state(folder: Path, jobs: dict[str, str]) -> None:
    write_atomically(folder / STATE_FILE, json.dumps({"jobs": jobs}, indent=1, sort_keys=True) + "\n")


def default_folder(db: str) -> Path:
    """Beside a database file (``FILE.sweep``); for a server, ``memprobe-sweep`` here."""
    from memprobe.db import database_url

    return Path("memprobe-sweep") if database_url(db) else Path(f"{db}.sweep")


def cards(names: Sequence[str]) -> tuple[str, ...]:
    """The card types asked for; none named: one job per (arch, precision) on any card."""
    return tuple(names) or (ANY_CARD,)
