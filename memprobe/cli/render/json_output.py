"""Machine-readable output: the report's data as JSON."""

from __future__ import annotations

import json

from memprobe.cli.render.base import Report


class JsonReporter:
    def render(self, report: Report) -> str:
        return json.dumps(report.data, indent=2, default=str)
