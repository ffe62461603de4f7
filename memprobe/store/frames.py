"""The benchmark database as pandas DataFrames, for notebooks, and written out as CSV, JSON or Parquet.

pandas (and pyarrow, for Parquet) is imported inside the functions, so ``import memprobe``
stays fast and torch-free.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memprobe.core.errors import InvalidInputError
from memprobe.core.inference_measurement import InferenceMeasurement
from memprobe.core.measurement import Environment, Measurement
from memprobe.core.output_paths import write_atomically
from memprobe.core.units import format_shape
from memprobe.formula.calibration import Calibration, FitQuality
from memprobe.formula.inference_calibration import INFERENCE, InferenceCalibration
from memprobe.store.database import Database

if TYPE_CHECKING:
    import pandas as pd

TRAINING = "training"
FORMATS = ("csv", "json", "parquet")
TABLES = ("measurements", "calibrations")
PARQUET_INSTALL = "pip install 'memprobe[parquet]'"

_S, _I, _F, _B = "string", "Int64", "Float64", "boolean"
# What an environment row holds (GPU name and memory, driver, CUDA, cuDNN, torch, MONAI, host, ...).
_ENVIRONMENT = {f.name: _I if "int" in str(f.type) else _S for f in fields(Environment)}
_TRAINING_SETUP = {
    "optimizer": _S,
    "deep_supervision": _B,
    "step": _S,
    "checkpointing": _B,
    "strategy": _S,
    "world_size": _I,
}
_MEASUREMENT_COLUMNS = {
    "mode": _S,
    "arch": _S,
    "device": _S,
    "precision": _S,
    "in_channels": _I,
    "out_channels": _I,
    # training
    "patch": _S,
    "patch_d": _I,
    "patch_h": _I,
    "patch_w": _I,
    "voxels": _I,
    "batch": _I,
    **_TRAINING_SETUP,
    # inference
    "roi": _S,
    "roi_d": _I,
    "roi_h": _I,
    "roi_w": _I,
    "image": _S,
    "image_d": _I,
    "image_h": _I,
    "image_w": _I,
    "sw_batch_size": _I,
    "overlap": _F,
    "blend": _S,
    "stitch": _S,
    "predictor": _S,
    "mirror_axes": _S,
    "buffer_steps": _I,
    "windows": _I,
    # what was measured
    "ok": _B,
    "oom": _B,
    "error": _S,
    "peak_allocated_bytes": _I,
    "peak_reserved_bytes": _I,
    "reserved_source": _S,
    "simulated_allocated_bytes": _I,
    "context_bytes": _I,
    "budget_bytes": _I,
    "parameter_count": _I,
    "seconds": _F,
    "warmup_steps": _I,
    "phase_peaks_json": _S,
    "reserved_phase_peaks_json": _S,
    "breakdown_json": _S,
    **_ENVIRONMENT,
}
_QUALITY = {
    "fit_points": _I,
    "fit_median_relative_error": _F,
    "fit_max_relative_error": _F,
    "heldout_points": _I,
    "heldout_median_relative_error": _F,
    "heldout_max_relative_error": _F,
}
_CALIBRATION_COLUMNS = {
    "mode": _S,
    "arch": _S,
    "device": _S,
    "precision": _S,
    **_TRAINING_SETUP,
    "predictor": _S,
    "source": _S,
    "created_at": _S,
    **_QUALITY,
    **{f"reserved_{name}": kind for name, kind in _QUALITY.items()},
    "context_bytes": _I,
    "segments": _I,
    "phase_coefficients_json": _S,
    "reserved_coefficients_json": _S,
    "parameter_model_json": _S,
    "fit_range_json": _S,
    **_ENVIRONMENT,
}


def load_measurements(db: str | Path | None = None) -> pd.DataFrame:
    """Every usable measurement in the database, one row each: training first, then inference.

    Args:
        db: the database file or ``postgresql://`` URL; None: the one every command uses
            (``$MEMPROBE_DB``, else the user's). It is opened read-only.

    Returns:
        A DataFrame with pandas' nullable dtypes (a missing value is ``pd.NA``, integers stay
        integers), oldest row first within each mode. Its columns:

        - ``mode``: "training" or "inference". Columns of the other mode are NA.
        - ``arch``, ``precision``, ``in_channels``, ``out_channels``; ``device``: the name
          calibrations are keyed by (the GPU's name on CUDA, else "trace" or "cpu"), so
          measurements join calibrations on it.
        - training: ``patch`` ("128x128x128"), ``patch_d``, ``patch_h``, ``patch_w`` and
          ``voxels`` as integers, ``batch``, ``optimizer``, ``deep_supervision``, ``step``,
          ``checkpointing``, ``strategy`` and ``world_size``.
        - inference: ``roi`` and ``image`` ("DxHxW") with ``roi_d`` ... ``image_w``,
          ``sw_batch_size``, ``overlap``, ``blend``, ``stitch``, ``predictor``,
          ``mirror_axes`` ("0,1,2"; "" for none), ``buffer_steps`` and ``windows``.
        - measured: ``ok`` (neither out of memory nor failed), ``oom``, ``error``,
          ``peak_allocated_bytes``, ``peak_reserved_bytes``, ``reserved_source`` ("measured"
          or "simulated"), ``simulated_allocated_bytes``, ``context_bytes``, ``budget_bytes``,
          ``parameter_count``, ``seconds`` (the measured training step, or the whole
          inference), ``warmup_steps``; per-phase peaks and the breakdown as JSON text
          (``phase_peaks_json``, ``reserved_phase_peaks_json``, ``breakdown_json``: read
          with ``df.phase_peaks_json.map(json.loads)``).
        - the environment: ``device_kind``, ``device_name`` (the GPU's name),
          ``total_memory_bytes``, ``driver_version``, ``cuda_version``, ``cudnn_version``,
          ``torch_version``, ``monai_version``, ``memprobe_version`` and ``host``.

    Raises:
        DatabaseError: there is no database there, or it cannot be read.

    Example:
        >>> df = memprobe.load_measurements()
        >>> df[(df["mode"] == "training") & df.ok].groupby("patch").peak_allocated_bytes.max()
    """
    with Database.open(db, create=False, readonly=True) as database:
        rows = [_training_measurement(m) for m in database.measurements()]
        rows += [_inference_measurement(m) for m in database.inference_measurements()]
    return _frame(rows, _MEASUREMENT_COLUMNS)


def load_calibrations(db: str | Path | None = None) -> pd.DataFrame:
    """The calibrations in the database, one row each: training first, then inference.

    Each is the newest of its key, as planning and ``memprobe db list`` read them (a refit
    replaces the older fit); shipped calibrations are not in the database and not here.

    Args:
        db: the database file or ``postgresql://`` URL; None: the one every command uses
            (``$MEMPROBE_DB``, else the user's). It is opened read-only.

    Returns:
        A DataFrame with pandas' nullable dtypes (a missing value is ``pd.NA``). Its columns:

        - ``mode``: "training" or "inference"; ``arch``, ``device`` (the GPU's name, or
          "trace" or "cpu"), ``precision``.
        - training: ``optimizer``, ``deep_supervision``, ``step``, ``checkpointing``,
          ``strategy``, ``world_size``; inference: ``predictor`` ("monai" or "nnunet").
        - ``source`` (the database), ``created_at`` (ISO 8601 text: ``pd.to_datetime``).
        - the fit's quality on the allocated peak: ``fit_points``, ``fit_median_relative_error``,
          ``fit_max_relative_error``, and on held-out measurements ``heldout_points``,
          ``heldout_median_relative_error``, ``heldout_max_relative_error`` (fractions: 0.01
          is 1%); the same prefixed ``reserved_`` for the allocator's reserve (NA when not fitted).
        - ``context_bytes`` (the CUDA context, CUDA calibrations), ``segments`` (how many
          phase segments the formula has), and the coefficients as JSON text:
          ``phase_coefficients_json`` ({segment: {term: bytes per unit}}),
          ``reserved_coefficients_json``, ``parameter_model_json``, ``fit_range_json``
          ({quantity: [lowest, highest]} measured).
        - the environment it was measured on (NA when not recorded): the same columns as
          :func:`load_measurements`'s.

    Raises:
        DatabaseError: there is no database there, or it cannot be read.
    """
    with Database.open(db, create=False, readonly=True) as database:
        rows = [_calibration(c, TRAINING) for c in database.calibrations()]
        rows += [_calibration(c, INFERENCE) for c in database.inference_calibrations()]
    return _frame(rows, _CALIBRATION_COLUMNS)


@dataclass(frozen=True)
class Export:
    """A table written to a file: where, how many rows, in which format."""

    path: str
    table: str
    rows: int
    format: str

    def __repr__(self) -> str:
        return f"Export({self.rows} {self.table} to {self.path} as {self.format})"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "table": self.table, "rows": self.rows, "format": self.format}


def export_table(db: str | Path | None, table: str, fmt: str, path: str | Path) -> Export:
    """Write :func:`load_measurements` or :func:`load_calibrations` to ``path``, whole or not at all.

    ``path`` is written as given: check it first (``memprobe.core.output_paths.check_output_path``,
    with the database's files as ``reading``).

    Raises:
        InvalidInputError: an unknown table or format, Parquet without pyarrow, or the file
            cannot be written.
        DatabaseError: there is no database there, or it cannot be read.
    """
    if table not in TABLES:
        raise InvalidInputError(f"unknown table {table!r}: use one of {', '.join(TABLES)}")
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        _require_pyarrow()
    frame = load_measurements(db) if table == "measurements" else load_calibrations(db)
    content = frame_bytes(frame, fmt)
    try:
        write_atomically(path, content)
    except OSError as error:
        raise InvalidInputError(f"cannot write {path}: {error.strerror or error}") from None
    return Export(str(path), table, len(frame), fmt)


def frame_bytes(frame: pd.DataFrame, fmt: str) -> bytes:
    """``frame`` as a CSV, JSON (a list of records) or Parquet file's bytes, without its index."""
    if fmt == "csv":
        return frame.to_csv(index=False).encode("utf-8")
    if fmt == "json":
        # Python's json, not DataFrame.to_json: that rounds floats to 10 decimals (1e-12 errors to 0).
        records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
        return (json.dumps(records, indent=1, default=_plain) + "\n").encode("utf-8")
    _require_pyarrow()
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow")
    return buffer.getvalue()


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise InvalidInputError(f"Parquet needs pyarrow, which is not installed: {PARQUET_INSTALL}") from None


def _frame(rows: list[dict[str, Any]], columns: dict[str, str]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(columns), dtype=object)
    return frame.astype(columns)


def _sizes(name: str, sizes: tuple[int, ...]) -> dict[str, Any]:
    """``patch`` -> ``{"patch": "DxHxW", "patch_d": D, "patch_h": H, "patch_w": W}``."""
    named = {f"{name}_{axis}": size for axis, size in zip("dhw", sizes, strict=True)}
    return {name: format_shape(sizes), **named}


def _environment(environment: Environment | dict[str, Any]) -> dict[str, Any]:
    facts = environment if isinstance(environment, dict) else environment.to_dict()
    return {name: facts.get(name) for name in _ENVIRONMENT}


def _outcome(m: Measurement | InferenceMeasurement) -> dict[str, Any]:
    return {
        "ok": m.ok,
        "oom": m.oom,
        "error": m.error,
        "peak_allocated_bytes": m.peak_allocated_bytes,
        "peak_reserved_bytes": m.peak_reserved_bytes,
        "reserved_source": m.reserved_source,
        "simulated_allocated_bytes": m.simulated_allocated_bytes,
        "context_bytes": m.context_bytes,
        "parameter_count": m.parameter_count,
        "phase_peaks_json": json.dumps(m.phase_peaks_bytes),
        "reserved_phase_peaks_json": json.dumps(m.reserved_phase_peaks_bytes),
        **_environment(m.environment),
        "device": m.environment.calibration_device,
    }


def _training_measurement(m: Measurement) -> dict[str, Any]:
    c = m.config
    return {
        "mode": TRAINING,
        "arch": c.arch,
        "precision": c.precision.value,
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        **_sizes("patch", c.patch),
        "voxels": c.voxels,
        "batch": c.batch,
        "optimizer": c.optimizer.value,
        "deep_supervision": c.deep_supervision,
        "step": c.step,
        "checkpointing": c.checkpointing,
        "strategy": c.strategy.value,
        "world_size": c.world_size,
        **_outcome(m),
        "budget_bytes": m.budget_bytes,
        "seconds": m.step_seconds,
        "warmup_steps": m.warmup_steps,
        "breakdown_json": json.dumps(m.breakdown_bytes),
    }


def _inference_measurement(m: InferenceMeasurement) -> dict[str, Any]:
    c = m.config
    return {
        "mode": INFERENCE,
        "arch": c.arch,
        "precision": c.precision.value,
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        **_sizes("roi", c.roi),
        **_sizes("image", c.image_shape),
        "sw_batch_size": c.sw_batch_size,
        "overlap": c.overlap,
        "blend": c.blend.value,
        "stitch": c.stitch.value,
        "predictor": c.predictor.value,
        "mirror_axes": ",".join(map(str, c.mirror_axes)),
        "buffer_steps": c.buffer_steps,
        "windows": c.windows(),
        **_outcome(m),
        "seconds": m.seconds,
    }


def _calibration(c: Calibration, mode: str) -> dict[str, Any]:
    setup: dict[str, Any] = (
        {
            "optimizer": c.optimizer,
            "deep_supervision": c.deep_supervision,
            "step": c.step,
            "checkpointing": c.checkpointing,
            "strategy": c.strategy,
            "world_size": c.world_size,
        }
        if not isinstance(c, InferenceCalibration)
        else {"predictor": c.predictor.value}
    )
    return {
        "mode": mode,
        "arch": c.arch,
        "device": c.device,
        "precision": c.precision,
        **setup,
        "source": c.source,
        "created_at": c.created_at,
        **_quality(c.quality),
        **{f"reserved_{name}": value for name, value in _quality(c.reserved_quality).items()},
        "context_bytes": c.context_bytes,
        "segments": len(c.phase_coefficients),
        "phase_coefficients_json": json.dumps(c.phase_coefficients),
        "reserved_coefficients_json": _json_or_none(c.reserved_coefficients),
        "parameter_model_json": json.dumps(c.parameter_model),
        "fit_range_json": _json_or_none(c.fit_range),
        **_environment(c.environment),
    }


def _quality(quality: FitQuality | None) -> dict[str, Any]:
    if quality is None:
        return {}
    return {
        "fit_points": quality.points,
        "fit_median_relative_error": quality.median_relative_error,
        "fit_max_relative_error": quality.max_relative_error,
        "heldout_points": quality.heldout_points,
        "heldout_median_relative_error": quality.heldout_median_relative_error,
        "heldout_max_relative_error": quality.heldout_max_relative_error,
    }


def _json_or_none(value: object) -> str | None:
    return None if value is None else json.dumps(value)
