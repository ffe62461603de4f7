"""The inference tables of the benchmark database: ``Database`` reads and writes them through these methods.

Inference rows live apart from training's (their keys differ), but one ``Database`` serves
both: ``add_measurement``, ``find_measurement`` and ``add_calibration`` take either kind and
come here for an inference's. Each measurement is committed the moment it is taken (an
interrupted calibration resumes), and one taken by the same measuring code on the same
environment is reused.

What a configuration sets beyond MONAI's defaults (the nnU-Net predictor and its mirroring,
MONAI's ``buffer_steps``: ``InferenceConfig.settings``) is one JSON column of both inference
tables, ``settings_json`` (schema 7); a server of an older schema, read as it is, has MONAI's
default rows only, and its rows read as such.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from memprobe.core.enums import Precision
from memprobe.core.inference_config import BlendMode, InferenceConfig, Predictor, StitchDevice
from memprobe.core.inference_measurement import INFERENCE_CODE_VERSION, InferenceMeasurement
from memprobe.core.measurement import Environment, ReuseKey
from memprobe.formula.calibration import FitQuality
from memprobe.formula.inference_calibration import INFERENCE, InferenceCalibration
from memprobe.store.row_checks import column, warn_bad_row

INFERENCE_REUSE_KEY = ReuseKey(INFERENCE_CODE_VERSION)  # a registered network measured by this memprobe
SETTINGS = "settings_json"
_NO_SETTINGS = "{}"  # the column's default: MONAI's sliding window as it comes


def _settings_text(settings: dict[str, object]) -> str:
    return json.dumps(settings, sort_keys=True)


def _stored_settings(row: sqlite3.Row) -> str:
    """The row's settings as stored; a server of schema 6 or older, read as it is, has none."""
    return str(column(row, SETTINGS, _NO_SETTINGS))


def _settings_of(row: sqlite3.Row) -> dict[str, Any]:
    return json.loads(_stored_settings(row))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _config_values(c: InferenceConfig) -> dict[str, object]:
    return {
        "arch": c.arch,
        "roi_d": c.roi[0],
        "roi_h": c.roi[1],
        "roi_w": c.roi[2],
        "image_d": c.image_shape[0],
        "image_h": c.image_shape[1],
        "image_w": c.image_shape[2],
        "sw_batch_size": c.sw_batch_size,
        "overlap": c.overlap,
        "blend": c.blend.value,
        "precision": c.precision.value,
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "stitch": c.stitch.value,
    }


class InferenceTables:
    """The inference half of ``memprobe.store.database.Database`` (a mixin: the database's connection does the work)."""

    if TYPE_CHECKING:  # what the database provides

        @property
        def location(self) -> str: ...
        def environment_id(self, environment: Environment) -> int: ...
        def _known_environment_id(self, environment: Environment) -> int | None: ...
        def _rows(self, query: str, parameters: tuple[Any, ...] = ()) -> list[Any]: ...
        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _environment(self, environment_id: object) -> Environment: ...

    def _add_inference_measurement(self, m: InferenceMeasurement, reuse_key: ReuseKey) -> int:
        values = {
            "environment_id": self.environment_id(m.environment),
            **_config_values(m.config),
            SETTINGS: _settings_text(m.config.settings()),
            "peak_allocated_bytes": m.peak_allocated_bytes,
            "peak_reserved_bytes": m.peak_reserved_bytes,
            "phase_peaks_json": json.dumps(m.phase_peaks_bytes),
            "reserved_phase_peaks_json": json.dumps(m.reserved_phase_peaks_bytes),
            "seconds": m.seconds,
            "oom": int(m.oom),
            "error": m.error,
            "parameter_count": m.parameter_count,
            "reserved_source": m.reserved_source,
            "simulated_allocated_bytes": m.simulated_allocated_bytes,
            "context_bytes": m.context_bytes,
            "code_version": reuse_key.code_version,
            "model_hash": reuse_key.model_hash,
            "created_at": _now(),
        }
        with self._write() as connection:
            cursor = connection.execute(
                f"INSERT INTO inference_measurements ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                tuple(values.values()),
            )
        return int(cursor.lastrowid or 0)

    def _find_inference_measurement(
        self, config: InferenceConfig, environment: Environment, reuse_key: ReuseKey
    ) -> InferenceMeasurement | None:
        environment_id = self._known_environment_id(environment)  # a lookup must not write
        if environment_id is None:
            return None
        values = {**_config_values(config), SETTINGS: _settings_text(config.settings())}
        where = " AND ".join(f"{name} = ?" for name in values)
        rows = self._rows(
            f"SELECT * FROM inference_measurements WHERE environment_id = ? AND {where} AND oom = 0 "
            "AND error IS NULL AND code_version = ? AND model_hash IS ? ORDER BY id DESC LIMIT 1",
            (environment_id, *values.values(), reuse_key.code_version, reuse_key.model_hash),
        )
        return inference_measurement_from_row(rows[0], environment) if rows else None

    def inference_measurements(self, arch: str | None = None) -> list[InferenceMeasurement]:
        """Stored inference measurements, oldest first."""
        rows = self._rows(
            "SELECT * FROM inference_measurements WHERE (? IS NULL OR arch = ?) ORDER BY id", (arch, arch)
        )
        return [inference_measurement_from_row(row, self._environment(row["environment_id"])) for row in rows]

    def _add_inference_calibration(
        self, calibration: InferenceCalibration, environment: Environment | None = None
    ) -> int:
        settings: dict[str, object] = {}
        if calibration.predictor is Predictor.NNUNET:
            settings["predictor"] = calibration.predictor.value
        values = {
            SETTINGS: _settings_text(settings),
            "arch": calibration.arch,
            "device": calibration.device,
            "precision": calibration.precision,
            "environment_id": self.environment_id(environment) if environment else None,
            "phase_coefficients_json": json.dumps(calibration.phase_coefficients),
            "parameter_model_json": json.dumps(calibration.parameter_model),
            "quality_json": json.dumps(calibration.quality.__dict__),
            "reserved_coefficients_json": _json(calibration.reserved_coefficients),
            "reserved_quality_json": _json(
                calibration.reserved_quality.__dict__ if calibration.reserved_quality else None
            ),
            "fit_range_json": _json(calibration.fit_range),
            "context_bytes": calibration.context_bytes,
            "created_at": calibration.created_at or _now(),
        }
        with self._write() as connection:
            cursor = connection.execute(
                f"INSERT INTO inference_calibrations ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                tuple(values.values()),
            )
        return int(cursor.lastrowid or 0)

    def inference_calibrations(self) -> list[InferenceCalibration]:
        """The newest inference calibration for each (arch, device, precision, predictor)."""
        newest: dict[tuple[str, ...], sqlite3.Row] = {}
        for row in self._rows("SELECT * FROM inference_calibrations ORDER BY id DESC"):
            # grouped here, not in SQL: a server read as it is may lack the column
            newest.setdefault((row["arch"], row["device"], row["precision"], _stored_settings(row)), row)
        calibrations = []
        for key in sorted(newest):
            try:
                calibrations.append(self.inference_calibration_from_row(newest[key]))
            except (ValueError, KeyError, TypeError) as error:  # e.g. a predictor a later memprobe added
                warn_bad_row(self.location, "inference_calibrations", newest[key]["id"], str(error))
        return calibrations

    def inference_calibration_from_row(self, row: sqlite3.Row) -> InferenceCalibration:
        """The inference calibration in ``row``, with its environment."""
        environment_id = row["environment_id"]
        environment = self._environment(environment_id).to_dict() if environment_id is not None else {}
        return _calibration_from_row(row, environment, self.location)


