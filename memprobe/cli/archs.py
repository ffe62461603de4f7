"""``memprobe archs``: the registered architectures."""

from __future__ import annotations

from typing import Any

import click

from memprobe.cli.options import emit, json_option
from memprobe.cli.render import Report
from memprobe.core.archs.registry import ARCHS, smallest_patch_size


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
    nnunet_rows, nnunet_data, nnunet_notes = _nnunet_networks()
    emit(
        Report(
            data + nnunet_data,
            (("", rows + nnunet_rows),),
            (
                *nnunet_notes,
                "Any other model: --arch package.module:factory "
                "(a callable taking in_channels, out_channels and returning an nn.Module).",
            ),
        ),
        as_json,
    )


def _nnunet_networks() -> tuple[list[dict[str, Any]], list[dict[str, Any]], tuple[str, ...]]:
    """nnU-Net's networks: table rows, JSON items and notes (their topology rule; the extra)."""
    from memprobe.core.archs.nnunet_specs import INSTALL_HINT, PRESET_NAMES, TOPOLOGY_RULE, networks_installed

    installed = networks_installed()
    rows = [
        {
            "name": name,
            "network": description,
            "patch divisible by": "per topology",
            "smallest patch": "per topology",
            "deep supervision": "yes",
        }
        for name, description in PRESET_NAMES.items()
    ]
    data = [
        {
            "name": name,
            "description": description,
            "divisor": None,
            "smallest_patch": None,
            "deep_supervision": True,
            "topology": TOPOLOGY_RULE,
            "installed": installed,
            "install": None if installed else INSTALL_HINT,
        }
        for name, description in PRESET_NAMES.items()
    ]
    notes = [f"nnunet, nnunet-resenc-m/-l/-xl: {TOPOLOGY_RULE}."]
    if not installed:
        notes.append(f"nnU-Net's networks need dynamic-network-architectures, not installed: {INSTALL_HINT}")
    return rows, data, tuple(notes)
