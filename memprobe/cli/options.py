"""Options several commands share, and how they hand their Report to a reporter."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import click
from click.core import ParameterSource

from memprobe.cli.render import Report, get_reporter
from memprobe.core.checks import MAX_BATCH_SIZE, MAX_LEARNING_RATE
from memprobe.core.input_files import shown

F = Callable[..., Any]
TRAINING, INFERENCE = "training", "inference"


class ModeOption(click.Option):
    """An option that means something in some modes only (``--mode training|inference``).

    ``refused`` says why a command declares it and still refuses it in its mode (``calibrate
    --mode inference`` chooses its own windows): given there, it is refused with that reason.
    """

    def __init__(
        self,
        *args: Any,
        modes: Collection[str] = (TRAINING, INFERENCE),
        refused: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.modes = frozenset(modes)
        self.refused = refused


def training_option(*declarations: str, **attributes: Any) -> Callable[[F], F]:
    """``click.option`` for an option of the training step only: refused with ``--mode inference``."""
    return click.option(*declarations, cls=ModeOption, modes=(TRAINING,), **attributes)


def inference_option(*declarations: str, **attributes: Any) -> Callable[[F], F]:
    """``click.option`` for an option of inference only: refused with ``--mode training``."""
    return click.option(*declarations, cls=ModeOption, modes=(INFERENCE,), **attributes)


def given(context: click.Context, name: str) -> bool:
    """Whether option ``name`` was given (on the command line or by the environment), not defaulted."""
    return context.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)


def refuse_other_modes(context: click.Context, mode: str) -> None:
    """Refuse, naming it, an option given on the command line that the chosen mode does not take."""
    from memprobe.core.errors import InvalidInputError

    for parameter in context.command.params:
        modes = getattr(parameter, "modes", None)
        if modes is None or parameter.name is None or not given(context, parameter.name):
            continue
        flag = parameter.opts[0]
        if mode in modes and getattr(parameter, "refused", None):
            raise InvalidInputError(f"{flag} {parameter.refused}")  # type: ignore[attr-defined]
        if mode not in modes:
            raise InvalidInputError(
                f"{flag} is a training option: drop it with --mode inference"
                if mode == INFERENCE
                else f"{flag} needs --mode inference"
            )


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(function)


def emit(report: Report, as_json: bool = False, fmt: str | None = None) -> None:
    """Print ``report`` with the chosen reporter (JSON when ``as_json``)."""
    if as_json and fmt is not None:
        from memprobe.core.errors import InvalidInputError

        raise InvalidInputError(f"--json and --{fmt} both ask for the output format: choose one")
    click.echo(get_reporter("json" if as_json else fmt or "table").render(report))


def shape_rule_options(function: F) -> F:
    """``--divisor`` and ``--min-patch``: the patches (and windows) a custom model takes, in either mode."""
    function = click.option(
        "--min-patch",
        nargs=3,
        type=DIVISOR,
        default=None,
        metavar="D H W",
        help="Custom model: the smallest patch it takes (default twice the divisors).",
    )(function)
    return click.option(
        "--divisor",
        "divisors",
        nargs=3,
        type=DIVISOR,
        default=None,
        metavar="D H W",
        help="Custom model: what each patch axis must be divisible by; default its factory's "
        "memprobe_divisors, else found by trying patches on fake tensors.",
    )(function)


def custom_arch_with_rule(
    arch: str,
    divisors: tuple[int, ...] | None,
    min_patch: tuple[int, ...] | None,
    in_channels: object = 1,
    out_channels: object = 2,
    find: bool = True,
) -> str:
    """The architecture name with a custom model's shape rule attached; says on stderr which rule.

    Without ``find`` (an isolated calibration, whose model may crash the process), a rule that is
    neither given nor declared is assumed, not found.
    """
    if ":" not in arch and divisors is None and min_patch is None:
        return arch
    if not find and divisors is None:
        from memprobe.core.archs.registry import resolve_arch
        from memprobe.core.archs.shape_rules import declared_rule
        from memprobe.training.networks import load_factory

        if declared_rule(load_factory(resolve_arch(arch).factory)) is None:
            return arch
    from memprobe.core.config import _positive_int
    from memprobe.planning.shape_probe import shape_rule_arch

    name, rule = shape_rule_arch(
        arch,
        divisors=divisors,
        min_patch=min_patch,
        in_channels=_positive_int(in_channels, "in_channels", 100_000),
        out_channels=_positive_int(out_channels, "out_channels", 100_000),
    )
    if rule is not None:
        click.echo(f"{arch}: {rule.describe()}", err=True)
    return name


def geometry_from_fingerprint(
    path: str, spacing: tuple[float, ...] | None, median_shape: tuple[int, ...] | None
) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Spacing and median shape from nnU-Net's fingerprint; typed ones may not be given too."""
    from memprobe.core.errors import InvalidInputError
    from memprobe.integrations.nnunet.fingerprint import read_fingerprint

    if spacing or median_shape:
        raise InvalidInputError(
            "--fingerprint gives the spacing and median shape: drop --spacing/--median-shape"
        )
    found = read_fingerprint(path)
    order = " ".join(map(str, found.transpose_forward))
    transposed = (
        f"; axes transposed as nnU-Net does (transpose_forward {order}: the largest spacing first), "
        "so the patch is in that order"
        if found.transposed
        else ""
    )
    click.echo(
        f"{path}: spacing {' '.join(f'{s:g}' for s in found.spacing)} mm, median shape "
        f"{' '.join(map(str, found.median_shape))} (nnU-Net's 3d_fullres target){transposed}",
        err=True,
    )
    return found.spacing, found.median_shape


