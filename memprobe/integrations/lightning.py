"""A drop-in for Lightning's ``BatchSizeFinder`` that measures instead of trying until OOM.

    from memprobe.integrations.lightning import MemprobeBatchSizeFinder

    trainer = Trainer(callbacks=[MemprobeBatchSizeFinder(gpu_mem="24GiB")])
    trainer.fit(model, datamodule=data)

It runs the LightningModule's own ``training_step`` with its own ``configure_optimizers`` on
fake tensors (memprobe's trace backend: no GPU memory is spent), at batch 1 and 2, in
Lightning's order (training_step, zero_grad, backward, optimizer step), a warm-up step then the
measured one. The step's peak is linear in the batch, so the largest batch within the budget
follows; that batch is traced too, to confirm it, and every peak is stored in memprobe's
database under the module's class, a hash of its parameters' shapes and dtypes, the
precision and the shapes of one sample. The next run with the same key answers from the
database without tracing. On CUDA the answer is then checked with one real step (weights
restored afterwards), stepping down on out-of-memory.

The budget is the GPU's free memory plus what this process's allocator holds, on CUDA;
otherwise ``gpu_mem`` (default 24 GiB). From it the fixed overheads a plan charges are kept
free (the CUDA context on trace, the cuBLAS workspace, cuDNN's and other CUDA-only buffers),
and each traced peak is charged more: the reserve under-prediction published real-GPU runs
showed against trace, and the 10% a reserve that was not fitted is charged
(``memprobe/planning/overheads.py``, ``memprobe/data/gpu_evidence.json``). Supported precisions: ``32-true``,
``16-mixed`` and ``bf16-mixed``; automatic optimisation only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BatchSizeFinder
from lightning.pytorch.utilities.parsing import lightning_setattr
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from memprobe.core.checks import check_bool, check_db
from memprobe.core.enums import Precision
from memprobe.core.errors import InvalidInputError, NothingFitsError
from memprobe.core.units import DEFAULT_GPU_MEM_BYTES, format_bytes, parse_bytes
from memprobe.planning.overheads import (
    CONTEXT_DEFAULTS,
    CUBLAS_WORKSPACE_SM90_BYTES,
    UNCALIBRATED_RESERVE_ALLOWANCE,
    trace_evidence,
)

DEFAULT_GPU_MEM = DEFAULT_GPU_MEM_BYTES
PEAK_ALLOWANCE = trace_evidence().reserved_underprediction + UNCALIBRATED_RESERVE_ALLOWANCE
_PRECISIONS = {precision.lightning_name: precision for precision in Precision} | {"32-true": Precision.FP32}


def largest_fitting_batch(peaks_bytes: dict[int, int], usable_bytes: float, max_val: int) -> int | None:
    """The largest batch whose charged peak fits ``usable_bytes``, from the peaks at batch 1 and 2.

    Measured peaks of other batches override the line: a batch measured over the budget is
    never returned, and the answer steps down below it.
    """
    per_sample = max(peaks_bytes[2] - peaks_bytes[1], 1)
    fixed = peaks_bytes[1] - per_sample
    batch = min(max_val, math.floor((usable_bytes / (1 + PEAK_ALLOWANCE) - fixed) / per_sample))
    over = [b for b, peak in peaks_bytes.items() if peak * (1 + PEAK_ALLOWANCE) > usable_bytes]
    if over:
        batch = min(batch, min(over) - 1)
    return batch if batch >= 1 else None


def module_key(module: nn.Module, sample: Any, precision: Precision) -> str:
    """The module's class, a hash of its parameters' shapes and of one sample's shapes, the precision."""
    cls = type(module)
    shapes = [(name, tuple(p.shape), str(p.dtype)) for name, p in module.named_parameters()]
    tensors = [t for t in tree_flatten(sample)[0] if isinstance(t, torch.Tensor)]
    sample_shapes = [(tuple(t.shape[1:]), str(t.dtype)) for t in tensors]
    digest = hashlib.sha256(repr((shapes, sample_shapes)).encode()).hexdigest()[:16]
    return f"{cls.__module__}.{cls.__qualname__}#{digest}#{precision.value}"


def _checked_gpu_mem(gpu_mem: object) -> str | int | None:
    """Ensure ``gpu_mem`` is a memory size now, not when ``fit`` reaches the callback."""
    if gpu_mem is None:
        return None
    try:
        parse_bytes(gpu_mem)  # type: ignore[arg-type]
    except InvalidInputError as error:
        raise InvalidInputError(f"gpu_mem: {error}") from None
    return gpu_mem  # type: ignore[return-value]


