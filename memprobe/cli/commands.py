"""One module per ``memprobe`` command, imported only when that command runs.

``memprobe suggest`` must answer in milliseconds: loading every command's module (and what
they import) first would cost more than the answer. The group knows each command's name and
where it lives; the module is imported when the command is looked up.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import click

# Name -> module:attribute, in the order `memprobe --help` lists them.
COMMANDS = {
    "archs": "memprobe.cli.archs:archs",
    "probe": "memprobe.cli.probe:probe",
    "calibrate": "memprobe.cli.calibrate:calibrate",
    "suggest": "memprobe.cli.suggest:suggest",
    "plan": "memprobe.cli.plan:plan",
    "db": "memprobe.cli.db:db",
    "report": "memprobe.cli.report:report",
    "verify": "memprobe.cli.verify:verify",
    "sweep": "memprobe.cli.sweep:sweep",
    "nnunet": "memprobe.cli.nnunet:nnunet",
    "snapshot": "memprobe.cli.snapshot:snapshot",
}


class LazyCommands(dict[str, click.Command]):
    """The commands by name: every name is known at once, each command is imported when read."""

    def __init__(self, targets: dict[str, str]) -> None:
        super().__init__()
        self.targets = dict(targets)

    def __getitem__(self, name: str) -> click.Command:
        if not super().__contains__(name):
            module, _, attribute = self.targets[name].partition(":")
            super().__setitem__(name, getattr(importlib.import_module(module), attribute))
        return super().__getitem__(name)

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self.targets else default

    def __contains__(self, name: object) -> bool:
        return name in self.targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.targets)

    def __len__(self) -> int:
        return len(self.targets)

    def keys(self) -> Any:
        return self.targets.keys()

    def items(self) -> Any:
        return [(name, self[name]) for name in self.targets]

    def values(self) -> Any:
        return [self[name] for name in self.targets]


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use (see ``LazyCommands``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = LazyCommands(COMMANDS)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)
