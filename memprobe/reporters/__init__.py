"""Render a command's Report as a table, JSON, YAML or CSV, chosen by name."""

from memprobe.reporters.base import Report, Reporter, get_reporter

__all__ = ["Report", "Reporter", "get_reporter"]
