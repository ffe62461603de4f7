"""Render a command's Report as a table, JSON or YAML, chosen by name."""

from __future__ import annotations

from memprobe.cli.render.base import Report, Reporter

__all__ = ["Report", "Reporter", "get_reporter"]


def get_reporter(name: str) -> Reporter:
    """The reporter called ``name``: table, json or yaml."""
    from memprobe.cli.render.json_output import JsonReporter
    from memprobe.cli.render.table import TableReporter
    from memprobe.cli.render.yaml_output import YamlReporter

    reporters: dict[str, type[Reporter]] = {
        "table": TableReporter,
        "json": JsonReporter,
        "yaml": YamlReporter,
    }
    return reporters[name]()
