"""Describe the machine and software a measurement comes from."""

from __future__ import annotations

import platform
from importlib import metadata

from memprobe.__version__ import __version__
from memprobe.core.measurement import Environment


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def software_environment(device_kind: str, device_name: str, **gpu_facts: object) -> Environment:
    """An Environment for this process: torch, MONAI and memprobe versions, host name."""
    import torch

    return Environment(
        device_kind=device_kind,
        device_name=device_name,
        torch_version=torch.__version__,
        monai_version=_package_version("monai"),
        memprobe_version=__version__,
        host=platform.node(),
        **gpu_facts,  # type: ignore[arg-type]
    )
