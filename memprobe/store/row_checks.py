"""Rows read from a database (or the shipped JSON) are input: check each before it is used.

Pure functions turn a raw row into a Calibration or Measurement, or raise BadRowError with
the reason. Unknown extra keys (written by a newer memprobe) are ignored; every value a plan
computes with must be finite, and coefficients and byte counts non-negative.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Protocol

from memprobe.core.config import StepConfig
from memprobe.core.enums import OptimizerName, Precision, Strategy
from memprobe.core.measurement import Environment, Measurement
from memprobe.core.step_names import DEFAULT_STEP
from memprobe.formula.calibration import Calibration, FitQuality

MAX_JSON_CHARS = 1_000_000  # the largest shipped calibration is ~10 kB of JSON
MAX_TEXT_CHARS = 1_000
MAX_SIZE = 2**62  # bytes, voxels or counts beyond this are not measurements
LOGGER = logging.getLogger("memprobe")
_warned: set[tuple[str, str, object]] = set()  # once per bad row per process


class Row(Protocol):
    """A row read by column name: an ``sqlite3.Row`` or a dict."""

    def __getitem__(self, name: str) -> Any: ...


class BadRowError(ValueError):
    """A stored row that cannot be used; the message says why."""


def warn_bad_row(where: str, table: str, row_id: object, reason: str, fix: str | None = None) -> None:
    """Say once per process that a row was skipped, and how to inspect it (``fix`` by default)."""
    if (where, table, row_id) in _warned:
        return
    _warned.add((where, table, row_id))
    LOGGER.warning(
        f"skipped {table} row {row_id} of {where}: {reason}; "
        f"{fix or f'inspect with `memprobe db check --db {where}`'}"
    )


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT_CHARS:
        raise BadRowError(f"{what} is not a short text ({_show(value)})")
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value: object, what: str, *, non_negative: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRowError(f"{what} is not a number ({_show(value)})")
    if not math.isfinite(value):
        raise BadRowError(f"{what} is not finite ({_show(value)})")
    if abs(value) > MAX_SIZE:
        raise BadRowError(f"{what} is beyond {MAX_SIZE:.3g} ({_show(value)})")
    if non_negative and value < 0:
        raise BadRowError(f"{what} is negative ({_show(value)})")
    return float(value)


def _whole(value: object, what: str, *, minimum: int = 0, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_SIZE:
        raise BadRowError(f"{what} is not a whole number from {minimum} to {MAX_SIZE:.3g} ({_show(value)})")
    return value


def _flag(value: object, what: str) -> bool:
    if value not in (0, 1) or isinstance(value, float):
        raise BadRowError(f"{what} is not 0 or 1 ({_show(value)})")
    return bool(value)


def _json(text: object, what: str, *, optional: bool = False) -> Any:
    if text is None and optional:
        return None
    if not isinstance(text, str):
        raise BadRowError(f"{what} is not JSON text ({type(text).__name__})")
    if len(text) > MAX_JSON_CHARS:
        raise BadRowError(f"{what} is larger than {MAX_JSON_CHARS} characters")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise BadRowError(f"{what} is not valid JSON") from None


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRowError(f"{what} is not a JSON object")
    return value


def _coefficients(value: object, what: str) -> dict[str, dict[str, float]]:
    """Phase -> term -> non-negative finite bytes per unit; at least one phase."""
    phases = _object(value, what)
    if not phases:
        raise BadRowError(f"{what} is empty")
    return {
        _text(phase, f"a phase of {what}"): {
            _text(term, f"a term of {what}"): _number(number, f"{what}[{phase}][{term}]")
            for term, number in _object(terms, f"{what}[{phase}]").items()
        }
        for phase, terms in phases.items()
    }


def _byte_map(value: object, what: str) -> dict[str, int]:
    return {
        _text(name, f"a key of {what}"): _whole(size, f"{what}[{name}]")
        for name, size in _object(value, what).items()
    }


def _fit_quality(value: object, what: str) -> FitQuality:
    data = _object(value, what)
    known = {f.name for f in fields(FitQuality)}
    kept = {name: data[name] for name in known if name in data}  # a newer memprobe may add keys
    for name in ("points", "median_relative_error", "max_relative_error"):
        if name not in kept:
            raise BadRowError(f"{what} has no {name}")
    _whole(kept["points"], f"{what}.points")
    _whole(kept.get("heldout_points", 0), f"{what}.heldout_points")
    for name in known - {"points", "heldout_points"}:
        if kept.get(name) is not None or name in ("median_relative_error", "max_relative_error"):
            _number(kept[name], f"{what}.{name}")
    return FitQuality(**kept)


def _fit_range(value: object) -> dict[str, list[int]] | None:
    if value is None:
        return None
    ranges = _object(value, "fit_range")
    for name, bounds in ranges.items():
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise BadRowError(f"fit_range[{name}] is not a [low, high] pair")
        for bound in bounds:
            _number(bound, f"fit_range[{name}]")
    return ranges


def _enum_value(
    kind: type[Precision] | type[OptimizerName] | type[Strategy], value: object, what: str
) -> str:
    try:
        return kind(str(value)).value if isinstance(value, str) else kind(value).value  # type: ignore[arg-type]
    except ValueError:
        raise BadRowError(f"unknown {what} {_show(value)}") from None


def calibration_from_fields(data: Mapping[str, Any], *, source: str) -> Calibration:
    """A Calibration from decoded fields (the shipped JSON's items, or a decoded row).

    Raises:
        BadRowError: a field is missing, of the wrong type, non-finite or negative.
    """
    if not isinstance(data, Mapping):
        raise BadRowError("the calibration is not a JSON object")
    try:
        reserved = data.get("reserved_coefficients")
        reserved_quality = data.get("reserved_quality")
        return Calibration(
            arch=_text(data["arch"], "arch"),
            device=_text(data["device"], "device"),
            precision=_enum_value(Precision, data["precision"], "precision"),
            optimizer=_enum_value(OptimizerName, data["optimizer"], "optimizer"),
            deep_supervision=_flag(data["deep_supervision"], "deep_supervision"),
            phase_coefficients=_coefficients(data["phase_coefficients"], "phase_coefficients"),
            parameter_model={
                _text(term, "a parameter_model term"): _number(
                    value, f"parameter_model[{term}]", non_negative=False
                )
                for term, value in _object(data["parameter_model"], "parameter_model").items()
            },
            quality=_fit_quality(data["quality"], "quality"),
            environment=_object(data.get("environment") or {}, "environment"),
            created_at=str(data.get("created_at") or "")[:MAX_TEXT_CHARS],
            source=source,
            reserved_coefficients=(
                None if reserved is None else _coefficients(reserved, "reserved_coefficients")
            ),
            reserved_quality=(
                None if reserved_quality is None else _fit_quality(reserved_quality, "reserved_quality")
            ),
            fit_range=_fit_range(data.get("fit_range")),
            context_bytes=_whole(data.get("context_bytes"), "context_bytes", optional=True),
            step=_text(data.get("step") or DEFAULT_STEP, "step"),
            checkpointing=_flag(data.get("checkpointing") or False, "checkpointing"),
            strategy=_enum_value(Strategy, data.get("strategy") or Strategy.SINGLE.value, "strategy"),
            world_size=_whole(data.get("world_size", 1), "world_size", minimum=1),
        )
    except KeyError as missing:
        raise BadRowError(f"no {missing.args[0]}") from None


def calibration_from_row(row: Row, environment: dict[str, Any], *, source: str) -> Calibration:
    """A Calibration from a row of the ``calibrations`` table (read by column name)."""
    return calibration_from_fields(
        {
            "arch": row["arch"],
            "device": row["device"],
            "precision": row["precision"],
            "optimizer": row["optimizer"],
            "deep_supervision": row["deep_supervision"],
            "phase_coefficients": _json(row["phase_coefficients_json"], "phase_coefficients_json"),
            "parameter_model": _json(row["parameter_model_json"], "parameter_model_json"),
            "quality": _json(row["quality_json"], "quality_json"),
            "environment": environment,
            "created_at": row["created_at"],
            "reserved_coefficients": _json(
                row["reserved_coefficients_json"], "reserved_coefficients_json", optional=True
            ),
            "reserved_quality": _json(row["reserved_quality_json"], "reserved_quality_json", optional=True),
            "fit_range": _json(row["fit_range_json"], "fit_range_json", optional=True),
            "context_bytes": row["context_bytes"],
            "step": row["step"],
            "checkpointing": row["checkpointing"],
            "strategy": column(row, "strategy", Strategy.SINGLE.value),
            "world_size": column(row, "world_size", 1),
        },
        source=source,
    )


def column(row: Row, name: str, default: object) -> object:
    """``row[name]``, or ``default`` where the row is of a schema from before that column (read as is)."""
    try:
        return row[name]
    except (IndexError, KeyError):
        return default


def environment_from_row(row: Row) -> Environment:
    """An Environment from a row of the ``environments`` table."""
    values = {f.name: row[f.name] for f in fields(Environment)}
    for name, value in values.items():
        if name == "total_memory_bytes":
            _whole(value, name, optional=True)
        elif value is not None or name in ("device_kind", "device_name"):
            _text(value, f"environment {name}")
    return Environment(**values)


def measurement_from_row(row: Row, environment: Environment) -> Measurement:
    """A Measurement from a row of the ``measurements`` table."""
    config = StepConfig(
        arch=_text(row["arch"], "arch"),
        patch=(
            _whole(row["patch_d"], "patch_d", minimum=1),
            _whole(row["patch_h"], "patch_h", minimum=1),
            _whole(row["patch_w"], "patch_w", minimum=1),
        ),
        batch=_whole(row["batch"], "batch", minimum=1),
        precision=Precision(_enum_value(Precision, row["precision"], "precision")),
        optimizer=OptimizerName(_enum_value(OptimizerName, row["optimizer"], "optimizer")),
        in_channels=_whole(row["in_channels"], "in_channels", minimum=1),
        out_channels=_whole(row["out_channels"], "out_channels", minimum=1),
        deep_supervision=_flag(row["deep_supervision"], "deep_supervision"),
        step=_text(row["step"], "step"),
        checkpointing=_flag(row["checkpointing"], "checkpointing"),
        strategy=Strategy(_enum_value(Strategy, column(row, "strategy", Strategy.SINGLE.value), "strategy")),
        world_size=_whole(column(row, "world_size", 1), "world_size", minimum=1),
    )
    step_seconds = row["step_seconds"]
    return Measurement(
        config,
        environment,
        _whole(row["peak_allocated_bytes"], "peak_allocated_bytes", optional=True),
        _whole(row["peak_reserved_bytes"], "peak_reserved_bytes", optional=True),
        phase_peaks_bytes=_byte_map(_json(row["phase_peaks_json"], "phase_peaks_json"), "phase_peaks_json"),
        step_seconds=None if step_seconds is None else _number(step_seconds, "step_seconds"),
        oom=_flag(row["oom"], "oom"),
        error=None if row["error"] is None else str(row["error"])[:MAX_JSON_CHARS],
        budget_bytes=_whole(row["budget_bytes"], "budget_bytes", optional=True),
        parameter_count=_whole(row["parameter_count"], "parameter_count", optional=True),
        breakdown_bytes=_byte_map(_json(row["breakdown_json"], "breakdown_json"), "breakdown_json"),
        reserved_source=None
        if row["reserved_source"] is None
        else _text(row["reserved_source"], "reserved_source"),
        simulated_allocated_bytes=_whole(
            row["simulated_allocated_bytes"], "simulated_allocated_bytes", optional=True
        ),
        reserved_phase_peaks_bytes=_byte_map(
            _json(row["reserved_phase_peaks_json"], "reserved_phase_peaks_json"), "reserved_phase_peaks_json"
        ),
        context_bytes=_whole(row["context_bytes"], "context_bytes", optional=True),
        warmup_steps=_whole(row["warmup_steps"], "warmup_steps", optional=True),
    )
