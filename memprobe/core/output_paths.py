"""Files memprobe is asked to write: checked before anything is measured, written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from memprobe.core.errors import InvalidInputError

IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".tif", ".tiff", ".eps", ".ps", ".webp")
_KERNEL_FOLDERS = (Path("/proc"), Path("/sys"), Path("/dev"))


def check_output_path(
    path: str | Path | None,
    option: str = "--out",
    *,
    reading: Iterable[str | Path] = (),
    suffixes: tuple[str, ...] | None = None,
) -> Path:
    """Ensure ``path`` can be written as a new or replaced regular file that memprobe is not reading.

    Raises:
        InvalidInputError: empty, a folder, a missing or read-only folder, a device or kernel
            file, an extension not in ``suffixes``, or one of the files in ``reading``.
    """
    if path is None or not str(path).strip():
        raise InvalidInputError(f"{option} is empty: give a file name")
    target = Path(path).expanduser()
    if target.is_dir():
        raise InvalidInputError(f"{option} {target} is a folder: give a file name")
    resolved = target.resolve()
    if any(resolved.is_relative_to(folder) for folder in _KERNEL_FOLDERS):
        raise InvalidInputError(f"{option} {target} is a device or kernel file: give a regular file")
    if target.exists() and not target.is_file():
        raise InvalidInputError(f"{option} {target} is not a regular file: give a regular file")
    _refuse_reading(target, option, reading)
    if suffixes is not None and target.suffix.lower() not in suffixes:
        raise InvalidInputError(
            f"{option} {target}: unknown extension {target.suffix or '(none)'!r}; use one of {', '.join(suffixes)}"
        )
    folder = resolved.parent
    if not folder.is_dir():
        raise InvalidInputError(f"{option} {target}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise InvalidInputError(f"{option} {target} cannot be written: the file or its folder is read-only")
    return target


def check_output_folder(
    folder: str | Path, names: Iterable[str], option: str = "--out", *, reading: Iterable[str | Path] = ()
) -> list[Path]:
    """Make ``folder`` and return the files ``names`` in it, each checked as ``check_output_path`` checks.

    A file memprobe reads (the database) stored under one of ``names`` is refused before the
    folder is made, so a refused command leaves nothing behind.

    Raises:
        InvalidInputError: ``folder`` is a file or cannot be made, or a file in it cannot be written.
    """
    target = Path(folder).expanduser()
    if target.exists() and not target.is_dir():
        raise InvalidInputError(f"{option} {target} is not a folder: give a folder")
    others = list(reading)
    files = [target / name for name in names]
    for file in files:
        _refuse_reading(file, option, others)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidInputError(f"{option} {target} cannot be made: {error.strerror or error}") from None
    return [check_output_path(file, option, reading=others) for file in files]


def _refuse_reading(target: Path, option: str, reading: Iterable[str | Path]) -> None:
    """Refuse ``target`` when it is a file memprobe reads: writing it would destroy its input."""
    for other in reading:
        if _same_file(target, Path(other)):
            raise InvalidInputError(
                f"{option} {target} is {other}, which memprobe reads: write to another file"
            )


def _same_file(first: Path, second: Path) -> bool:
    try:
        if first.exists() and second.exists():
            return os.path.samefile(first, second)
        return first.resolve() == second.expanduser().resolve()
    except OSError:
        return False


def write_atomically(path: str | Path, text: str | bytes) -> None:
    """Replace ``path`` by ``text`` whole: a temporary file in the same folder, then ``os.replace``.

    A write that fails midway (a full disk) leaves ``path`` as it was and raises OSError.
    """
    target = Path(path)
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask()
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(text.encode("utf-8") if isinstance(text, str) else text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
