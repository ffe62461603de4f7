"""Checks of the public API's arguments: the right type and a meaningful value, or InvalidInputError.

Values that parse but mean nothing (``nan``, ``inf``, a subnormal spacing, ``"no"`` for a
bool, a float batch, a set as a patch) are refused here with one line, never a raw
TypeError or OverflowError from deep inside the planner.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import MutableMapping, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any, TypeVar

from memprobe.core.errors import InvalidInputError

T = TypeVar("T")

MAX_BATCH_SIZE = 65_536  # no 3D training step holds more samples than this
MAX_SPACING_MM = 1e6
MAX_LEARNING_RATE = 1e3


def check_bool(value: object, name: str) -> bool:
    """``True`` or ``False`` (numpy's bool too); ``"no"``, 0 or None are refused."""
    if type(value).__name__ not in ("bool", "bool_"):
        raise InvalidInputError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_fraction(value: object, name: str) -> float:
    """A share in (0, 1]."""
    number = check_finite(value, name)
    if not 0 < number <= 1:
        raise InvalidInputError(f"{name} must be in (0, 1], got {value!r}")
    return number


def check_finite(value: object, name: str) -> float:
    """A real, finite, normal number (not a bool, not text, not nan, inf or subnormal)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidInputError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or (number != 0 and abs(number) < sys.float_info.min):
        raise InvalidInputError(f"{name} must be a finite, normal number, got {value!r}")
    return number


def check_positive(value: object, name: str, largest: float) -> float:
    number = check_finite(value, name)
    if not 0 < number <= largest:
        raise InvalidInputError(f"{name} must be greater than 0 and at most {largest:g}, got {value!r}")
    return number


def check_count(value: object, name: str, largest: int = MAX_BATCH_SIZE) -> int:
    """A whole number from 1 to ``largest`` (an int or numpy integer, never a float or bool)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise InvalidInputError(f"{name} must be a whole number, got {value!r}")
    if not 1 <= int(value) <= largest:
        raise InvalidInputError(f"{name} must be from 1 to {largest}, got {value!r}")
    return int(value)


def check_optional_count(value: object, name: str) -> int | None:
    return None if value is None else check_count(value, name)


def check_triple(value: object, name: str) -> Sequence[object]:
    """Three items in order: a list, tuple or array, never a set, dict, text or scalar."""
    ordered = isinstance(value, Sequence) or hasattr(value, "tolist")  # numpy arrays too
    if isinstance(value, (str, bytes, set, frozenset, dict)) or not ordered:
        raise InvalidInputError(f"{name} must be a list of 3 numbers (depth height width), got {value!r}")
    items = list(value)  # type: ignore[call-overload]
    if len(items) != 3:
        raise InvalidInputError(f"{name} has 3 sizes (depth height width), got {len(items)}")
    return items


def check_spacing(value: object, name: str = "spacing") -> list[float] | None:
    if value is None:
        return None
    return [check_positive(v, f"each {name}", MAX_SPACING_MM) for v in check_triple(value, name)]


def check_shape(value: object, name: str = "median_shape") -> list[int] | None:
    if value is None:
        return None
    return [check_count(v, f"each {name} size", 2**20) for v in check_triple(value, name)]


def check_text(value: object, name: str, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{name} must be a non-empty string, got {value!r}")
    return value


def check_db(value: object) -> str | Path | None:
    if value is None or isinstance(value, Path) or (isinstance(value, str) and value):
        return value
    raise InvalidInputError(f"db must be a path (str or Path) or None, got {value!r}")


def check_gigabytes(value: object, name: str) -> float:
    """A memory size in GB (the PyTorch Connectomics planner's unit): a number, never text."""
    return check_positive(value, name, 2**20)


def renamed_argument(
    arguments: MutableMapping[str, Any], old: str, new: str, value: T, default: object = None
) -> T:
    """A keyword argument taken under its old name (popped from ``arguments``), warning with the new one.

    ``value`` is what the new name received; one other than its ``default`` as well as the old
    name is refused, since the two name the same thing.
    """
    if old not in arguments:
        return value
    warnings.warn(f"{old}= is deprecated: use {new}=", DeprecationWarning, stacklevel=3)
    if value is not default:
        raise InvalidInputError(f"{old} and {new} name the same value: give only {new}")
    return arguments.pop(old)  # type: ignore[no-any-return]
