"""Read a file the user names, safely: a regular file, whole, below a size cap.

``/dev/zero`` would be read until the kernel stops memprobe, and a FIFO would block forever;
a file that is not regular, or larger than the cap, is refused with one line instead.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from memprobe.core.errors import InvalidInputError

MAX_INPUT_BYTES = (
    64 << 20
)  # configs, fingerprints and exports are kilobytes; a dump of a lab's database, megabytes
_SHOWN = 100


def shown(value: object, limit: int = _SHOWN) -> str:
    """A value as an error shows it: cut to a short prefix, so an error stays one short line."""
    text = str(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def read_input_bytes(path: str | Path, what: str, limit_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of ``path``, named ``what`` in errors (e.g. "--config").

    Raises:
        InvalidInputError: missing, not a regular file (a folder, a device, a FIFO), or over the cap.
    """
    target = Path(path).expanduser()
    try:
        info = os.stat(target)  # follows links: what is read is what is checked
    except (OSError, ValueError) as error:
        raise InvalidInputError(f"{what} {shown(target)}: no such file ({type(error).__name__})") from None
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInputError(f"{what} {shown(target)} is not a regular file: give a file")
    if info.st_size > limit_bytes:
        raise InvalidInputError(
            f"{what} {shown(target)} is larger than {limit_bytes >> 20} MiB: not an input memprobe reads"
        )
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)  # a FIFO swapped in after the check cannot block
    try:
        descriptor = os.open(target, flags)
    except OSError as error:
        raise InvalidInputError(f"{what} {shown(target)} cannot be read: {error.strerror}") from None
    with os.fdopen(descriptor, "rb") as stream:
        data = stream.read(limit_bytes + 1)
    if len(data) > limit_bytes:
        raise InvalidInputError(
            f"{what} {shown(target)} is larger than {limit_bytes >> 20} MiB: not an input memprobe reads"
        )
    return data


def read_input_text(path: str | Path, what: str, limit_bytes: int = MAX_INPUT_BYTES) -> str:
    """``read_input_bytes`` decoded as UTF-8 (a byte-order mark is kept: callers that rewrite the file need it)."""
    try:
        return read_input_bytes(path, what, limit_bytes).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{what} {shown(path)} is not UTF-8 text") from None
