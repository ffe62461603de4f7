"""The Report every command produces and the Reporter protocol that renders it (a leaf module)."""

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
