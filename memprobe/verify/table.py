"""The fixed table `memprobe verify` runs: configurations, suggestion checks, memory histories.

Every registered architecture at fp32 and bf16-mixed in two sizes (MedNeXt and BasicUNet also
fp16-mixed). ``--quick`` keeps the part that fits six minutes on an H100 or H200: MedNeXt and
BasicUNet whole, the other families at their small size, no MedNeXt-B/M/L. The large sizes stay
well inside 80 GiB, so the table runs whole on an H100 too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from memprobe.core.archs.registry import ARCHS, resolve_arch
from memprobe.core.config import StepConfig, make_step_config
from memprobe.core.enums import Precision
from memprobe.core.units import DEFAULT_GPU_MEM_BYTES

Patch = tuple[int, int, int]

# (small, large) as (patch edge, batch); MedNeXt-M and -L stop at 96^3, their 128^3 step is huge.
_SIZES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "mednext": ((64, 1), (128, 2)),
    "mednext-b": ((64, 1), (128, 1)),
    "mednext-m": ((64, 1), (96, 1)),
    "mednext-l": ((64, 1), (96, 1)),
    "basicunet": ((64, 1), (128, 2)),
    "unet": ((64, 1), (128, 2)),
    "segresnet": ((64, 1), (128, 2)),
    "swinunetr": ((64, 1), (128, 1)),
    "unetr": ((64, 1), (128, 1)),
    "dynunet": ((64, 1), (128, 1)),
}
# A model given as package.module:factory (a rehearsal's tiny network) gets small sizes.
_CUSTOM_SIZES = ((16, 1), (32, 2))
_FULL_IN_QUICK = ("mednext", "basicunet")
_NOT_IN_QUICK = ("mednext-b", "mednext-m", "mednext-l")
_ALL_PRECISIONS = ("mednext", "basicunet")
DEFAULT_PRECISIONS = (Precision.FP32, Precision.BF16_MIXED)
# One step of these is recorded with CUDA's memory history.
_HISTORY = (("mednext", 64, 1), ("swinunetr", 64, 1))
# suggest answers checked for real: (arch, patch edge, precision); the quick run checks the first three.
_SAFETY = (
    ("mednext", 128, Precision.FP32),
    ("basicunet", 128, Precision.FP32),
    ("mednext", 128, Precision.BF16_MIXED),
    ("swinunetr", 128, Precision.FP32),
    ("segresnet", 128, Precision.FP32),
    ("basicunet", 128, Precision.BF16_MIXED),
)
_QUICK_SAFETY = 3
CUDNN_ARCH = "mednext"  # the architecture also measured with cudnn.benchmark on


@dataclass(frozen=True)
class SafetyCase:
    arch: str
    patch: Patch
    precision: Precision


@dataclass(frozen=True)
class VerifyPlan:
    """What one run measures, in the order it measures it (most telling first, if cut short)."""

    configs: tuple[StepConfig, ...]
    cudnn_configs: tuple[StepConfig, ...]  # measured again with cudnn.benchmark on
    safety: tuple[SafetyCase, ...]
    history: tuple[StepConfig, ...]
    budget_bytes: int


def _precisions_for(arch: str, wanted: Sequence[Precision] | None) -> list[Precision]:
    default = list(Precision) if arch in _ALL_PRECISIONS or resolve_arch(arch).custom else DEFAULT_PRECISIONS
    chosen = [p for p in Precision if p in default]
    return [p for p in chosen if wanted is None or p in wanted]


def _sizes(arch: str, quick: bool) -> tuple[tuple[int, int], ...]:
    small, large = _CUSTOM_SIZES if resolve_arch(arch).custom else _SIZES[arch]
    return (small, large) if not quick or arch in _FULL_IN_QUICK else (small,)


def _config(arch: str, edge: int, batch: int, precision: Precision) -> StepConfig:
    return make_step_config(arch, (edge,) * 3, batch, precision=precision)


def build_plan(
    archs: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    *,
    quick: bool = False,
    budget_bytes: int = DEFAULT_GPU_MEM_BYTES,
) -> VerifyPlan:
    """The fixed table, narrowed to ``archs`` and ``precisions`` when given.

    An architecture outside the table (``package.module:factory``) is measured at 16^3 and 32^3,
    and its own suggestion, history and cuDNN checks stand in for the table's.
    """
    names = [resolve_arch(a).name for a in archs] if archs else list(ARCHS)
    if quick and not archs:
        names = [a for a in names if a not in _NOT_IN_QUICK]
    wanted = [Precision(p) for p in precisions] if precisions else None
    configs = tuple(
        _config(arch, edge, batch, precision)
        for arch in names
        for edge, batch in _sizes(arch, quick)
        for precision in _precisions_for(arch, wanted)
    )
    custom = [a for a in names if resolve_arch(a).custom]
    # History and cuDNN run at fp32 unless only other precisions were asked for.
    single = Precision.FP32 if wanted is None or Precision.FP32 in wanted else wanted[0]
    history = [_config(a, edge, batch, single) for a, edge, batch in _HISTORY if a in names]
    history += [_config(a, _CUSTOM_SIZES[0][0], 1, single) for a in custom[:1]]
    cudnn_arch = CUDNN_ARCH if CUDNN_ARCH in names else next(iter(custom), None)
    cudnn = [c for c in configs if c.arch == cudnn_arch and c.precision is single][-1:]
    return VerifyPlan(
        configs, tuple(cudnn), _safety_cases(names, custom, wanted, quick), tuple(history), budget_bytes
    )


def _safety_cases(
    names: Sequence[str], custom: Sequence[str], wanted: Sequence[Precision] | None, quick: bool
) -> tuple[SafetyCase, ...]:
    table = _SAFETY[:_QUICK_SAFETY] if quick else _SAFETY
    cases = [
        SafetyCase(arch, (edge, edge, edge), precision)
        for arch, edge, precision in table
        if arch in names and (wanted is None or precision in wanted)
    ]
    edge = _CUSTOM_SIZES[1][0]
    cases += [SafetyCase(a, (edge, edge, edge), _precisions_for(a, wanted)[0]) for a in custom]
    return tuple(cases)
