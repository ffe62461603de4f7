"""Give a custom model its shape rule: as given, as its factory declares it, or found on fake tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from memprobe.core.archs.registry import ArchSpec, resolve_arch
from memprobe.core.archs.shape_rules import ShapeRule, arch_with_rule, declared_rule, find_rule
from memprobe.core.errors import InvalidInputError, ModelError
from memprobe.training.networks import build_model, load_factory


def runs_on_fakes(model: nn.Module, patch: Sequence[int], in_channels: int) -> str | None:
    """Run a training-mode forward of ``model`` on a fake batch; the error in one line, or None."""
    from memprobe.backends.trace_backend import fake_copy, quiet_fake_tensors

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
        rule = _found_rule(spec, in_channels, out_channels)
        if rule.divisors == (1, 1, 1) and min_patch is None:  # takes any size: the name stays as typed
            return spec.name, rule
    if min_patch is not None:
        rule = ShapeRule(rule.divisors, tuple(int(m) for m in min_patch), rule.source)  # type: ignore[arg-type]
    return arch_with_rule(spec.factory, rule.divisors, rule.min_patch), rule


def _found_rule(spec: ArchSpec, in_channels: int, out_channels: int) -> ShapeRule:
    """The rule found on fake tensors; a model that fails the same way at every size is broken, not picky."""
    model = build_model(spec, in_channels, out_channels)
    errors: dict[tuple[int, int, int], str] = {}

    def accepts(patch: tuple[int, int, int]) -> bool:
        error = runs_on_fakes(model, patch, in_channels)
        if error is not None:
            errors[patch] = error
        return error is None

    try:
        return find_rule(accepts, spec.name)
    except InvalidInputError:
        if len(set(errors.values())) == 1:  # not about the shape: the model's own failure
            raise ModelError(
                f"{spec.name}, on every patch tried, failed: {next(iter(errors.values()))}"
            ) from None
        largest = max(errors, key=lambda patch: patch[0])
        raise InvalidInputError(
            f"cannot find which patches {spec.name} takes (at {'x'.join(map(str, largest))}: {errors[largest]}); "
            "declare them with --divisor D H W (and --min-patch D H W)"
        ) from None