def db_option(function: F) -> F:
    return click.option(
        "--db",
        "db_path",
        default=None,
        metavar="FILE",
        help="Benchmark database (default: $MEMPROBE_DB, else the user data directory). One that "
        "does not exist yet holds no calibrations, named either way: plans come from the shipped ones.",
    )(function)


def patch_option(required: bool) -> Callable[[F], F]:
    return click.option(
        "--patch",
        nargs=3,
        default=None,
        required=required,
        metavar="D H W",
        type=PATCH_SIZE,
        help="Patch size in voxels (depth height width).",
    )


class _PositiveNumber(click.ParamType):
    """A finite, normal number above 0 and at most ``largest``: nan, inf and 1e-320 mean nothing."""

    name = "number"

    def __init__(self, largest: float) -> None:
        self.largest = largest

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        from memprobe.core.checks import check_positive
        from memprobe.core.errors import InvalidInputError

        try:
            number = float(value) if isinstance(value, str) and value.isascii() else value
            return check_positive(number, "the value", self.largest)
        except (ValueError, InvalidInputError):
            self.fail(f"{value!r} is not a finite number above 0 and at most {self.largest:g}", param, ctx)


class _Count(click.ParamType):
    """A whole number from ``smallest`` to ``largest``, in ASCII digits (not ``²`` or ``١٢٨``).

    The error names that range, so a value past it (2^63-1) is told what is allowed.
    """

    name = "integer"

    def __init__(self, largest: int, smallest: int = 1) -> None:
        self.largest = largest
        self.smallest = smallest

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value).strip()  # a default arrives as an int
        if not (text.isascii() and text.isdigit()) or not self.smallest <= int(text) <= self.largest:
            self.fail(f"{shown(repr(value))} is not {self._range()}", param, ctx)
        return int(text)

    def _range(self) -> str:
        if self.smallest == 1:
            return f"a positive whole number (at most {self.largest})"
        return f"a whole number from {self.smallest} to {self.largest}"


class _PatchSize(_Count):
    """One patch size; an option name in its place means the patch was given fewer than 3 sizes."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value)
        if text.startswith("-") and not text[1:].isdigit():  # ``--patch 128 128 --gpu-mem 24GiB``
            self.fail("--patch needs 3 values (depth height width), e.g. --patch 128 128 128", param, ctx)
        return super().convert(value, param, ctx)


class ByteSize(click.ParamType):
    """A memory size such as 24GiB, 24GB, 24000MiB or 24 (GiB), converted to bytes (at least 1 MiB)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from memprobe.core.errors import InvalidInputError
        from memprobe.core.units import MIB, parse_bytes

        if isinstance(value, int) and not isinstance(value, bool):
            return value  # already converted (a default given in bytes)
        try:
            size = parse_bytes(str(value))
        except InvalidInputError as error:
            self.fail(str(error), param, ctx)
        if size < MIB:
            self.fail(f"memory size {value!r} is less than 1 MiB: no GPU is that small", param, ctx)
        return size


SPACING_MM = _PositiveNumber(1e6)
LEARNING_RATE = _PositiveNumber(MAX_LEARNING_RATE)
SHAPE_SIZE = _Count(2**20)
BATCH = _Count(MAX_BATCH_SIZE)
CHANNELS = _Count(100_000)
DIVISOR = _Count(1024)
MINUTES = _Count(365 * 24 * 60)  # a year: no scheduler runs one job longer
INDEX = _Count(2**62, smallest=0)  # an event or device index; beyond 2^62 nothing is counted
PATCH_SIZE = _PatchSize(2**20)
BYTES = ByteSize()