def _precision(trainer: Trainer) -> Precision:
    name = str(trainer.precision)
    if name not in _PRECISIONS:
        raise InvalidInputError(
            f"memprobe measures precision 32-true, 16-mixed or bf16-mixed, not {name!r}: "
            "remove MemprobeBatchSizeFinder or change the Trainer's precision"
        )
    return _PRECISIONS[name]


def _first_optimizer(configured: Any) -> torch.optim.Optimizer:
    """The optimizer from whatever ``configure_optimizers`` returned (an optimizer, a list, a dict)."""
    if isinstance(configured, torch.optim.Optimizer):
        return configured
    if isinstance(configured, dict) and "optimizer" in configured:
        return _first_optimizer(configured["optimizer"])
    if isinstance(configured, (list, tuple)) and configured:
        return _first_optimizer(configured[0])
    raise InvalidInputError(
        f"configure_optimizers returned {type(configured).__name__}: memprobe needs an optimizer "
        "(alone, in a list, or under 'optimizer' in a dict)"
    )


def _resized(batch: Any, size: int, device: torch.device) -> Any:
    """``batch`` with every tensor's first dimension set to ``size``: new, uninitialised tensors (for fake runs)."""
    return tree_map(
        lambda t: (
            torch.empty((size, *t.shape[1:]), dtype=t.dtype, device=device)
            if isinstance(t, torch.Tensor)
            else t
        ),
        batch,
    )


def _repeated(batch: Any, size: int, device: torch.device) -> Any:
    """``batch``'s own samples, repeated to ``size`` along the first dimension (for a real step: real labels)."""
    return tree_map(
        lambda t: t[torch.arange(size) % t.shape[0]].to(device) if isinstance(t, torch.Tensor) else t,
        batch,
    )


def _lightning_step(module: LightningModule, batch: Any, precision: Precision) -> Callable[[], None]:
    """One automatic-optimisation step of ``module``, in Lightning's order."""
    from memprobe.training.step import ForeachGradScaler, autocast_factory

    device = next(module.parameters()).device
    optimizer = _first_optimizer(module.configure_optimizers())
    autocast = autocast_factory(precision, device)
    scaler = ForeachGradScaler(device) if precision is Precision.FP16_MIXED else None

    def step() -> None:
        with autocast():
            output: Any = module.training_step(batch, 0)
        loss = output["loss"] if isinstance(output, dict) else output
        if not isinstance(loss, torch.Tensor):
            raise InvalidInputError(
                f"{type(module).__qualname__}.training_step returned {type(output).__name__}, not a loss: "
                "memprobe measures automatic optimisation (training_step returns the loss)"
            )
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        del loss, output
        if scaler is not None:
            scaler.step(optimizer)
        else:
            optimizer.step()

    return step


