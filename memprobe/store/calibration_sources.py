"""Where calibrations come from: the user's database first, then the ones memprobe ships.

Reading them needs neither torch nor numpy, so planning answers in milliseconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from memprobe.core.config import Setup
from memprobe.core.errors import NoCalibrationError
from memprobe.core.inference_config import Predictor
from memprobe.formula.calibration import Calibration
from memprobe.formula.inference_calibration import InferenceCalibration
from memprobe.store.database import Database, database_exists
from memprobe.store.row_checks import BadRowError, calibration_from_fields, warn_bad_row

if TYPE_CHECKING:  # its fit needs numpy and scipy: imported only where nnU-Net plans read families
    from memprobe.formula.topology_family import TopologyFamily

SHIPPED_FILE = "calibrations.json"
# nnU-Net's topologies and their families (scripts/build_shipped_nnunet.py)
NNUNET_FILE, FAMILIES_FILE = "nnunet_calibrations.json", "nnunet_families.json"


NO_SHIPPED_VARIABLE = "MEMPROBE_NO_SHIPPED"
T = TypeVar("T")
C = TypeVar("C", bound=Calibration)


def shipped_calibrations() -> list[Calibration]:
    """Calibrations packaged with memprobe (made by `make shipped`); none with MEMPROBE_NO_SHIPPED=1."""
    read = lambda item: calibration_from_fields(item, source="shipped")
    return [
        *shipped_items(SHIPPED_FILE, "shipped calibration", read),
        *shipped_items(NNUNET_FILE, "shipped calibration", read),
    ]


def shipped_topology_families() -> list[TopologyFamily]:
    """nnU-Net's topology families packaged with memprobe; none with MEMPROBE_NO_SHIPPED=1."""
    return shipped_items(FAMILIES_FILE, "shipped topology family", _family_from_fields)


def _family_from_fields(item: Any) -> TopologyFamily:
    """A family's fields checked as a calibration's are (coefficients finite, quality complete)."""
    from memprobe.formula.topology_family import TopologyFamily

    if not isinstance(item, dict):
        raise BadRowError("the topology family is not a JSON object")
    checked = calibration_from_fields(
        {**item, "arch": item.get("network"), "parameter_model": {}}, source="shipped"
    )
    try:
        family = TopologyFamily.from_dict(item)
    except (KeyError, TypeError, ValueError) as error:
        raise BadRowError(f"{type(error).__name__}: {error}") from None
    return replace(
        family,
        phase_coefficients=checked.phase_coefficients,
        reserved_coefficients=checked.reserved_coefficients,
        source="shipped",
    )


def shipped_items(file: str, what: str, read: Callable[[Any], T]) -> list[T]:
    """Each item of a JSON list in ``memprobe/data``, read by ``read``; a bad one is skipped with a warning."""
    if os.environ.get(NO_SHIPPED_VARIABLE):
        return []
    try:
        text = resources.files("memprobe.data").joinpath(file).read_text()
    except FileNotFoundError:
        return []
    result = []
    for number, item in enumerate(json.loads(text)):
        try:
            result.append(read(item))
        except BadRowError as error:
            warn_bad_row(file, what, number, str(error), "reinstall memprobe")
    return result


def user_calibrations(db_path: str | Path | None = None) -> list[Calibration]:
    """Calibrations in the user's database; one that does not exist yet holds none.

    The same whether it is named by ``db_path`` (``--db``), by ``$MEMPROBE_DB`` or is the
    default: plans then come from the shipped calibrations, and say so in their source.

    Raises:
        DatabaseError: the database exists but cannot be read.
    """
    if not database_exists(db_path):
        return []
    with Database.open(db_path, create=False, readonly=True) as db:
        return db.calibrations()


def all_calibrations(db_path: str | Path | None = None) -> list[Calibration]:
    """User calibrations, then shipped ones for keys the user has not calibrated."""
    from memprobe.store.snapshot_evidence import charge_snapshot_evidence, snapshot_measurements

    own = user_calibrations(db_path)
    keys = {c.key for c in own}
    return charge_snapshot_evidence(own + [c for c in shipped_calibrations() if c.key not in keys],
                                    snapshot_measurements(db_path))  # fmt: skip


