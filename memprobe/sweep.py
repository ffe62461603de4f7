"""Calibration sweeps: one submitit job per (architecture, precision, card type).

submitit's ``LocalExecutor`` runs the jobs as processes on this machine (a workstation, the
tests); its ``SlurmExecutor`` submits them to a SLURM cluster. memprobe schedules nothing
itself: it keeps, in ``sweep.json`` in the sweep folder, which job each calibration went to,
and reads each job's state from the result file that its job function, :func:`calibration_job`,
writes as JSON when it ends (``JOB_result.json``). submitit's own result file is a pickle, which
anyone who can write the sweep folder could replace with code: memprobe never reads it. A job
without a result file is still submitted while its process (local) or SLURM job is alive; one
that died without a result (killed, out of host memory, ``os._exit``) is failed, with the last
line of its error log, and a rerun resubmits it. Every job calibrates on its node into the
sweep's database (a file, or one PostgreSQL server for all nodes), so a rerun resubmits only
what has not finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from memprobe.core.config import Setup
from memprobe.core.errors import InvalidInputError
from memprobe.core.input_files import read_input_text, shown
from memprobe.core.output_paths import write_atomically
from memprobe.core.user_code import describe

STATE_FILE = "sweep.json"
_MAX_RESULT_BYTES = 1 << 20  # a job's outcome is a few hundred bytes
_MAX_DETAIL_CHARS = 500
ANY_CARD = "any"  # whatever card the node has (the executor's own --slurm-constraint, if any)


DEFAULT_PRECISION = "default"  # a job's precision when none is named: the default rule on its node


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
    layout: str = ""  # "" for one GPU, else "ddp x4" (a rank of data parallelism)
    variant: str = ""  # the Setup's other fields where they differ from the defaults: "sgd c4->3 ds"

    @property
    def key(self) -> str:
        key = f"{self.arch}/{self.precision}/{self.card}" + (f"/{self.layout}" if self.layout else "")
        return key + (f"/{self.variant}" if self.variant else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "precision": self.precision,
            "card": self.card,
            "layout": self.layout or "single",
            "variant": self.variant,
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
    strategy: str = "single"  # each job calibrates one rank of ddp or fsdp over world_size GPUs
    world_size: int = 1
    setup: dict[str, Any] = field(default_factory=dict)  # optimizer, channels, deep supervision, step, ...

    @property
    def layout(self) -> str:
        return "" if self.strategy == "single" else f"{self.strategy} x{self.world_size}"

    @property
    def variant(self) -> str:
        """The Setup's fields besides architecture, precision and layout that differ from the defaults."""
        defaults = {f.name: f.default for f in fields(Setup)}
        return " ".join(
            f"{name}={value}" for name, value in self.setup.items() if defaults.get(name) != value
        )

    def jobs(self) -> list[SweepJob]:
        return [
            SweepJob(arch, precision, card, layout=self.layout, variant=self.variant)
            for arch in self.archs
            for precision in self.precisions
            for card in self.cards
        ]