def inference_measurement_from_row(row: sqlite3.Row, environment: Environment) -> InferenceMeasurement:
    """The inference measurement in ``row`` (plain errors on a bad row: the caller names the row)."""
    config = InferenceConfig(
        row["arch"],
        (row["roi_d"], row["roi_h"], row["roi_w"]),
        (row["image_d"], row["image_h"], row["image_w"]),
        row["sw_batch_size"],
        row["overlap"],
        BlendMode(row["blend"]),
        Precision(row["precision"]),
        row["in_channels"],
        row["out_channels"],
        StitchDevice(row["stitch"]),
    )
    return InferenceMeasurement(
        _with_settings(config, _settings_of(row)),
        environment,
        row["peak_allocated_bytes"],
        row["peak_reserved_bytes"],
        phase_peaks_bytes=json.loads(row["phase_peaks_json"]),
        reserved_phase_peaks_bytes=json.loads(row["reserved_phase_peaks_json"]),
        seconds=row["seconds"],
        oom=bool(row["oom"]),
        error=row["error"],
        parameter_count=row["parameter_count"],
        reserved_source=row["reserved_source"],
        simulated_allocated_bytes=row["simulated_allocated_bytes"],
        context_bytes=row["context_bytes"],
    )


def _with_settings(config: InferenceConfig, settings: dict[str, Any]) -> InferenceConfig:
    return replace(
        config,
        predictor=Predictor(settings.get("predictor", Predictor.MONAI.value)),
        mirror_axes=tuple(int(axis) for axis in settings.get("mirror_axes", ())),
        buffer_steps=settings.get("buffer_steps"),
    )


def _calibration_from_row(row: sqlite3.Row, environment: dict[str, Any], source: str) -> InferenceCalibration:
    reserved_quality = _loads(row["reserved_quality_json"])
    return InferenceCalibration(
        row["arch"],
        row["device"],
        row["precision"],
        INFERENCE,
        False,
        json.loads(row["phase_coefficients_json"]),
        json.loads(row["parameter_model_json"]),
        FitQuality(**json.loads(row["quality_json"])),
        environment,
        row["created_at"],
        source=source,
        reserved_coefficients=_loads(row["reserved_coefficients_json"]),
        reserved_quality=FitQuality(**reserved_quality) if reserved_quality else None,
        fit_range=_loads(row["fit_range_json"]),
        context_bytes=row["context_bytes"],
        predictor=Predictor(_settings_of(row).get("predictor", Predictor.MONAI.value)),
    )
