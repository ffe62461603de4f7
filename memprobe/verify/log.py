"""Append each result to ``measurements.jsonl`` as it is taken; a rerun reuses what is there.

A run cut off at any point (the device machine's 10-minute limit, Ctrl-C) loses at most the
result in flight: every line is flushed to disk before the next measurement starts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from memprobe.core.errors import InvalidInputError
from memprobe.core.input_files import read_input_text, shown

LOG_NAME = "measurements.jsonl"


class ResultLog:
    """Results by key, read from and appended to one JSON-lines file (or kept in memory)."""

    def __init__(self, path: Path | None, device: str) -> None:
        self.path = path
        self.device = device
        self.records: dict[str, dict[str, Any]] = {}
        self.reused = 0
        if path is not None and path.exists():
            self._read(path)

    def _read(self, path: Path) -> None:
        text = read_input_text(path, "--out")
        if text and not text.endswith("\n"):
            with path.open("a") as file:  # end the line a killed run left half-written
                file.write("\n")
        for number, line in enumerate(text.splitlines(), start=1):
            record = _record(line, number, path)
            if record is None:
                continue  # the last line of a run killed mid-write
            if record.get("device") != self.device:
                raise InvalidInputError(
                    f"{path} holds results from {shown(repr(record.get('device')))}, not {self.device!r}: "
                    "choose another --out"
                )
            self.records[record["key"]] = record

    def get(self, key: str) -> dict[str, Any] | None:
        record = self.records.get(key)
        if record is not None:
            self.reused += 1
        return record["data"] if record else None

    def add(self, kind: str, key: str, data: dict[str, Any]) -> None:
        record = {"kind": kind, "key": key, "device": self.device, "data": data}
        self.records[key] = record
        if self.path is None:
            return
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")
            file.flush()
            os.fsync(file.fileno())


def _record(line: str, number: int, path: Path) -> dict[str, Any] | None:
    """The result on ``line``; None for a line cut off mid-write.

    Raises:
        InvalidInputError: the line is JSON but not a result memprobe wrote (another program's file).
    """
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    except (ValueError, RecursionError):
        record = None  # nested too deeply, or a number too long: memprobe writes neither
    if not isinstance(record, dict) or not isinstance(record.get("key"), str) or "data" not in record:
        raise InvalidInputError(
            f"line {number} of {path} is not a verify result memprobe wrote: choose another --out"
        )
    return record