def with_stored_shape_rule(arch: str, calibrations: Sequence[Calibration]) -> str:
    """``package.module:factory`` as the newest calibration of it names it, shape rule attached;
    any other name (a registered network, or one with its rule) as it is."""
    if ":" not in arch or "[" in arch:
        return arch
    prefix = arch.strip() + "["
    return next((c.arch for c in calibrations if c.arch.startswith(prefix)), arch)


@dataclass(frozen=True)
class Choice:
    """The calibration that answers a question, and a warning when it is a stand-in."""

    calibration: Calibration
    warning: str | None = None


def choose_calibration(
    calibrations: list[Calibration], setup: Setup, device: str | None, fallback_device: str | None = "trace"
) -> Choice:
    """Pick the calibration that answers for ``setup`` on ``device`` (None means "trace").

    When the asked-for GPU has no calibration, the ``fallback_device`` one is used with a
    warning; nothing else is ever substituted: a calibration of another training step, or of
    one GPU for a rank of DDP (and vice versa), never answers.
    """
    wanted = device or "trace"
    matching = [c for c in calibrations if c.answers(setup)]
    arch, precision, optimizer = setup.arch, setup.precision.value, setup.optimizer.value
    rerun = f"memprobe calibrate --arch {arch} --device cuda --precision {precision}"
    found = _on_device(matching, wanted, fallback_device, f"calibration of {arch}", rerun)
    if found is not None:
        return found
    deep_supervision, step, checkpointing = setup.deep_supervision, setup.step, setup.checkpointing
    strategy, world_size = setup.strategy.value, setup.world_size
    flags = " --deep-supervision" if deep_supervision else ""
    flags += "" if step == "memprobe" else f" --step {step}"
    flags += " --checkpointing" if checkpointing else ""
    flags += "" if strategy == "single" else f" --gpus {world_size} --strategy {strategy}"
    modes = precision + ", " + optimizer + (", deep supervision" if deep_supervision else "")
    modes += ", checkpointing" if checkpointing else ""
    modes += "" if step == "memprobe" else f", step {step}"
    modes += "" if strategy == "single" else f", one rank of {strategy} x{world_size}"
    raise NoCalibrationError(
        f"no calibration of {arch} ({modes}) "
        f"for {wanted}: run `memprobe calibrate --arch {arch} --precision {precision} --optimizer {optimizer}"
        f"{flags} --device {'cuda' if device not in (None, 'trace', 'cpu') else wanted}`"
        + _other_steps(calibrations, arch, precision, optimizer, deep_supervision, step)
        + _other_layouts(
            matching_modes(calibrations, arch, precision, optimizer, deep_supervision, step),
            strategy,
            world_size,
        )
    )


def _on_device(
    matching: Sequence[C], wanted: str, fallback_device: str | None, what: str, rerun: str
) -> Choice | None:
    """The first of ``matching`` measured on ``wanted``, else on ``fallback_device`` with a warning
    naming ``rerun`` (the command that calibrates on that GPU); None when neither has one."""
    exact = [c for c in matching if c.device == wanted]
    if exact:
        return Choice(exact[0])
    stand_in = [c for c in matching if c.device == fallback_device]
    if not stand_in:
        return None
    return Choice(
        stand_in[0],
        warning=(
            f"no {what} for {wanted}; using the {fallback_device} calibration, which counts tensors only "
            f"(no CUDA context or cuDNN workspace): run `{rerun}` on that GPU"
        ),
    )


def matching_modes(
    calibrations: list[Calibration],
    arch: str,
    precision: str,
    optimizer: str,
    deep_supervision: bool,
    step: str,
) -> list[Calibration]:
    """The calibrations of ``arch`` in these modes, whatever their device and data parallelism."""
    return [
        c
        for c in calibrations
        if (c.arch, c.precision, c.optimizer, c.deep_supervision, c.step)
        == (arch, precision, optimizer, deep_supervision, step)
    ]


