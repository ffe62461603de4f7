"""Progress of a long command on stderr: a bar on a terminal, one line per step in a log."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

import click

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar


def _shown(item: str | None) -> str | None:
    return item


class Progress:
    """Count the steps of a long command; the length grows when a run takes more steps than expected.

    On a terminal a click progress bar; off one (CI logs, ``2> log``) a line per step such as
    ``[3/20] calibrating mednext: mednext 128x128x128 b2 fp32``, so the log shows progress.
    """

    def __init__(self, label: str, length: int, stream: TextIO | None = None) -> None:
        self.label = label
        self.length = max(1, length)
        self.position = 0
        self.stream = stream if stream is not None else sys.stderr
        self._terminal = _is_terminal(self.stream)
        self._bar: ProgressBar[str] | None = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, error, traceback)

    def advance(self, item: str, steps: int = 1) -> None:
        """Count ``steps`` done, the last being ``item``; with 0, say what is running now."""
        self.position += steps
        self.length = max(self.length, self.position)
        if self._terminal:
            bar = self._started_bar()
            bar.length = self.length
            bar.update(steps, item)
        elif steps:
            click.echo(f"[{self.position}/{self.length}] {self.label}: {item}", file=self.stream)

    def _started_bar(self) -> ProgressBar[str]:
        """The bar, drawn at the first step: input refused before it leaves the terminal clean."""
        if self._bar is None:
            self._bar = click.progressbar(
                None,
                length=self.length,
                label=self.label,
                file=self.stream,
                show_pos=True,
                item_show_func=_shown,
            )
            self._bar.__enter__()
        return self._bar


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream is no terminal
        return False
