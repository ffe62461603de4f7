"""Give a custom model its shape rule: as given, as its factory declares it, or found on fake tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from memprobe.archs.build import build_model, load_factory
from memprobe.archs.registry import resolve_arch
from memprobe.archs.shape_rules import ShapeRule, arch_with_rule, declared_rule, find_rule
from memprobe.errors import InvalidInputError


def runs_on_fakes(model: nn.Module, patch: Sequence[int], in_channels: int) -> str | None:
    """Run a training-mode forward of ``model`` on a fake batch; the error in one line, or None."""
    from memprobe.backends.tracked import fake_copy, quiet_fake_tensors

    fake_model, fake_mode = fake_copy(model)
    fake_model.train()
    try:
        with quiet_fake_tensors(), fake_mode, torch.no_grad():
            fake_model(torch.empty(1, in_channels, *patch))
    except Exception as error:  # any failure of the model on this shape
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


def shape_rule_arch(
    arch: str,
    *,
    divisors: Sequence[int] | None = None,
    min_patch: Sequence[int] | None = None,
    in_channels: int = 1,
    out_channels: int = 2,
) -> tuple[str, ShapeRule | None]:
    """The architecture name with its shape rule attached, and the rule (None for registered ones).

    Given divisors win; else the factory's declaration; else the rule found by trying patches.

    Raises:
        InvalidInputError: the rule is given for a registered network, or cannot be found.
    """
    spec = resolve_arch(arch)
    if not spec.custom:
        if divisors is not None or min_patch is not None:
            raise InvalidInputError(
                f"{spec.name} is registered with its own divisor: drop --divisor/--min-patch"
            )
        return spec.name, None
    if divisors is not None:
        given = tuple(int(d) for d in divisors)
        smallest = tuple(int(m) for m in min_patch) if min_patch else tuple(2 * d for d in given)
        name = arch_with_rule(spec.factory, given, smallest)
        return name, ShapeRule(given, smallest, "given")  # type: ignore[arg-type]
    if spec.divisors is not None:
        return spec.name, ShapeRule(spec.divisors, spec.min_patch or spec.divisors, "given")
    rule = declared_rule(load_factory(spec.factory))
    if rule is None:
        model = build_model(spec, in_channels, out_channels)
        rule = find_rule(lambda patch: runs_on_fakes(model, patch, in_channels) is None, spec.name)
    if min_patch is not None:
        rule = ShapeRule(rule.divisors, tuple(int(m) for m in min_patch), rule.source)  # type: ignore[arg-type]
    return arch_with_rule(spec.factory, rule.divisors, rule.min_patch), rule