def _other_layouts(calibrations: list[Calibration], strategy: str, world_size: int) -> str:
    """A hint naming the GPU layouts ``arch`` is calibrated for, when not the one asked for."""
    layouts = sorted({(c.strategy, c.world_size) for c in calibrations} - {(strategy, world_size)})
    if not layouts:
        return ""
    named = ", ".join(
        "one GPU: no --gpus" if s == "single" else f"{s} x{n}: --gpus {n} --strategy {s}" for s, n in layouts
    )
    return f" (calibrated for {named}; another GPU layout never stands in)"


def _other_steps(
    calibrations: list[Calibration],
    arch: str,
    precision: str,
    optimizer: str,
    deep_supervision: bool,
    step: str,
) -> str:
    """A hint naming the training steps ``arch`` is calibrated for, when not the one asked for."""
    others = sorted(
        {
            c.step
            for c in calibrations
            if (c.arch, c.precision, c.optimizer, c.deep_supervision)
            == (arch, precision, optimizer, deep_supervision)
            and c.step != step
        }
    )
    return f" (it is calibrated for the training step {', '.join(others)}: pass --step)" if others else ""


# Inference ------------------------------------------------------------------------------------

INFERENCE_SHIPPED_FILE = "inference_calibrations.json"


def user_inference_calibrations(db_path: str | Path | None = None) -> list[InferenceCalibration]:
    """The inference calibrations in the user's database (none while it does not exist, however named)."""
    if not database_exists(db_path):
        return []
    with Database.open(db_path, create=False, readonly=True) as db:
        return db.inference_calibrations()


def shipped_inference_calibrations() -> list[InferenceCalibration]:
    """Inference calibrations packaged with memprobe (`make shipped`); none with MEMPROBE_NO_SHIPPED=1."""
    return shipped_items(INFERENCE_SHIPPED_FILE, "shipped inference calibration", _shipped_inference)


def _shipped_inference(item: Any) -> InferenceCalibration:
    from memprobe.formula.inference_calibration import INFERENCE, with_predictor

    if not isinstance(item, dict) or item.get("optimizer") != INFERENCE:
        raise BadRowError("not an inference calibration")
    # Checked as a training calibration's fields are; "optimizer" and "step" name the mode.
    fields = with_predictor(item)
    checked = calibration_from_fields(
        {name: value for name, value in fields.items() if name != "predictor"} | {"optimizer": "adamw"},
        source="shipped",
    )
    checked_fields = {f.name: getattr(checked, f.name) for f in dataclasses.fields(checked)}
    return InferenceCalibration(**checked_fields | {"optimizer": INFERENCE, "predictor": fields["predictor"]})


def all_inference_calibrations(db_path: str | Path | None = None) -> list[InferenceCalibration]:
    """The user's inference calibrations, then the shipped ones for keys the user has not calibrated."""
    own = user_inference_calibrations(db_path)
    keys = {c.key for c in own}
    return own + [c for c in shipped_inference_calibrations() if c.key not in keys]


def choose_inference_calibration(
    calibrations: list[InferenceCalibration],
    arch: str,
    precision: str,
    predictor: Predictor,
    device: str | None,
    fallback_device: str | None = "trace",
) -> Choice:
    """Pick the inference calibration of ``arch``'s ``predictor`` at ``precision`` on ``device``,
    as :func:`choose_calibration` picks a training one (the ``fallback_device`` one with a warning).

    Raises:
        NoCalibrationError: none answers; the message names the command to run.
    """
    wanted = device or "trace"
    flag = " --predictor nnunet" if predictor is Predictor.NNUNET else ""
    matching = [c for c in calibrations if c.answers_inference(arch, precision, predictor)]
    rerun = f"memprobe calibrate --mode inference --arch {arch}{flag} --device cuda"
    found = _on_device(matching, wanted, fallback_device, f"inference calibration of {arch}", rerun)
    if found is not None:
        return found
    raise NoCalibrationError(
        f"no inference calibration of {arch}{flag} ({precision}) for {wanted}: run `memprobe calibrate "
        f"--mode inference --arch {arch}{flag} --precision {precision} "
        f"--device {'trace' if wanted in ('trace', 'cpu') else 'cuda'}`"
    )
