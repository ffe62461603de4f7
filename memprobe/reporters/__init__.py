"""Render a command's Report as a table, JSON, YAML or CSV, chosen by name."""

from __future__ import annotations

from memprobe.reporters.base import Report, Reporter

__all__ = ["Report", "Reporter", "get_reporter"]


def get_reporter(name: str) -> Reporter:
    """The reporter called ``name``: table, json, yaml or csv."""
    from memprobe.reporters.json_reporter import JsonReporter
    from memprobe.reporters.table import CsvReporter, TableReporter
    from memprobe.reporters.yaml_reporter import YamlReporter

    reporters: dict[str, type[Reporter]] = {
        "table": TableReporter,
        "json": JsonReporter,
        "yaml": YamlReporter,
        "csv": CsvReporter,
    }
    return reporters[name]()
