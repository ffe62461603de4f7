"""The training step memprobe measures: forward, Dice+CE loss, backward, optimizer step.

One implementation serves every backend, so that what the trace backend counts is what a real
GPU runs. Mixed precision uses ``torch.autocast("cuda")`` on CUDA and the same cast lists,
emulated, on CPU and fake tensors (see ``training/autocast.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from memprobe.core.config import StepConfig
from memprobe.core.enums import OptimizerName, Precision
from memprobe.training.losses import deep_supervision_loss

PhaseCallback = Callable[[str | None], None]
_LOW_PRECISION_DTYPES = {Precision.FP16_MIXED: torch.float16, Precision.BF16_MIXED: torch.bfloat16}


def make_optimizer(name: OptimizerName, parameters: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer and hyperparameters users train these networks with.

    ``foreach=True`` is PyTorch's default on CUDA; it is set explicitly so CPU and fake runs
    allocate the same multi-tensor temporaries a GPU run does.
    """
    if name is OptimizerName.SGD:  # nnU-Net's optimizer
        return torch.optim.SGD(
            parameters, lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5, foreach=True
        )
    return torch.optim.AdamW(parameters, lr=1e-3, weight_decay=1e-2, foreach=True)


class ForeachGradScaler:
    """GradScaler's memory behaviour without its host synchronisation.

    ``torch.amp.GradScaler.step`` reads ``found_inf`` with ``.item()``, which fake tensors
    cannot answer. This scales the loss and unscales the gradients in place with the same
    kernel, then always steps: the memory a real scaler's step uses, whatever the gradients.
    """

    def __init__(self, device: torch.device, init_scale: float = 2.0**16) -> None:
        self._scale = torch.full((), init_scale, dtype=torch.float32, device=device)
        self._device = device

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self._scale

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        found_inf = torch.zeros(1, device=self._device)
        inverse_scale = self._scale.double().reciprocal().float().reshape(1)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inverse_scale)
        optimizer.step()

    def update(self) -> None:
        """The real scaler grows or backs off its scale here; the memory is unaffected."""


@dataclass
class TrainingState:
    """Everything that lives across training steps: network, optimizer, one batch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    inputs: torch.Tensor
    labels: torch.Tensor
    autocast: Callable[[], contextlib.AbstractContextManager[object]]
    scaler: ForeachGradScaler | torch.amp.GradScaler | None


def autocast_factory(
    precision: Precision, device: torch.device
) -> Callable[[], contextlib.AbstractContextManager[object]]:
    """Autocast for ``precision``: CUDA's on a GPU, its cast lists emulated elsewhere."""
    if not precision.is_mixed:
        return contextlib.nullcontext
    dtype = _LOW_PRECISION_DTYPES[precision]
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=dtype)
    from memprobe.training.autocast import CudaAutocastEmulation

    return lambda: CudaAutocastEmulation(dtype)


def prepare_training(config: StepConfig, model: nn.Module, device: torch.device) -> TrainingState:
    """Put the model in training mode and create its optimizer, batch and loss scaler."""
    model.train()
    inputs = torch.randn(config.batch, config.in_channels, *config.patch, device=device)
    labels = torch.randint(0, config.out_channels, (config.batch, *config.patch), device=device)
    scaler: ForeachGradScaler | torch.amp.GradScaler | None = None
    if config.precision is Precision.FP16_MIXED:
        scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else ForeachGradScaler(device)
    return TrainingState(
        model=model,
        optimizer=make_optimizer(config.optimizer, model.parameters()),
        inputs=inputs,
        labels=labels,
        autocast=autocast_factory(config.precision, device),
        scaler=scaler,
    )


def _no_phase(name: str | None) -> None:
    """Default phase callback: phases are not observed."""


def train_step(state: TrainingState, on_phase: PhaseCallback = _no_phase) -> None:
    """Run one optimisation step, announcing each phase to ``on_phase`` as it starts."""
    on_phase("forward")
    with state.autocast():
        outputs = state.model(state.inputs)
        loss = deep_supervision_loss(outputs, state.labels)
    del outputs
    optimise(state, loss, on_phase)


def optimise(state: TrainingState, loss: torch.Tensor, on_phase: PhaseCallback = _no_phase) -> None:
    """Backward from ``loss`` (scaled for fp16), step the optimizer and drop the gradients."""
    on_phase("backward")
    (state.scaler.scale(loss) if state.scaler is not None else loss).backward()
    del loss
    on_phase("optimizer")
    if state.scaler is not None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    on_phase(None)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
