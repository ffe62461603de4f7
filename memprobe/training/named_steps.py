"""Training steps by name: memprobe's own, MONAI's, nnU-Net's, or a user's ``package.module:function``.

``nnunet`` is nnU-Net v2's step (``memprobe/training/nnunet_step.py``): SGD with Nesterov momentum
0.99, Dice+CE with its deep-supervision weights, fp16 autocast with a GradScaler.

A user's step follows one protocol::

    def step(model, optimizer, inputs, labels, scaler) -> None:
        ...  # forward, loss, backward, optimizer.step(), optimizer.zero_grad()

``inputs`` is a float tensor (B, in_channels, D, H, W); ``labels`` holds int64 class indices
(B, D, H, W); ``scaler`` is a ``GradScaler`` for ``fp16-mixed`` and None otherwise. memprobe
runs the step under autocast for the configured precision, so the step need not enter
autocast itself. A user's step announces no phases: it is measured as one segment.

Naming and validating a step needs no torch; running one does.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from memprobe.core.errors import InvalidInputError, MemprobeError, ModelError
from memprobe.core.step_names import PROTOCOL, is_custom_step
from memprobe.core.units import format_shape
from memprobe.core.user_code import describe, message, running_user_code

if TYPE_CHECKING:
    from memprobe.training.step import PhaseCallback, TrainingState

    StepRunner = Callable[[TrainingState, PhaseCallback], None]

_PROTOCOL_PARAMETERS = 5


def load_step(name: str) -> StepRunner:
    """The runner of step ``name``: called with the training state and a phase callback.

    Raises:
        InvalidInputError: a custom step cannot be imported, is not callable or takes other arguments.
    """
    if name == "memprobe":
        from memprobe.training.step import train_step

        return _as_user_code(name, train_step)
    if name == "monai":
        return _as_user_code(name, _monai_step)
    if name == "nnunet":
        from memprobe.training.nnunet_step import nnunet_step

        return _as_user_code(name, nnunet_step)
    return _as_user_code(name, _custom_runner(name, _load_user_step(name)))


def _as_user_code(name: str, runner: StepRunner) -> StepRunner:
    """``runner`` inside the user-code wrapper: every step runs the user's network, if not its own step.

    An exception whose message cannot be read becomes a ModelError here, so no caller's error
    message fails on it.
    """

    def run(state: TrainingState, on_phase: PhaseCallback) -> None:
        try:
            shape = format_shape(state.inputs.shape)
            with running_user_code(f"running training step {name!r} on inputs {shape}"):
                runner(state, on_phase)
        except MemprobeError:
            raise
        except Exception as error:
            if message(error) is not None:
                raise
            raise ModelError(f"training step {name!r} raised {describe(error)}") from error

    return run


def _monai_step(state: TrainingState, on_phase: PhaseCallback) -> None:
    """MONAI's tutorials and Auto3DSeg: ``DiceCELoss(to_onehot_y=True, softmax=True)``."""
    from monai.losses import DiceCELoss

    from memprobe.training.losses import deep_supervision_loss
    from memprobe.training.step import optimise

    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    on_phase("forward")
    with state.autocast(), _host_arange():
        outputs = state.model(state.inputs)
        loss = deep_supervision_loss(
            outputs, state.labels, lambda logits, labels: loss_function(logits, labels.unsqueeze(1))
        )
    del outputs
    optimise(state, loss, on_phase)


def _host_arange() -> Any:
    """Make ``torch.arange`` without a device real even under fake tensors.

    MONAI's DiceLoss reads ``torch.arange(2, ndim).tolist()``: a host tensor, also on a GPU,
    whose values fake tensors cannot give.
    """
    import torch
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.overrides import TorchFunctionMode

    class HostArange(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            if func is torch.arange and "device" not in kwargs:
                with unset_fake_temporarily():
                    return func(*args, **kwargs)
            return func(*args, **kwargs)

    return HostArange()


def _load_user_step(name: str) -> Callable[..., object]:
    module_name, _, attribute = name.partition(":")
    if os.getcwd() not in sys.path:  # as `python -m` would: a step module beside the user is found
        sys.path.insert(0, os.getcwd())
    try:
        with running_user_code(f"importing {module_name!r}", argv=name):
            found: Any = importlib.import_module(module_name)
    except MemprobeError:
        raise  # a BaseException it raised, already one line
    except Exception as error:  # an import can fail in any way; report it as one line
        raise InvalidInputError(
            f"cannot import {module_name!r} for training step {name!r}: {describe(error)}; "
            f"a step is package.module:function implementing {PROTOCOL}"
        ) from error
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise InvalidInputError(
                f"{module_name!r} has no attribute {attribute!r} (training step {name!r}): "
                f"a step implements {PROTOCOL}"
            )
    if not callable(found):
        raise InvalidInputError(f"training step {name!r} is not callable: a step implements {PROTOCOL}")
    if not _takes_protocol_arguments(found):
        raise InvalidInputError(
            f"training step {name!r} has the signature {_signature(found)}: a step implements {PROTOCOL}"
        )
    return found  # type: ignore[no-any-return]


def _signature(function: Callable[..., object]) -> str:
    try:
        return str(inspect.signature(function))
    except (TypeError, ValueError):
        return "(unknown)"


def _takes_protocol_arguments(function: Callable[..., object]) -> bool:
    try:
        inspect.signature(function).bind(*range(_PROTOCOL_PARAMETERS))
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin): let the call decide
        return True
    return True


def _custom_runner(name: str, function: Callable[..., object]) -> StepRunner:
    def run(state: TrainingState, on_phase: PhaseCallback) -> None:
        on_phase("step")  # one segment, the fit's whole-step segment: the CUDA backend reads its peak
        try:
            with state.autocast():
                function(state.model, state.optimizer, state.inputs, state.labels, state.scaler)
        except MemoryError:
            raise
        except Exception as error:
            if _is_out_of_memory(error):
                raise  # a result, not a failure of the step
            raise ModelError(
                f"training step {name!r} raised {describe(error)} (a step implements {PROTOCOL})"
            ) from error

        on_phase(None)

    return run


def _is_out_of_memory(error: BaseException) -> bool:
    try:
        text = str(error)
    except Exception:  # a user's exception whose __str__ raises
        text = ""
    return type(error).__name__ == "OutOfMemoryError" or (
        isinstance(error, RuntimeError) and ("out of memory" in text or "STATUS_ALLOC_FAILED" in text)
    )


def step_source_hash(name: str) -> str | None:
    """A hash of a custom step's source file, so an edited step is measured afresh; None for built-ins."""
    if not is_custom_step(name):
        return None
    module_name = name.partition(":")[0]
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.origin or not os.path.isfile(found.origin):
        return f"unhashable:{name}"
    with open(found.origin, "rb") as source:
        return hashlib.sha256(source.read()).hexdigest()[:16]
