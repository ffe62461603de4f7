"""``memprobe archs``: the registered architectures."""

from __future__ import annotations

import click

from memprobe.archs.registry import ARCHS, smallest_patch_size
from memprobe.commands.options import emit, json_option
from memprobe.reporters import Report


@click.command()
@json_option
def archs(as_json: bool) -> None:
    """List the architectures memprobe can build, with their patch requirements.

    \b
    memprobe archs
    memprobe archs --json
    """
    rows = [
        {
            "name": spec.name,
            "network": spec.description,
            "patch divisible by": spec.divisor,
            "smallest patch": smallest_patch_size(spec),
            "deep supervision": "yes" if spec.supports_deep_supervision else "no",
        }
        for spec in ARCHS.values()
    ]
    data = [
        {
            "name": s.name,
            "description": s.description,
            "divisor": s.divisor,
            "smallest_patch": smallest_patch_size(s),
            "deep_supervision": s.supports_deep_supervision,
        }
        for s in ARCHS.values()
    ]
    emit(
        Report(
            data,
            (("", rows),),
            (
                "Any other model: --arch package.module:factory "
                "(a callable taking in_channels, out_channels and returning an nn.Module).",
            ),
        ),
        as_json,
    )
