"""Plan a PyTorch Connectomics config (OmegaConf or a plain nested dict): fill what the user left unset.

A value counts as *set explicitly* when its key is present with a value that is not null, not
OmegaConf's missing marker ``???``, and not the planner's ``auto`` marker (``auto`` or
``[auto]``, as its documentation writes the values it fills). Explicit values are kept, never
changed, and the plan is made around them: a kept patch gets a batch planned for it.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memprobe.core.errors import InvalidInputError
from memprobe.core.input_files import shown
from memprobe.integrations.pytc.planner import (
    DEFAULT_ARCHITECTURE,
    DEFAULT_SAFETY_MARGIN,
    AutoConfigPlanner,
    data_parallel_notes,
)
from memprobe.integrations.pytc.result import AutoPlanResult, format_plan
from memprobe.integrations.pytc.values import check_value

_AUTO_MARKERS = ("auto", "[auto]", "???")


@dataclass(frozen=True)
class Target:
    """A planned value and where configs keep it; the first path is written when none is present."""

    name: str
    paths: tuple[str, ...]


# The planner's documentation keeps workers in data and lr in optimizer: both are read too.
TARGETS = (
    Target("batch_size", ("data.batch_size",)),
    Target("patch_size", ("data.patch_size",)),
    Target("precision", ("training.precision",)),
    Target("accumulate_grad_batches", ("training.accumulate_grad_batches",)),
    Target("num_workers", ("system.num_workers", "data.num_workers")),
    Target("lr", ("optimization.lr", "optimizer.lr")),
)


@dataclass(frozen=True)
class ConfigPlan:
    """What planning a config sets and keeps (dotted paths), and why."""

    planned: dict[str, Any]
    kept: dict[str, Any]
    notes: tuple[str, ...] = field(default=())
    result: AutoPlanResult | None = None  # None when the config disables auto-planning

    def __repr__(self) -> str:
        return f"ConfigPlan(planned={self.planned}, kept={sorted(self.kept)})"


def _is_omegaconf(node: object) -> bool:
    return type(node).__module__.startswith("omegaconf")


def _child(node: Any, key: str) -> Any:
    """``node[key]``, or None where it is absent, missing (``???``) or ``node`` is no mapping."""
    if _is_omegaconf(node):
        from omegaconf import DictConfig, OmegaConf

        if not isinstance(node, DictConfig) or key not in node or OmegaConf.is_missing(node, key):
            return None
        return node[key]
    return node.get(key) if isinstance(node, Mapping) else None


def lookup(config: Any, path: str) -> Any:
    """The value at a dotted path as plain Python (lists, not ListConfig), or None."""
    node = config
    for key in path.split("."):
        node = _child(node, key)
    if _is_omegaconf(node):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(node, resolve=True)
    return list(node) if isinstance(node, list) else node


def is_explicit(value: Any) -> bool:
    """Set by the user: not null, ``???``, ``auto`` or ``[auto]``."""
    if value is None:
        return False
    if isinstance(value, list) and len(value) == 1:
        value = f"[{value[0]}]"
    return not (isinstance(value, str) and value.strip().lower() in _AUTO_MARKERS)


def lookup_node(config: Any, path: str) -> Any:
    """The node (section) at a dotted path, unconverted; None where absent."""
    node = config
    for key in filter(None, path.split(".")):
        node = _child(node, key)
    return node


def _present(config: Any, path: str) -> bool:
    """Whether the key at ``path`` exists, even with a null value."""
    parent, _, key = path.rpartition(".")
    node = lookup_node(config, parent)
    return isinstance(node, Mapping) and key in node


def write_path(config: Any, target: Target) -> str:
    """Where an unset value goes: a key already there (null or ``auto``), else a section already there."""
    for path in target.paths:
        if _present(config, path):
            return path
    for path in target.paths:
        if _present(config, path.rpartition(".")[0]):
            return path
    return target.paths[0]


def _section(node: Any, key: str) -> Any:
    """``node[key]`` as a mapping, created (of ``node``'s own kind) where absent or null."""
    child = _child(node, key)
    if child is None:
        node[key] = {} if _is_omegaconf(node) else type(node)()
        child = node[key]
    if not isinstance(child, Mapping):
        raise InvalidInputError(f"{key} must be a section (a mapping of keys), got {shown(repr(child))}")
    return child


def _write(config: MutableMapping[str, Any], path: str, value: Any) -> None:
    *sections, key = path.split(".")
    node: Any = config
    for name in sections:
        node = _section(node, name)
    node[key] = value


def _setting(config: Any, path: str, default: Any = None) -> Any:
    """An input of planning (not a planned value), checked so a wrong type names its key."""
    value = lookup(config, path)
    return default if value is None else check_value(path.rpartition(".")[2], value, path)


def _check_config(config: object, kind: type) -> None:
    """Ensure ``config`` is a mapping of sections (a dict, an OmegaConf DictConfig), not None or text."""
    if not isinstance(config, kind):
        needed = "a mapping of sections" if kind is Mapping else "a mapping of sections that can be changed"
        raise InvalidInputError(
            f"config must be {needed} (a dict or an OmegaConf DictConfig), got {type(config).__name__}"
        )


def plan_config(
    config: Any,
    *,
    gpu_memory_gb: float | None = None,
    num_gpus: int | None = None,
    safety_margin: float | None = None,
    db: str | Path | None = None,
    device: str | None = None,
    strategy: str | None = None,
    world_size: int = 1,
    planner_class: type[AutoConfigPlanner] = AutoConfigPlanner,
) -> ConfigPlan:
    """Plan the values ``config`` leaves unset, around the ones it sets; ``config`` is not changed.

    With ``world_size`` above 1 (``strategy`` ddp, the default, or fsdp) the config is planned
    for one rank from a calibration of that layout: ``data.batch_size`` is the per-rank batch,
    as PyTorch Connectomics and Lightning take it per device, and the notes give the global one.

    Raises:
        InvalidInputError: an architecture memprobe has no network for (see `memprobe archs`).
        NoCalibrationError: that network has no calibration of that layout (the message names
            the `memprobe calibrate` command, with its --gpus and --strategy).
    """
    _check_config(config, Mapping)
    auto_plan = lookup(config, "system.auto_plan")
    if auto_plan is not None and not auto_plan:
        return ConfigPlan({}, {}, ("system.auto_plan is false: nothing planned",))
    notes: list[str] = []
    architecture = lookup(config, "model.architecture")
    if not is_explicit(architecture):
        architecture = DEFAULT_ARCHITECTURE
        notes.append(
            f"model.architecture is not set: planned for {DEFAULT_ARCHITECTURE}, the default network"
        )
    kept: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for target in TARGETS:
        for path in target.paths:
            if is_explicit(value := lookup(config, path)):
                kept[path], overrides[target.name] = value, check_value(target.name, value, path)
                break
    model = {
        name: _setting(config, f"model.{name}", default)
        for name, default in (("in_channels", 1), ("out_channels", 2), ("deep_supervision", False))
    }
    planner = planner_class(
        str(architecture),
        _setting(config, "data.target_spacing"),
        _setting(config, "data.median_shape"),
        overrides,
        mednext_size=str(lookup(config, "model.mednext_size") or "S"),
        gpu_memory_gb=gpu_memory_gb,
        num_gpus=num_gpus,
        safety_margin=safety_margin or DEFAULT_SAFETY_MARGIN,
        db=db,
        device=device,
        strategy=strategy,
        world_size=world_size,
    )
    result = planner.plan(**model)
    notes += data_parallel_notes(result)
    planned = {
        write_path(config, target): getattr(result, target.name)
        for target in TARGETS
        if target.name not in overrides
    }
    return ConfigPlan(planned, kept, tuple(notes), result)


def apply_plan(config: Any, plan: ConfigPlan) -> None:
    """Write the planned values into ``config`` (sections created where absent)."""
    if _is_omegaconf(config):
        from omegaconf import open_dict

        context: Any = open_dict(config)  # a structured config refuses new keys otherwise
    else:
        context = nullcontext()
    with context:
        for path, value in plan.planned.items():
            _write(config, path, value)


def format_config_plan(plan: ConfigPlan) -> str:
    """What was set and kept, then the planner's own printout."""
    lines = [*plan.notes]
    lines += [f"set  {path} = {value}" for path, value in plan.planned.items()]
    lines += [f"kept {path} = {value}" for path, value in plan.kept.items()]
    if plan.result is not None:
        lines.append(format_plan(plan.result))
    return "\n".join(lines)


def auto_plan_config(config: Any, print_results: bool = True, **planning: Any) -> Any:
    """Fill the unset planned values of a PyTorch Connectomics config and return it.

    Fills ``data.batch_size``, ``data.patch_size``, ``training.precision``,
    ``training.accumulate_grad_batches``, ``system.num_workers`` (or ``data.num_workers``
    where the config keeps it) and ``optimization.lr`` (or ``optimizer.lr``); a value the user
    set explicitly (see the module docstring) is never changed. ``system.auto_plan: false``
    leaves the config as it is.

    Args:
        config: an OmegaConf ``DictConfig`` or a plain nested dict; changed in place.
        print_results: print what was set and kept, and the plan.
        **planning: ``gpu_memory_gb``, ``num_gpus``, ``safety_margin``, ``db``, ``device``,
            ``strategy``, ``world_size`` (see ``plan_config``).

    Returns:
        ``config``, as PyTorch Connectomics' ``auto_plan_config`` does.

    Raises:
        InvalidInputError: ``config`` is not a mapping, or a value in it has the wrong type
            (its key is named); see ``plan_config`` for the rest.
    """
    _check_config(config, MutableMapping)
    plan = plan_config(config, **planning)
    apply_plan(config, plan)
    if print_results:
        print(format_config_plan(plan))
    return config
