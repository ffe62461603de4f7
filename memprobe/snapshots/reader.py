"""Read a PyTorch memory snapshot without running anything it contains.

A snapshot is a pickle, and unpickling an untrusted pickle runs code. The dictionary PyTorch
writes holds only dicts, lists, tuples, strings, numbers, booleans and None, so the unpickler
here refuses every global (every class or function a pickle could name) before it is looked
up. The same dictionary is accepted as JSON (``.json``, ``.json.gz``), the form in which
snapshots are shared in memprobe's benchmarks (``{"source": ..., "snapshot": ...}``).
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memprobe.core.errors import InvalidInputError
from memprobe.core.input_files import read_input_bytes, shown

MAX_SNAPSHOT_BYTES = 4 << 30  # a ring buffer of a million events with frames stays well below
_GZIP_MAGIC = b"\x1f\x8b"


class _NoGlobalsUnpickler(pickle.Unpickler):
    """An unpickler for plain data: any global (class, function, module) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise InvalidInputError(
            f"refusing to load {module}.{name} from the snapshot: a memory snapshot holds plain "
            "data only, and loading this would run code"
        )


@dataclass(frozen=True)
class LoadedSnapshot:
    """A snapshot dictionary and where it came from (the ``source`` beside a shared JSON file)."""

    path: str
    snapshot: dict[str, Any]
    source: dict[str, Any] | None = None


def load_snapshot(path: str | Path) -> LoadedSnapshot:
    """Load a snapshot from a pickle, JSON or gzip JSON file, refusing anything that could run code.

    Raises:
        InvalidInputError: the file is missing, truncated, not a snapshot, or names a global.
    """
    file = Path(path)
    if not file.exists():
        raise InvalidInputError(
            f"no snapshot file at {_short(file)}: give the path of a .pickle or .json(.gz)"
        )
    raw = read_input_bytes(file, "snapshot", MAX_SNAPSHOT_BYTES)  # regular files only, below the cap
    data = _decode(raw, file)
    source = None
    if isinstance(data, dict) and "snapshot" in data and "segments" not in data:
        source = data.get("source") if isinstance(data.get("source"), dict) else None
        data = data["snapshot"]
    if not isinstance(data, dict) or not isinstance(data.get("segments"), list):
        raise InvalidInputError(
            f"{_short(file)} is not a PyTorch memory snapshot (no 'segments' list): write one with "
            "torch.cuda.memory._dump_snapshot(path)"
        )
    traces = data.get("device_traces", [])
    if not isinstance(traces, list) or not all(isinstance(trace, list) for trace in traces):
        raise InvalidInputError(f"{_short(file)}: 'device_traces' is not a list of per-device event lists")
    return LoadedSnapshot(str(file), data, source)


def _decode(raw: bytes, file: Path) -> Any:
    if raw.startswith(_GZIP_MAGIC):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise InvalidInputError(
                f"{_short(file)} is a truncated or damaged gzip file ({error})"
            ) from error
    if raw[:1] == b"\x80":  # pickle protocol 2+
        try:
            return _NoGlobalsUnpickler(io.BytesIO(raw)).load()
        except InvalidInputError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
                AttributeError, MemoryError, RecursionError) as error:  # fmt: skip
            raise InvalidInputError(f"{_short(file)} is a truncated or damaged pickle ({error})") from error
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise InvalidInputError(
            f"{_short(file)} is neither a snapshot pickle nor snapshot JSON: give the file written by "
            "torch.cuda.memory._dump_snapshot"
        ) from error


def _short(file: Path) -> str:
    return shown(file, 120)
