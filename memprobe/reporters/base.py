"""The Report every command produces and the Reporter protocol that renders it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Report:
    """What a command has to say: tables for people, ``data`` for scripts."""

    data: Any
    tables: tuple[tuple[str, list[dict[str, Any]]], ...] = field(default=())
    notes: tuple[str, ...] = field(default=())


class Reporter(Protocol):
    def render(self, report: Report) -> str: ...


def get_reporter(name: str) -> Reporter:
    from memprobe.reporters.json_reporter import JsonReporter
    from memprobe.reporters.table import CsvReporter, TableReporter
    from memprobe.reporters.yaml_reporter import YamlReporter

    reporters: dict[str, type] = {
        "table": TableReporter,
        "json": JsonReporter,
        "yaml": YamlReporter,
        "csv": CsvReporter,
    }
    return reporters[name]()  # type: ignore[no-any-return]
