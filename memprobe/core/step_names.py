"""Naming a training step, checked without torch: a built-in name or ``package.module:function``."""

from __future__ import annotations

from memprobe.core.errors import InvalidInputError

DEFAULT_STEP = "memprobe"
BUILTIN_STEPS = ("memprobe", "monai", "nnunet")
PROTOCOL = "def step(model, optimizer, inputs, labels, scaler) -> None (one full optimisation step)"


def is_custom_step(name: str) -> bool:
    return ":" in name


def check_step_name(name: object) -> str:
    """Ensure ``name`` is a built-in step or has the ``package.module:function`` form."""
    text = str(name).strip()
    if text.lower() in BUILTIN_STEPS:
        return text.lower()
    module, _, function = text.partition(":")
    if (
        module
        and function
        and all(part.isidentifier() for part in (*module.split("."), *function.split(".")))
    ):
        return text
    raise InvalidInputError(
        f"unknown training step {text!r}: choose one of {', '.join(BUILTIN_STEPS)}, "
        f"or give package.module:function implementing {PROTOCOL}"
    )
