"""Parse and format byte quantities such as ``24GiB`` (binary and decimal units)."""

from __future__ import annotations

import math
import re

from memprobe.core.errors import InvalidInputError

_UNITS = {
    "": 1024**3,  # a bare number is GiB: "24" means a 24 GiB card
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")
GIB = 1024**3
MIB = 1024**2
DEFAULT_GPU_MEM_BYTES = 24 * GIB  # planned for when no GPU is in view and none is named (a common card)


def format_shape(sizes: object) -> str:
    """A patch, window or image as people write it: ``128x128x96``."""
    return "x".join(map(str, sizes))  # type: ignore[call-overload]


def parse_bytes(text: str | int | float) -> int:
    """Parse a memory size: text with a unit, bare text meaning GiB; a number is taken as bytes.

    Raises:
        InvalidInputError: if the text is not a positive size with a known unit.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not math.isfinite(text):
            raise InvalidInputError(f"memory size {text!r} must be a finite number of bytes")
        if int(text) <= 0:  # 0.5 bytes would become a budget of 0
            raise InvalidInputError(f"memory size {text!r} must be greater than zero")
        if text < MIB:  # no GPU has less: a number of GiB passed where bytes are meant
            raise InvalidInputError(
                f"memory size {text!r} is in bytes, less than 1 MiB: did you mean '{text}GiB'?"
            )
        return int(text)  # a number from Python code is already bytes
    match = _PATTERN.match(str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise InvalidInputError(
            f"cannot read memory size {text!r}: write e.g. 24GiB, 24GB, 24000MiB or 24 (GiB)"
        )
    number, unit = float(match.group(1)), match.group(2).lower()
    if not math.isfinite(number * _UNITS[unit]) or number * _UNITS[unit] > 2**80:
        raise InvalidInputError(f"memory size {text!r} is absurdly large")
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise InvalidInputError(f"memory size {text!r} must be greater than zero")
    return size


def format_bytes(size: float | None) -> str:
    """Format a byte count with a binary unit, e.g. ``1.50 GiB``."""
    if size is None:
        return "-"
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if abs(size) >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{int(size)} B"
