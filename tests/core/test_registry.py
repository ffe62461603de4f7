"""Tests of memprobe.core.archs.registry: static architecture facts and name lookup."""

from __future__ import annotations

import importlib
import sys

import pytest

from memprobe.core.archs.registry import (
    ARCHS,
    ArchSpec,
    get_arch,
    known_arch_names,
    resolve_arch,
    smallest_patch_size,
)
from memprobe.core.errors import InvalidInputError


@pytest.mark.parametrize("spec", list(ARCHS.values()), ids=list(ARCHS))
def test_every_factory_resolves_to_a_callable(spec: ArchSpec) -> None:
    """Each registered factory names an importable module and a callable in it."""
    module_name, _, attribute = spec.factory.partition(":")
    assert module_name and attribute, spec.factory
    factory = getattr(importlib.import_module(module_name), attribute)
    assert callable(factory)


@pytest.mark.parametrize("spec", list(ARCHS.values()), ids=list(ARCHS))
def test_specs_are_consistent(spec: ArchSpec) -> None:
    """Divisors are powers of two matching the stages; deep-supervision facts agree; names are keys."""
    assert ARCHS[spec.name] is spec and not spec.custom
    assert spec.divisor > 0 and spec.divisor & (spec.divisor - 1) == 0
    assert spec.stage_features and all(width > 0 for width in spec.stage_features)
    assert spec.supports_deep_supervision == (spec.deep_supervision_heads > 0)
    assert (spec.attention_token_volume > 0) == (spec.attention_heads > 0)
    assert smallest_patch_size(spec) == 2 * spec.divisor
    assert spec.description


def test_known_names_in_registry_order() -> None:
    """known_arch_names lists every registered name once, mednext first."""
    names = known_arch_names()
    assert names == list(ARCHS) and len(set(names)) == len(names) and names[0] == "mednext"


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("mednext", "mednext"),
        ("MedNeXt", "mednext"),
        ("mednext-s", "mednext"),
        ("MEDNEXT-S", "mednext"),
        ("  basicunet ", "basicunet"),
        ("DynUNet", "dynunet"),
        ("mednext-L", "mednext-l"),
    ],
)
def test_get_arch_accepts_aliases_and_any_case(name: str, canonical: str) -> None:
    """Names and aliases are matched case-insensitively, ignoring surrounding spaces."""
    assert get_arch(name).name == canonical


def test_unknown_arch_lists_known_names() -> None:
    """An unknown name is refused with every registered name and the custom-model syntax."""
    with pytest.raises(InvalidInputError) as caught:
        get_arch("resnet50")
    message = str(caught.value)
    assert "'resnet50'" in message and "package.module:factory" in message
    assert all(name in message for name in known_arch_names())


def test_custom_spec_from_module_and_factory() -> None:
    """A package.module:factory name becomes a provisional custom spec: divisor 1, no stages."""
    spec = resolve_arch("tests.tiny_models:tiny_net")
    assert spec.custom and spec.name == spec.factory == "tests.tiny_models:tiny_net"
    assert spec.divisor == 1 and spec.stage_features == () and smallest_patch_size(spec) == 1
    assert not spec.supports_deep_supervision


def test_custom_spec_resolves_without_importing_the_model() -> None:
    """Describing a custom model does not import it (planning stays instant)."""
    sys.modules.pop("tests.never_imported_module", None)
    spec = resolve_arch("tests.never_imported_module:make")
    assert spec.custom and "tests.never_imported_module" not in sys.modules


@pytest.mark.parametrize("name", [":factory", "module:", ":"])
def test_malformed_custom_spec(name: str) -> None:
    """A custom name missing its module or factory is refused with the expected form."""
    with pytest.raises(InvalidInputError, match=r"package\.module:factory"):
        resolve_arch(name)


def test_resolve_arch_registered_names() -> None:
    """resolve_arch returns the registered spec itself for registered names and aliases."""
    assert resolve_arch("mednext-s") is ARCHS["mednext"]


def test_custom_factory_builds_a_module() -> None:
    """build_model calls a user factory with the channels and returns its network."""
    from torch import nn

    from memprobe.training.networks import build_model

    model = build_model(resolve_arch("tests.tiny_models:tiny_net"), 3, 5)
    assert isinstance(model, nn.Module)
    assert model.down[0].in_channels == 3 and model.up[-1].out_channels == 5  # type: ignore[index,union-attr]


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("tests.tiny_models:not_a_module", "not a torch.nn.Module"),
        ("tests.tiny_models:NOT_CALLABLE", "is not callable"),
        ("tests.tiny_models:missing", "has no attribute"),
        ("tests.no_such_module:factory", "cannot import"),
    ],
)
def test_bad_custom_factories_are_input_errors(name: str, fragment: str) -> None:
    """A custom name that does not lead to a network factory is a one-line input error."""
    from memprobe.training.networks import build_model

    with pytest.raises(InvalidInputError, match=fragment):
        build_model(resolve_arch(name), 1, 2)
