"""Suggest: the largest batch for a patch (or patch for a batch), for one architecture or every calibrated one.

What ``memprobe suggest`` answers, as one call: the plans, and the alternatives that would make
a configuration fit when they are asked for or when nothing fits. From calibrations only: no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from memprobe.alternatives import Alternative
from memprobe.core.archs.registry import known_arch_names, resolve_arch
from memprobe.core.checks import check_bool
from memprobe.core.config import SETUP_OVERRIDES, Setup, data_parallel, precision_with_reason
from memprobe.core.enums import Precision, parse_enum
from memprobe.core.errors import InvalidInputError, NothingFitsError
from memprobe.core.gpus import target_gpu
from memprobe.core.units import parse_bytes
from memprobe.planning.size_search import DEFAULT_SAFETY, BatchPlan, PatchPlan


@dataclass(frozen=True)
class Suggestion:
    """The largest batch (for a patch) or patch (for a batch) of each architecture, and what else would fit.

    Attributes:
        archs: the architectures planned, in order (with ``all_archs``, every calibrated one).
        precision: the precision planned for.
        budget_bytes: the memory planned for, in bytes.
        batch_plans: given a patch, the largest batch of each architecture (empty when nothing fits).
        patch_plans: given a batch, the largest patch of each architecture.
        alternatives: what would make the configuration fit, one change each (``memprobe.alternatives``),
            when asked for or when nothing fits; None otherwise.
        nothing_fits: when even batch 1 of the one architecture does not fit, the error that says so,
            naming the smallest need; None when it fits.
        skipped: architectures ``all_archs`` left out for having no deep-supervision heads.
        notes: where the precision came from, and which architectures were skipped.
    """

    archs: tuple[str, ...]
    precision: str
    budget_bytes: int
    batch_plans: tuple[BatchPlan, ...] = ()
    patch_plans: tuple[PatchPlan, ...] = ()
    alternatives: tuple[Alternative, ...] | None = None
    nothing_fits: NothingFitsError | None = None
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        """Whether a configuration as asked fits (False: see ``alternatives`` and ``nothing_fits``)."""
        return self.nothing_fits is None

    @property
    def plans(self) -> tuple[BatchPlan, ...] | tuple[PatchPlan, ...]:
        """The batch plans, or the patch plans when a batch was given."""
        return self.batch_plans or self.patch_plans

    def __repr__(self) -> str:
        if not self.fits:
            return f"Suggestion(nothing fits: {len(self.alternatives or ())} alternatives)"
        found = ", ".join(
            f"{p.arch} batch {p.batch}"
            if isinstance(p, BatchPlan)
            else f"{p.arch} {'x'.join(map(str, p.patch))}"
            for p in self.plans
        )
        return f"Suggestion({found or 'no architecture'})"


def suggest(
    arch: str | Setup | None,
    gpu_mem: str | int | float,
    precision: str | None = None,
    *,
    patch: Sequence[int] | None = None,
    batch: int | None = None,
    all_archs: bool = False,
    safety: float = DEFAULT_SAFETY,
    effective_batch: int | None = None,
    spacing: Sequence[float] | None = None,
    median_shape: Sequence[int] | None = None,
    db: str | Path | None = None,
    device: str | None = None,
    options: bool = False,
    on_skip: Callable[[str], None] | None = None,
    **setup: Any,
) -> Suggestion:
    """The largest batch for ``patch``, or the largest patch for ``batch``, that fits ``gpu_mem``.

    Plans one architecture, or with ``all_archs`` every registered one calibrated at this
    precision and data-parallel layout (with ``deep_supervision``, those that have the heads).
    When even batch 1 of the one architecture does not fit, the Suggestion holds no plan but the
    alternatives that would fit, and ``nothing_fits``; ``memprobe suggest`` shows them and exits 3.

    Args:
        arch: an architecture (``"mednext"``, ``package.module:factory``) or a Setup (whose
            fields ``precision`` and ``**setup`` override); with ``all_archs`` only its other
            fields count (may be None).
        gpu_mem: memory to plan for: ``"24GiB"``, or a number of bytes.
        precision: ``fp32``, ``fp16-mixed`` or ``bf16-mixed``; default by the GPU's bf16 support
            (``memprobe.core.config.default_precision``).
        patch: three patch sizes: plan the largest batch for it.
        batch: a batch size: plan the largest patch for it (give ``patch`` or ``batch``).
        all_archs: plan every calibrated architecture instead of ``arch``.
        safety: share of ``gpu_mem`` the whole need may use.
        effective_batch: with ``patch``, the batch to reach by gradient accumulation.
        spacing: with ``batch``, the voxel spacing in mm that shapes the patch.
        median_shape: with ``batch``, the median image shape that caps the patch.
        db: the database to read (default: ``$MEMPROBE_DB`` or the user data directory), after
            which the calibrations shipped with memprobe are consulted.
        device: whose calibrations answer: ``"trace"`` or a GPU name; default the detected GPU,
            else trace.
        options: with ``patch`` and one architecture, also list the alternatives when it fits.
        on_skip: called with the note naming the architectures ``all_archs`` skips as soon as
            they are known, before anything can fail (the CLI prints it on stderr).
        **setup: other fields of a Setup (``optimizer``, ``in_channels``, ``out_channels``,
            ``deep_supervision``, ``step``, ``checkpointing``, ``strategy``, ``world_size``);
            only a calibration of the same Setup answers, and a batch is one rank's.

    Returns:
        A Suggestion: the plans, the alternatives (asked for, or when nothing fits) and notes.

    Raises:
        NothingFitsError: with ``all_archs``, nothing fits for one of them; or, given ``batch``,
            even the smallest patch does not fit.
        NoCalibrationError: an architecture has no calibration of this Setup.
        InvalidInputError: an argument of the wrong type or without meaning.
    """
    # Looked up when called, as the command always did: a caller may replace them (tests do).
    from memprobe.alternatives import alternatives
    from memprobe.api import max_batch_size, max_patch_size

    if isinstance(arch, Setup):
        arch, precision, setup = _setup_fields(arch, precision, setup)
    precision, precision_note = _precision(precision, setup, device)
    if patch is None and batch is None:
        raise InvalidInputError("give --patch D H W (to plan the batch) or --batch N (to plan the patch)")
    if patch is not None and batch is not None:
        raise InvalidInputError(
            "give --patch (to plan the batch) or --batch (to plan the patch), not both; "
            "`memprobe plan --patch D H W --batch N` checks one configuration"
        )
    all_archs, options = check_bool(all_archs, "all_archs"), check_bool(options, "options")
    budget_bytes = parse_bytes(gpu_mem)
    skipped: tuple[str, ...] = ()
    if all_archs:
        archs, skipped = _calibrated_archs(precision, setup, db)
        if skipped and on_skip is not None:
            on_skip(_skipped_note(skipped))
    elif arch is None:
        raise InvalidInputError("give an architecture, or all_archs=True to plan every calibrated one")
    else:
        archs = [arch]
    if options and all_archs:
        raise InvalidInputError("--options plans the batch of one architecture: drop --all-archs")
    if options and patch is None:
        raise InvalidInputError(
            "--options plans the batch of one architecture for a patch: give --patch D H W, not --batch"
        )
    notes = (precision_note, *((_skipped_note(skipped),) if skipped else ()))
    answer = Suggestion(tuple(archs), precision, budget_bytes, skipped=skipped, notes=notes)
    common: dict[str, Any] = dict(safety=safety, db=db, device=device, **setup)
    if patch is None:
        assert batch is not None
        patch_plans = tuple(
            max_patch_size(
                a,
                batch,
                budget_bytes,
                precision,
                spacing=list(spacing) if spacing else None,
                median_shape=list(median_shape) if median_shape else None,
                **common,
            )
            for a in archs
        )
        return replace(answer, patch_plans=patch_plans)

    def found_options() -> tuple[Alternative, ...]:
        assert patch is not None
        return tuple(
            alternatives(archs[0], patch, budget_bytes, precision, effective_batch=effective_batch, **common)
        )

    try:
        batch_plans = tuple(
            max_batch_size(a, patch, budget_bytes, precision, effective_batch=effective_batch, **common)
            for a in archs
        )
    except NothingFitsError as error:
        if all_archs:
            raise
        return replace(answer, alternatives=found_options(), nothing_fits=error)
    return replace(answer, batch_plans=batch_plans, alternatives=found_options() if options else None)


def _setup_fields(
    setup: Setup, precision: str | None, overrides: dict[str, Any]
) -> tuple[str, str | None, dict[str, Any]]:
    """A Setup as an architecture, a precision and overrides; those given explicitly win."""
    fields = {name: getattr(setup, name) for name in SETUP_OVERRIDES if name != "precision"}
    return setup.arch, precision or setup.precision.value, {**fields, **overrides}


def _precision(precision: str | None, setup: dict[str, Any], device: str | None) -> tuple[str, str]:
    """The precision to plan for and where it came from; nnU-Net's step trains in fp16-mixed."""
    if precision is None and setup.get("step") == "nnunet":
        return Precision.FP16_MIXED.value, f"precision {Precision.FP16_MIXED.value} (nnU-Net's step)"
    return precision_with_reason(precision, target_gpu(device) if precision is None else None)


def _calibrated_archs(
    precision: str, setup: dict[str, Any], db: str | Path | None
) -> tuple[list[str], tuple[str, ...]]:
    """The registered architectures calibrated at ``precision`` and the setup's data-parallel layout.

    With deep supervision, those without its heads are left out: the second value names them.
    """
    from memprobe.api import load_calibrations

    wanted_precision = parse_enum(Precision, precision, "precision").value
    layout = data_parallel(setup.get("strategy"), setup.get("world_size", 1))
    calibrated = {
        c.arch
        for c in load_calibrations(db)
        if c.precision == wanted_precision and (c.strategy, c.world_size) == tuple(layout.values())
    }
    archs = [name for name in known_arch_names() if name in calibrated]
    if not setup.get("deep_supervision"):
        return archs, ()
    kept = [a for a in archs if resolve_arch(a).supports_deep_supervision]
    return kept, tuple(a for a in archs if a not in kept)


def _skipped_note(skipped: tuple[str, ...]) -> str:
    return f"skipped {', '.join(skipped)}: no deep supervision"