def calibration_job(
    arch: str,
    precision: str,
    device: str | None,
    gpu_mem: str | None,
    db: str,
    strategy: str = "single",
    world_size: int = 1,
    setup: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run on the node: calibrate one (architecture, precision, GPU layout) into ``db``.

    Under submitit, the outcome is also left as ``JOB_result.json`` in the sweep folder, for
    ``memprobe sweep --status``: done with its points and device, or failed with its error.
    """
    from memprobe.api import calibrate

    result_path = _own_result_path()
    try:
        report = calibrate(
            arch,
            None if precision == DEFAULT_PRECISION else precision,
            device=device,
            gpu_mem=gpu_mem,
            db=db,
            strategy=strategy,
            world_size=world_size,
            **(setup or {}),
        )
    except Exception as error:
        if result_path is not None:
            with contextlib.suppress(OSError):  # the error itself, in the job's log, matters more
                _write_result(result_path, {"state": JobState.FAILED.value, "detail": _error_line(error)})
        raise
    value = {"device": report.calibration.device, "points": report.calibration.quality.points}
    if result_path is not None:
        _write_result(result_path, {"state": JobState.DONE.value, **value})
    return value


def _result_path(folder: Path, job_id: str) -> Path:
    """Where job ``job_id`` of the sweep in ``folder`` leaves its outcome."""
    from submitit.core.utils import JobPaths

    return JobPaths(folder, job_id=job_id).folder / f"{job_id}_result.json"


def _own_result_path() -> Path | None:
    """This job's result file; None when not run by submitit (a library caller's own call)."""
    try:
        import submitit

        environment = submitit.JobEnvironment()
    except (ImportError, RuntimeError):
        return None
    return _result_path(environment.paths.folder, environment.job_id)


def _write_result(path: Path, outcome: dict[str, Any]) -> None:
    write_atomically(path, json.dumps(outcome) + "\n")


def _error_line(error: BaseException) -> str:
    return describe(error)[:_MAX_DETAIL_CHARS]


def sweep_status(spec: SweepSpec) -> list[SweepJob]:
    """Each job of ``spec``: missing, submitted, done or failed (from submitit's result files)."""
    submitted, executors = _read_state(spec.folder)
    result = []
    for job in spec.jobs():
        job_id = submitted.get(job.key)
        if job_id is None:
            result.append(job)
            continue
        state, detail = _job_state(spec.folder, job_id, executors.get(job.key, spec.executor))
        result.append(replace(job, state=state, job_id=job_id, detail=detail))
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
    state, executors = _read_state(spec.folder)
    handles = {}
    for job in sweep_status(spec):
        if job.state in (JobState.DONE, JobState.SUBMITTED):
            continue
        if spec.executor == "slurm" and job.card != ANY_CARD:
            executor.update_parameters(constraint=job.card)
        handle = executor.submit(
            calibration_job,
            job.arch,
            job.precision,
            spec.device,
            spec.budget,
            spec.db,
            spec.strategy,
            spec.world_size,
            spec.setup,
        )
        handles[job.key] = handle
        state[job.key] = str(handle.job_id)
        executors[job.key] = spec.executor
        # Each job is recorded as submitted, so a rerun never repeats it while it runs.
        _write_state(spec.folder, state, executors)
        on_progress(replace(job, state=JobState.SUBMITTED, job_id=str(handle.job_id)))
    if wait:
        for key, handle in handles.items():
            _wait(handle)
            on_progress(next(job for job in sweep_status(spec) if job.key == key))
    return sweep_status(spec)


def _wait(handle: Any) -> None:
    """Until the job has ended, with a result or without one (its state is read from its files)."""
    while not handle.done():
        time.sleep(0.2)


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


def _job_state(folder: Path, job_id: str, executor: str) -> tuple[JobState, str | None]:
    from submitit.core.utils import JobPaths

    result = _result_path(folder, job_id)
    if result.exists():
        return _outcome(result)
    ended = _ended_how(folder, job_id, executor)
    if ended is None:
        return JobState.SUBMITTED, None
    if result.exists():  # written just before the job ended
        return _outcome(result)
    paths = JobPaths(folder, job_id=job_id)
    last = _last_line(paths.stderr)
    log = f"; its log ends: {last}" if last else ""
    if paths.result_pickle.exists():  # never read: unpickling runs whatever code the file names
        return JobState.FAILED, (
            f"the job left no {result.name} (submitit's {paths.result_pickle.name} is a pickle, "
            f"which memprobe never reads: it could run code){log}"
        )
    return JobState.FAILED, ended + log


def _outcome(path: Path) -> tuple[JobState, str | None]:
    """Done or failed, as the JSON that :func:`calibration_job` wrote at the job's end says."""
    try:
        data = json.loads(read_input_text(path, "the job's result", _MAX_RESULT_BYTES))
    except (InvalidInputError, ValueError, RecursionError) as error:
        return JobState.FAILED, f"unreadable result {path.name}: {shown(error)}"
    if not isinstance(data, dict):
        return JobState.FAILED, f"{path.name} is not a memprobe job result: {shown(data)}"
    state, points, device, detail = (data.get(name) for name in ("state", "points", "device", "detail"))
    whole = isinstance(points, int) and not isinstance(points, bool)
    if state == JobState.DONE.value and whole and isinstance(device, str):
        return JobState.DONE, f"{points} points on {shown(device)}"
    if state == JobState.FAILED.value and isinstance(detail, str):
        return JobState.FAILED, shown(detail, _MAX_DETAIL_CHARS) or "failed"
    return JobState.FAILED, f"{path.name} is not a memprobe job result: {shown(data)}"


_SLURM_ALIVE = frozenset(
    {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "UNKNOWN"}
)


def _ended_how(folder: Path, job_id: str, executor: str) -> str | None:
    """None while the job may still write its result; else how it ended without one."""
    if executor == "slurm":
        import submitit

        state = str(submitit.SlurmJob(folder, job_id).state).upper()
        alive = state in _SLURM_ALIVE or state.startswith("UNKNOWN")
        return None if alive else f"SLURM ended the job ({state}) without a result"
    if job_id.isdigit() and _process_alive(int(job_id)):  # a local job's id is its process id
        return None
    return "the job's process ended without a result (killed or exited abruptly)"


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process holds the id now: not ours, but cannot tell
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _last_line(path: Path) -> str | None:
    """The last non-empty line of a job's log (its error, when it raised or crashed)."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    return lines[-1][:_MAX_DETAIL_CHARS] if lines else None


def _read_state(folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Each submitted job's id, and the executor it went to, by job key."""
    path = folder / STATE_FILE
    if not path.exists():
        return {}, {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidInputError(
            f"{path} is damaged ({error}): move it away to start the sweep afresh"
        ) from None
    maps = [data.get(name, {}) for name in ("jobs", "executors")] if isinstance(data, dict) else []
    if not maps or not all(isinstance(m, dict) and all(isinstance(v, str) for v in m.values()) for m in maps):
        raise InvalidInputError(f"{path} is not a memprobe sweep state: move it away")
    return dict(maps[0]), dict(maps[1])


def _write_state(folder: Path, jobs: dict[str, str], executors: dict[str, str]) -> None:
    state = {"jobs": jobs, "executors": executors}
    write_atomically(folder / STATE_FILE, json.dumps(state, indent=1, sort_keys=True) + "\n")


def default_folder(db: str) -> Path:
    """Beside a database file (``FILE.sweep``); for a server, ``memprobe-sweep`` here."""
    from memprobe.store.database import database_url

    return Path("memprobe-sweep") if database_url(db) else Path(f"{db}.sweep")


def cards(names: Sequence[str]) -> tuple[str, ...]:
    """The card types asked for; none named: one job per (arch, precision) on any card."""
    return tuple(names) or (ANY_CARD,)
