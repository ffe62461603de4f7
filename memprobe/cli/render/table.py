"""Human-readable output: GitHub-markdown tables (tabulate) with notes; and CSV of the tables."""

from __future__ import annotations

from memprobe.cli.render.base import Report


class TableReporter:
    def render(self, report: Report) -> str:
        from tabulate import tabulate

        parts = []
        for title, rows in report.tables:
            if title:
                parts.append(title)
            parts.append(
                tabulate(rows, headers="keys", tablefmt="github", floatfmt=".3g") if rows else "(none)"
            )
            parts.append("")
        parts.extend(report.notes)
        return "\n".join(parts).rstrip()
