"""Values as PyTorch Connectomics configs write them: Lightning precisions, and checks naming the bad key.

A config is user input: a wrong type must end in one line that names the key, not a traceback.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

from memprobe.core.enums import Precision
from memprobe.core.errors import InvalidInputError
from memprobe.core.input_files import shown

_LIGHTNING_PRECISIONS = {
    "32": Precision.FP32,
    "32-true": Precision.FP32,
    "16": Precision.FP16_MIXED,
    "16-mixed": Precision.FP16_MIXED,
    "bf16": Precision.BF16_MIXED,
    "bf16-mixed": Precision.BF16_MIXED,
}


def _echo(value: Any) -> str:
    """``value`` as Python writes it, cut to a short prefix: a config's value may be megabytes."""
    return shown(repr(value))


def precision_from_lightning(text: object, where: str = "precision") -> Precision:
    """memprobe's precision for a Lightning name (``32``, ``16-mixed``, ``bf16-mixed``) or its own."""
    key = str(text).strip().lower()
    if key in _LIGHTNING_PRECISIONS:
        return _LIGHTNING_PRECISIONS[key]
    try:
        return Precision(key)
    except ValueError:
        raise InvalidInputError(
            f"{where} {_echo(text)} is not a precision memprobe measures: use 32, 16-mixed or bf16-mixed"
        ) from None


def _whole(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < minimum:
        raise InvalidInputError(f"{where} must be a whole number of at least {minimum}, got {_echo(value)}")
    return int(value)


def _finite_positive(value: Any, whole: bool) -> bool:
    """A number (a whole one if ``whole``; never a bool) above 0 and finite as a float: not nan, inf or 1e400."""
    number_kind = isinstance(value, Integral if whole else Real) and not isinstance(value, bool)
    if not number_kind:
        return False
    try:
        number = float(value)
    except OverflowError:  # an int of hundreds of digits
        return False
    return math.isfinite(number) and number > 0


def _three(value: Any, where: str, whole: bool) -> list[Any]:
    """Three positive sizes from any sequence (a list, a tuple, a numpy array)."""
    items = [] if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") else list(value)
    if len(items) != 3 or not all(_finite_positive(v, whole) for v in items):
        noun = "whole numbers" if whole else "numbers"
        raise InvalidInputError(f"{where} must be 3 positive {noun} (z, y, x), got {_echo(value)}")
    return [int(v) if whole else float(v) for v in items]


def _positive(value: Any, where: str) -> float:
    if not _finite_positive(value, whole=False):
        raise InvalidInputError(f"{where} must be a positive number, got {_echo(value)}")
    return float(value)


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{where} must be true or false, got {_echo(value)}")
    return value


_CHECKS = {
    "batch_size": lambda v, w: _whole(v, w, 1),
    "accumulate_grad_batches": lambda v, w: _whole(v, w, 1),
    "num_workers": lambda v, w: _whole(v, w, 0),
    "in_channels": lambda v, w: _whole(v, w, 1),
    "out_channels": lambda v, w: _whole(v, w, 1),
    "patch_size": lambda v, w: _three(v, w, whole=True),
    "median_shape": lambda v, w: _three(v, w, whole=True),
    "target_spacing": lambda v, w: _three(v, w, whole=False),
    "lr": _positive,
    "deep_supervision": _flag,
}


def check_value(name: str, value: Any, where: str | None = None) -> Any:
    """``value`` of the setting ``name`` if it has the right type; else an error naming ``where``."""
    where = where or name
    if name == "precision":
        precision_from_lightning(value, where)
        return value
    check = _CHECKS.get(name)
    return check(value, where) if check else value
