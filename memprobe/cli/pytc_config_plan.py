"""``memprobe plan --config``: plan a PyTorch Connectomics YAML config, a view over ``plan_config_file``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from memprobe.cli.options import emit
from memprobe.cli.render import Report

if TYPE_CHECKING:
    from memprobe.integrations.pytc.result import AutoPlanResult

# Options the config itself answers, and the key that does.
_DECIDED_BY_CONFIG = {
    "arch": "model.architecture",
    "precision": "training.precision",
    "patch": "data.patch_size",
    "batch": "data.batch_size",
    "lr": "optimization.lr",
    "spacing": "data.target_spacing",
    "median_shape": "data.median_shape",
    "effective_batch": "training.accumulate_grad_batches",
    "in_channels": "model.in_channels",
    "out_channels": "model.out_channels",
    "deep_supervision": "model.deep_supervision",
    "as_yaml": "the output, which is YAML already",
}


def _given(context: click.Context, name: str) -> bool:
    return context.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE


def _check_options(context: click.Context, config_path: str | None) -> None:
    if config_path is None:
        raise click.UsageError("--out needs --config: it names where the planned config goes")
    for name, key in _DECIDED_BY_CONFIG.items():
        if _given(context, name):
            option = "--yaml" if name == "as_yaml" else f"--{name.replace('_', '-')}"
            raise click.UsageError(f"{option} cannot be combined with --config: set {key} in the config")


def _layout(result: AutoPlanResult) -> dict[str, Any]:
    """The per-rank and global batch in each convention, and DDP's bucket settings, on several GPUs."""
    from memprobe.planning.exports import data_parallel

    if result.strategy == "single":
        return {}
    layout = {"data_parallel": data_parallel(result.batch_size, result.strategy, result.world_size)}
    return layout | ({"ddp_buckets": result.ddp_buckets} if result.ddp_buckets else {})


def config_file_mode(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--config``/``--out`` to ``plan``: with them, the command plans that config file instead."""

    @functools.wraps(command)
    def branch(config_path: str | None, out_path: str | None, **kwargs: Any) -> Any:
        if config_path is None and out_path is None:
            return command(**kwargs)
        setup = kwargs["setup"]
        return plan_config_view(config_path, out_path, kwargs["gpu_mem"], kwargs["safety"], kwargs["db_path"],
                                kwargs["calibrated_on"], kwargs["as_json"], setup.world_size, setup.strategy)  # fmt: skip

    declared: Callable[..., Any] = branch
    declared = click.option(
        "--out",
        "out_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Write the planned config here.",
    )(declared)
    return click.option(
        "--config",
        "config_path",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="Plan this PyTorch Connectomics YAML config: fill the values it leaves unset.",
    )(declared)


def plan_config_view(
    config_path: str | None,
    out_path: str | None,
    gpu_mem: int | None,
    safety: float,
    db_path: str | None,
    device: str | None,
    as_json: bool,
    gpus: int = 1,
    strategy: str | None = None,
) -> None:
    """Plan the config (one rank's, with --gpus N); print the planned YAML (no --out) or what was set and kept."""
    from memprobe.cli.budget import resolve_budget
    from memprobe.integrations.pytc.yaml_config import plan_config_file

    context = click.get_current_context()
    _check_options(context, config_path)
    assert config_path is not None
    budget_bytes, _ = resolve_budget(gpu_mem)
    planned = plan_config_file(
        config_path,
        out_path,
        gpu_memory_gb=budget_bytes / 2**30,
        num_gpus=gpus if _given(context, "gpus") else None,
        safety_margin=safety if _given(context, "safety") else None,
        db=db_path,
        device=device,
        strategy=strategy,
        world_size=gpus,
    )
    plan, result = planned.plan, planned.plan.result
    warnings = list(result.warnings) if result else []
    data = {
        "config": config_path,
        "out": out_path,
        "set": plan.planned,
        "kept": plan.kept,
        "notes": list(plan.notes),
        "warnings": warnings,
        "arch": result.arch if result else None,
        "reasons": result.reasons if result else {},
        "calibration": result.calibration_source if result else None,
        "predicted_peak_bytes": round(result.predicted_peak_bytes) if result else None,
        "budget_bytes": budget_bytes,
        **(_layout(result) if result else {}),
    }
    if out_path is None and not as_json:
        click.echo(planned.text, nl=False)
        for line in (*plan.notes, *(f"warning: {w}" for w in warnings)):
            click.echo(f"memprobe: {line}", err=True)
        return
    reasons = result.reasons if result else {}
    rows = [
        {"key": path, "value": value, "action": "set", "reason": reasons.get(path.rpartition(".")[2], "")}
        for path, value in plan.planned.items()
    ] + [
        {"key": path, "value": value, "action": "kept", "reason": "set in the config"}
        for path, value in plan.kept.items()
    ]
    written = (f"wrote {out_path}",) if out_path else ()
    notes = (*plan.notes, *written, *(f"warning: {w}" for w in warnings))
    emit(Report(data, ((f"Planned {config_path}", rows),), notes), as_json)