class MemprobeBatchSizeFinder(BatchSizeFinder):
    """Set the largest batch that fits, measured on fake tensors and remembered in memprobe's database.

    Takes ``BatchSizeFinder``'s arguments: ``mode``, ``steps_per_trial``, ``init_val`` and
    ``margin`` are accepted and unused (nothing is tried until OOM; the 20% charge on each traced
    peak stands in for the margin), ``max_trials`` bounds the traces that step down, ``max_val``
    caps the answer, and ``batch_arg_name`` is looked up where Lightning looks: the module, its
    ``hparams``, the datamodule and its ``hparams``. Only the training batch is scaled, at the
    start of ``fit``; validate, test and predict are left as they are.

    Args:
        gpu_mem: the memory to fit, e.g. ``"24GiB"``; default the free memory of the module's
            GPU, else 24 GiB.
        db: memprobe's database (default ``$MEMPROBE_DB``, else the user data directory).
        verify: on CUDA, run one real step at the answer and step down on out-of-memory.

    Attributes:
        optimal_batch_size: the batch set.
        answered_from_database: whether the answer came from stored peaks alone.
        traces_run: how many batch sizes were traced in this run.
    """

    def __init__(
        self,
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        margin: float = 0.05,
        max_val: int = 8192,
        *,
        gpu_mem: str | int | None = None,
        db: str | None = None,
        verify: bool = True,
    ) -> None:
        super().__init__(mode, steps_per_trial, init_val, max_trials, batch_arg_name, margin, max_val)
        self.gpu_mem = _checked_gpu_mem(gpu_mem)
        self.db = check_db(db)
        self.verify = check_bool(verify, "verify")
        self.answered_from_database = False
        self.traces_run = 0

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Evaluation batches are not scaled: memprobe measures training steps."""

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Evaluation batches are not scaled: memprobe measures training steps."""

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Evaluation batches are not scaled: memprobe measures training steps."""

    def scale_batch_size(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Measure (or recall) the peaks, set the largest batch that fits, and reload the data."""
        from memprobe.store.database import Database

        precision = _precision(trainer)
        sample = next(iter(trainer.fit_loop._data_source.dataloader()))
        key = module_key(pl_module, sample, precision)
        device = next(pl_module.parameters()).device
        usable = self._usable_bytes(device)
        with Database.open(self.db) as database:
            peaks = database.module_peaks(key, "trace")
            self.answered_from_database = {1, 2} <= peaks.keys()
            trace = lambda b: self._trace(database, key, pl_module, sample, precision, b)
            for batch in (1, 2):
                if batch not in peaks:
                    peaks[batch] = trace(batch)
            batch = self._answer(peaks, usable, trace)
        if device.type == "cuda" and self.verify:
            batch = self._verified_on_cuda(pl_module, sample, precision, batch)
        lightning_setattr(pl_module, self._batch_arg_name, batch)
        trainer.fit_loop._combined_loader = None  # reload the train dataloader with the new batch size
        self.optimal_batch_size = batch

    def _answer(self, peaks: dict[int, int], usable: float, trace: Callable[[int], int]) -> int:
        """The largest batch the line allows, confirmed by a trace of it (stepping down while over)."""
        for _ in range(self._max_trials):
            batch = largest_fitting_batch(peaks, usable, self._max_val)
            if batch is None:
                raise NothingFitsError(
                    f"batch 1 of this LightningModule needs {format_bytes(peaks[1])} of tensors "
                    f"(+{100 * PEAK_ALLOWANCE:.0f}%), over the usable {format_bytes(usable)}: "
                    "lower the precision, the sample size or the model, or give a larger gpu_mem"
                )
            if batch in peaks:
                return batch
            peaks[batch] = trace(batch)
            self.answered_from_database = False
        return max((b for b, peak in peaks.items() if peak * (1 + PEAK_ALLOWANCE) <= usable), default=1)

    def _trace(
        self, database: Any, key: str, module: LightningModule, sample: Any, precision: Precision, batch: int
    ) -> int:
        from memprobe.backends.trace_backend import traced_peak_bytes

        def make_step(fake_module: nn.Module) -> Callable[[], None]:
            assert isinstance(fake_module, LightningModule)
            fake_module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
            fake_module.log_dict = lambda *args, **kwargs: None  # type: ignore[method-assign]
            device = next(fake_module.parameters()).device
            return _lightning_step(fake_module, _resized(sample, batch, device), precision)

        was_training = module.training
        module.train()
        try:
            peak = traced_peak_bytes(module, make_step)
        finally:
            module.train(was_training)
        self.traces_run += 1
        database.add_module_peak(key, "trace", batch, peak)
        return peak

    def _usable_bytes(self, device: torch.device) -> float:
        """The budget less the overheads every plan keeps free (see the module docstring)."""
        workspaces = CUBLAS_WORKSPACE_SM90_BYTES + trace_evidence().cuda_only_allocation_bytes
        if self.gpu_mem is None and device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return free + torch.cuda.memory_reserved(device) - workspaces
        budget = parse_bytes(self.gpu_mem if self.gpu_mem is not None else DEFAULT_GPU_MEM)
        return budget - CONTEXT_DEFAULTS["unknown"][0] - workspaces

    def _verified_on_cuda(
        self, module: LightningModule, sample: Any, precision: Precision, batch: int
    ) -> int:
        """Run one real step at ``batch``, stepping down on out-of-memory; the weights are restored."""
        saved = {name: value.detach().cpu().clone() for name, value in module.state_dict().items()}
        device = next(module.parameters()).device
        try:
            while batch >= 1:
                try:
                    _lightning_step(module, _repeated(sample, batch, device), precision)()
                    return batch
                except torch.OutOfMemoryError:
                    batch = math.floor(batch * 0.9) if batch > 10 else batch - 1
                finally:
                    torch.cuda.empty_cache()
            raise NothingFitsError("a real step of batch 1 ran out of memory on this GPU")
        finally:
            module.load_state_dict(saved)
            module.zero_grad(set_to_none=True)  # the check's gradients must not hold memory into training
