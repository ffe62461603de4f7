"""Turn an architecture name into a network: registered factories and user ``module:factory``."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from torch import nn

from memprobe.core.archs.registry import ArchSpec
from memprobe.core.errors import InvalidInputError, MemprobeError, ModelError
from memprobe.core.user_code import describe, running_user_code

if TYPE_CHECKING:
    from memprobe.core.config import StepConfig


def load_factory(path: str) -> Callable[..., object]:
    module_name, _, attribute = path.partition(":")
    if os.getcwd() not in sys.path:  # as `python -m` would: a model module beside the user is found
        sys.path.insert(0, os.getcwd())
    try:
        with running_user_code(f"importing {module_name!r}", argv=path):
            module = importlib.import_module(module_name)
    except MemprobeError:
        raise  # a BaseException it raised, already one line
    except Exception as error:  # an import can fail in any way; report it as one line
        raise InvalidInputError(
            f"cannot import {module_name!r} for model {path!r}: {describe(error)}; "
            "check that the module is on PYTHONPATH"
        ) from error
    factory = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)  # type: ignore[assignment]
        if factory is None:
            raise InvalidInputError(f"{module_name!r} has no attribute {attribute!r} (from {path!r})")
    if not callable(factory):
        raise InvalidInputError(f"{path!r} is not callable: give a function or class returning an nn.Module")
    return factory  # type: ignore[return-value]


def _accepts(factory: Callable[..., object], name: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def build_model(
    spec: ArchSpec,
    in_channels: int,
    out_channels: int,
    *,
    deep_supervision: bool = False,
    patch: Sequence[int] | None = None,
    checkpointing: bool = False,
) -> nn.Module:
    """Build the network described by ``spec``.

    A user factory is called as ``factory(in_channels, out_channels)``, with
    ``deep_supervision=``/``patch=`` added when its signature accepts them. With
    ``checkpointing``, a factory that takes ``checkpointing=`` switches on the network's own
    activation checkpointing; any other network's top-level stages are wrapped in
    ``torch.utils.checkpoint`` (``memprobe/training/checkpointing.py``).

    Raises:
        InvalidInputError: the factory cannot be imported, or does not return an nn.Module.
        ModelError: the factory itself raised.
    """
    factory = load_factory(spec.factory)
    kwargs: dict[str, object] = {}
    if not spec.custom or _accepts(factory, "deep_supervision"):
        kwargs["deep_supervision"] = deep_supervision
    if not spec.custom or _accepts(factory, "patch"):
        kwargs["patch"] = tuple(patch) if patch is not None else None
    if not spec.custom and _accepts(factory, "spec"):  # a factory serving several topologies (nnU-Net's)
        kwargs["spec"] = spec
    own_switch = checkpointing and _accepts(factory, "checkpointing")
    if own_switch:
        kwargs["checkpointing"] = True
    try:
        with running_user_code(f"building {spec.name}", argv=spec.factory):
            model = factory(in_channels, out_channels, **kwargs)
    except MemprobeError:
        raise  # memprobe's own one-line error with its fix, e.g. the extra nnU-Net's networks need
    except Exception as error:
        raise ModelError(f"building {spec.name} failed: {describe(error)}") from error
    if not isinstance(model, nn.Module):
        raise InvalidInputError(
            f"{spec.factory!r} returned {type(model).__name__}, not a torch.nn.Module: "
            "the factory must return the network"
        )
    if checkpointing and not own_switch:
        from memprobe.training.checkpointing import checkpoint_stages

        return checkpoint_stages(model)
    return model


def factory_source_hash(spec: ArchSpec) -> str | None:
    """A hash of a custom factory's source file, so an edited model is measured afresh.

    None for registered networks: their code is pinned by the library versions that every
    stored measurement's environment records.
    """
    if not spec.custom:
        return None
    import hashlib
    import importlib.util

    module_name = spec.factory.partition(":")[0]
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.origin or not os.path.isfile(found.origin):
        return f"unhashable:{spec.factory}"
    with open(found.origin, "rb") as source:
        return hashlib.sha256(source.read()).hexdigest()[:16]


def build_for_config(config: StepConfig) -> nn.Module:
    """The network a training-step configuration measures (its channels, heads and patch)."""
    from memprobe.core.archs.registry import resolve_arch

    return build_model(
        resolve_arch(config.arch),
        config.in_channels,
        config.out_channels,
        deep_supervision=config.deep_supervision,
        patch=config.patch,
        checkpointing=config.checkpointing,
    )
