"""The options that say what is trained, declared once; which mode each option belongs to; renamed options.

Every command that takes a Setup takes ``@setup_options()``: the same names, types, defaults
and help everywhere, handed to the command as one ``SetupChoice`` and to the library as an
architecture with overrides (the library applies the one default precision rule).

An option that belongs to one mode only is a ``ModeOption`` that says so (``training_option``):
``--mode inference`` refuses it by name from that declaration, with no list kept elsewhere.
A renamed option keeps working under its old name, with a warning naming the new one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import click

from memprobe.cli.options import CHANNELS, training_option

F = Callable[..., Any]
PRECISION = click.Choice(["fp32", "fp16-mixed", "bf16-mixed", "fp16", "bf16"], case_sensitive=False)
PRECISION_HELP = (
    "fp32, fp16-mixed (fp16) or bf16-mixed (bf16); default bf16-mixed, or fp16-mixed on a GPU "
    "without bf16 (the same rule in every command and in Python)."
)


@dataclass(frozen=True)
class SetupChoice:
    """What the setup options said, as given: the library checks it into a Setup (``Setup.of``)."""

    archs: tuple[str, ...]
    precisions: tuple[str | None, ...]
    optimizer: str = "adamw"
    in_channels: int = 1
    out_channels: int = 2
    deep_supervision: bool = False
    step: str = "memprobe"
    checkpointing: bool = False
    world_size: int = 1
    strategy: str | None = None

    @property
    def arch(self) -> str:
        return self.archs[0]

    @property
    def precision(self) -> str | None:
        """The precision given, or None for the default rule."""
        return self.precisions[0]

    def overrides(self) -> dict[str, Any]:
        """The Setup fields besides architecture and precision, as the library's keyword arguments."""
        return {
            "optimizer": self.optimizer,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "deep_supervision": self.deep_supervision,
            "step": self.step,
            "checkpointing": self.checkpointing,
            "strategy": self.strategy,
            "world_size": self.world_size,
        }


_SETUP_NAMES = (
    "arch",
    "precision",
    "optimizer",
    "in_channels",
    "out_channels",
    "deep_supervision",
    "training_step",
    "checkpointing",
    "gpus",
    "strategy",
)


def setup_options(
    many_archs: bool = False, many_precisions: bool = False, arch_default: str | None = "mednext"
) -> Callable[[F], F]:
    """Declare the Setup's options and hand them to the command as ``setup: SetupChoice``.

    ``many_archs`` and ``many_precisions`` let ``--arch`` and ``--precision`` be repeated (a
    sweep, a report side by side).
    """

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def packed(**kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in _SETUP_NAMES}
            archs = given["arch"] if many_archs else (given["arch"],)
            precisions = given["precision"] if many_precisions else (given["precision"],)
            choice = SetupChoice(
                archs=tuple(archs),
                precisions=tuple(p.lower() if p else None for p in precisions) or (None,),
                optimizer=given["optimizer"].lower(),
                in_channels=given["in_channels"],
                out_channels=given["out_channels"],
                deep_supervision=given["deep_supervision"],
                step=given["training_step"],
                checkpointing=given["checkpointing"],
                world_size=given["gpus"],
                strategy=given["strategy"],
            )
            return command(setup=choice, **kwargs)

        declared: F = packed
        for option in reversed(_declarations(many_archs, many_precisions, arch_default)):
            declared = option(declared)
        return declared

    return decorate


def _declarations(
    many_archs: bool, many_precisions: bool, arch_default: str | None
) -> Sequence[Callable[[F], F]]:
    return (
        click.option(
            "--arch",
            multiple=many_archs,
            default=((arch_default,) if many_archs else arch_default) if arch_default else None,
            required=arch_default is None,
            show_default=arch_default is not None,
            help="Registered architecture (see `memprobe archs`) or package.module:factory"
            + (" (repeat for several)." if many_archs else "."),
        ),
        click.option(
            "--precision",
            multiple=many_precisions,
            type=PRECISION,
            default=None,
            help=PRECISION_HELP + (" Repeat for several." if many_precisions else ""),
        ),
        training_option(
            "--optimizer",
            type=click.Choice(["adamw", "sgd"], case_sensitive=False),
            default="adamw",
            show_default=True,
            help="adamw, or sgd (nnU-Net's).",
        ),
        click.option("--in-channels", default=1, show_default=True, type=CHANNELS, help="Input channels."),
        click.option("--out-channels", default=2, show_default=True, type=CHANNELS, help="Output classes."),
        training_option("--deep-supervision", is_flag=True, help="Train with deep-supervision heads."),
        training_option(
            "--step",
            "training_step",
            default="memprobe",
            show_default=True,
            help="Training step: memprobe (Dice+CE, AdamW), monai (DiceCELoss(to_onehot_y, softmax)), "
            "nnunet (nnU-Net v2's: SGD Nesterov 0.99, Dice+CE with deep supervision; --precision fp16-mixed), "
            "or package.module:function(model, optimizer, inputs, labels, scaler) doing one full step.",
        ),
        training_option(
            "--checkpointing",
            is_flag=True,
            help="Activation checkpointing: the network's own switch (SwinUNETR), else each top-level stage.",
        ),
        training_option(
            "--gpus",
            type=click.IntRange(1, 1024),
            default=1,
            show_default=True,
            help="Data-parallel GPUs: plan or measure one rank of N; the batch is per rank.",
        ),
        training_option(
            "--strategy",
            type=click.Choice(["ddp", "fsdp"]),
            default=None,
            help="With --gpus: DistributedDataParallel (default) or FSDP2's fully_shard.",
        ),
    )


class MemprobeCommand(click.Command):
    """A command that still takes its options' old names, warning once with the new name.

    ``renamed`` maps an old flag to its new one (``{"--budget": "--gpu-mem"}``); the old one is
    rewritten before parsing, so it takes values and checks exactly as the new one does.
    """

    def __init__(self, *args: Any, renamed: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.renamed = dict(renamed or {})

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, [self._new_name(arg) for arg in args])

    def _new_name(self, arg: str) -> str:
        flag, equals, value = arg.partition("=")
        new = self.renamed.get(flag)
        if new is None:
            return arg
        click.echo(f"memprobe: warning: {flag} is deprecated: use {new}", err=True)
        return new + equals + value


def command(renamed: Mapping[str, str] | None = None, **attributes: Any) -> Callable[[F], click.Command]:
    """``click.command`` whose old option names keep working (see ``MemprobeCommand``)."""
    return click.command(cls=MemprobeCommand, renamed=renamed, **attributes)
