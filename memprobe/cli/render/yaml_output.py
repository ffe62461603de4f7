"""The report's data as YAML, for pasting into training configs."""

from __future__ import annotations

from memprobe.cli.render.base import Report


class YamlReporter:
    def render(self, report: Report) -> str:
        import yaml

        return str(yaml.safe_dump(report.data, sort_keys=False)).rstrip()
