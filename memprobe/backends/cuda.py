"""The cuda backend: the real step on a GPU, read from the caching allocator's statistics.

An out-of-memory step is a result, not a crash: its references are dropped, the allocator's
cache is emptied and the next probe starts from the same state as a fresh process.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any, NamedTuple, Protocol

import torch

from memprobe.core.config import StepConfig
from memprobe.core.enums import DeviceKind, Strategy
from memprobe.core.environment import software_environment
from memprobe.core.errors import DeviceUnavailableError, MemprobeError, ModelError
from memprobe.core.measurement import Environment, Measurement
from memprobe.core.user_code import model_exited, raised_by_user_code
from memprobe.training.named_steps import load_step
from memprobe.training.networks import build_for_config
from memprobe.training.step import TrainingState, parameter_count, prepare_training, train_step

_HISTORY_ENTRIES = 1_000_000  # allocator events PyTorch keeps while recording a snapshot


class CudaRuntime(Protocol):
    """The slice of ``torch.cuda`` this backend uses; tests inject a fake."""

    def reset_peak_memory_stats(self) -> None: ...
    def max_memory_allocated(self) -> int: ...
    def max_memory_reserved(self) -> int: ...
    def memory_allocated(self) -> int: ...
    def synchronize(self) -> None: ...
    def empty_cache(self) -> None: ...
    def set_per_process_memory_fraction(self, fraction: float) -> None: ...
    def total_memory_bytes(self) -> int: ...
    def device_name(self) -> str: ...
    def versions(self) -> dict[str, Any]: ...
    def context_bytes(self) -> int | None: ...


class TorchCudaRuntime:
    """The real ``torch.cuda`` on the current device."""

    def reset_peak_memory_stats(self) -> None:
        torch.cuda.reset_peak_memory_stats()

    def max_memory_allocated(self) -> int:
        return torch.cuda.max_memory_allocated()

    def max_memory_reserved(self) -> int:
        return torch.cuda.max_memory_reserved()

    def memory_allocated(self) -> int:
        return torch.cuda.memory_allocated()

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def set_per_process_memory_fraction(self, fraction: float) -> None:
        torch.cuda.set_per_process_memory_fraction(fraction)

    def total_memory_bytes(self) -> int:
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory

    def device_name(self) -> str:
        return torch.cuda.get_device_name()

    def versions(self) -> dict[str, Any]:
        from memprobe.core.gpus import nvml_driver_version

        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        return {
            "driver_version": nvml_driver_version(),
            "cuda_version": torch.version.cuda,
            "cudnn_version": str(cudnn) if cudnn else None,
        }

    def context_bytes(self) -> int | None:
        """Device memory this process holds outside the caching allocator: the CUDA context.

        NVML's per-process figure minus the allocator's reserve; where NVML cannot say, the
        device's used memory (``mem_get_info``) minus the reserve, which assumes no other process.
        """
        from memprobe.core.gpus import nvml_process_used_bytes

        reserved = torch.cuda.memory_reserved()
        used = nvml_process_used_bytes(os.getpid())
        if used is None:
            free, total = torch.cuda.mem_get_info()
            used = total - free
        return max(0, used - reserved)


def cuda_environment(runtime: CudaRuntime) -> Environment:
    """The GPU and software a CUDA measurement (a training step's or an inference's) is taken on."""
    return software_environment(
        "cuda", runtime.device_name(), total_memory_bytes=runtime.total_memory_bytes(), **runtime.versions()
    )


class StepRun(NamedTuple):
    """What running the steps tells besides memory: time, size, and warm-up steps needed."""

    seconds: float
    parameters: int
    warmup_steps: int = 1


MAX_WARMUP_STEPS = 20


def warm_up(state: TrainingState, step: Any = train_step, max_steps: int = MAX_WARMUP_STEPS) -> int:
    """Step until the optimizer holds state; return the steps run.

    With fp16 autocast, GradScaler skips ``optimizer.step()`` while the loss scale overflows,
    so a single warm-up step can leave the optimizer without its state (AdamW's two moments):
    the measured step would then miss them, or create them at its own peak.
    """
    for steps in range(1, max_steps + 1):
        step(state)
        if state.optimizer.state:
            return steps
    return max_steps


def run_real_step(config: StepConfig, device: torch.device, on_phase: Any, before_measured: Any) -> StepRun:
    """Build the network on ``device``, warm up until the optimizer has state, run the measured step."""
    step = load_step(config.step)
    model = build_for_config(config).to(device)
    state = prepare_training(config, model, device)
    warmup_steps = warm_up(state, lambda s: step(s, lambda name: None))
    before_measured()
    started = time.perf_counter()
    step(state, on_phase)
    return StepRun(time.perf_counter() - started, parameter_count(model), warmup_steps)


def _is_out_of_memory(error: BaseException) -> bool:
    """The caching allocator's OOM, or cuBLAS/cuDNN failing to allocate their workspace (a RuntimeError)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error)
    allocation_failed = "out of memory" in message or "STATUS_ALLOC_FAILED" in message
    return isinstance(error, RuntimeError) and allocation_failed


class CudaBackend:
    """Measure on the current CUDA device, optionally capped at ``budget_bytes``."""

    kind = DeviceKind.CUDA

    def __init__(
        self,
        budget_bytes: int | None = None,
        runtime: CudaRuntime | None = None,
        step_runner: Any = run_real_step,
        *,
        bucket_cap_mb: float = 25,
        gradient_as_bucket_view: bool = False,
        rank_launcher: Any = None,
        device_count: Any = None,
        in_rank: bool = False,
    ) -> None:
        self.runtime: CudaRuntime = runtime or TorchCudaRuntime()
        self.budget_bytes = budget_bytes
        self._step_runner = step_runner
        self._environment: Environment | None = None
        # A configuration that is one rank of DDP or FSDP2 launches its ranks, one per GPU,
        # through ``rank_launcher`` (get_backend passes memprobe.backends.rank_launcher's);
        # inside a launched rank (``in_rank``) the step is this process's rank.
        self.bucket_cap_mb = bucket_cap_mb
        self.gradient_as_bucket_view = gradient_as_bucket_view
        self._rank_launcher = rank_launcher
        self._in_rank = in_rank
        self._device_count = device_count or torch.cuda.device_count
        self.last_rank_measurements: list[Measurement] = []
        # With snapshot_path, the measured step's real allocator history is dumped there
        # (``memprobe probe --snapshot``); memory_history records it (tests inject a fake).
        self.snapshot_path: str | None = None
        self.memory_history: Any = None

    def environment(self) -> Environment:
        if self._environment is None:
            self._environment = cuda_environment(self.runtime)
        return self._environment

    def measure(self, config: StepConfig) -> Measurement:
        if config.strategy is not Strategy.SINGLE and not self._in_rank:
            return self._measure_ranks(config)
        runtime = self.runtime
        phase_allocated: dict[str, int] = {}
        phase_reserved: dict[str, int] = {}
        current: list[str | None] = [None]

        def on_phase(name: str | None) -> None:
            runtime.synchronize()
            if current[0] is not None:
                phase_allocated[current[0]] = runtime.max_memory_allocated()
                phase_reserved[current[0]] = runtime.max_memory_reserved()
            runtime.reset_peak_memory_stats()
            current[0] = name

        self._release_cached_memory()
        if self.budget_bytes is not None:
            runtime.set_per_process_memory_fraction(
                min(1.0, self.budget_bytes / runtime.total_memory_bytes())
            )
        out_of_memory = False
        run, context = StepRun(0.0, 0), None
        history = self._history()
        recording = [False]

        def measured_step_begins() -> None:
            runtime.reset_peak_memory_stats()
            if history is not None and not recording[0]:
                history.start(_HISTORY_ENTRIES)  # recording begins with the measured step, as a user's would
                recording[0] = True

        try:
            run = StepRun(*self._step_runner(config, torch.device("cuda"), on_phase, measured_step_begins))
            context = runtime.context_bytes()
            if history is not None and self.snapshot_path is not None:
                runtime.synchronize()
                history.dump(self.snapshot_path)
        except MemprobeError:
            raise  # the network could not be built: already a one-line error with its exit code
        except Exception as error:
            if not _is_out_of_memory(error):
                raise ModelError(
                    f"the training step of {config.label()} failed: {type(error).__name__}: {error}"
                ) from error
            out_of_memory = True
        except BaseException as error:
            if not raised_by_user_code(error):
                raise
            raise model_exited(error, f"training {config.label()}") from None
        finally:
            if recording[0] and history is not None:
                history.stop()
            if self.budget_bytes is not None:
                runtime.set_per_process_memory_fraction(1.0)
        # Outside the except block, so the OOM traceback (and the tensors its frames hold) is gone.
        self._release_cached_memory()
        if out_of_memory:
            return Measurement(config, self.environment(), None, oom=True, budget_bytes=self.budget_bytes)
        return Measurement(
            config=config,
            environment=self.environment(),
            peak_allocated_bytes=max(phase_allocated.values(), default=0),
            peak_reserved_bytes=max(phase_reserved.values(), default=0),
            phase_peaks_bytes=phase_allocated,
            step_seconds=run.seconds,
            budget_bytes=self.budget_bytes,
            parameter_count=run.parameters,
            reserved_source="measured",
            reserved_phase_peaks_bytes=phase_reserved,
            context_bytes=context,
            warmup_steps=run.warmup_steps,
        )

    def _history(self) -> Any:
        if self.snapshot_path is None:
            return None
        if self.memory_history is None:
            from memprobe.backends.memory_history import TorchMemoryHistory

            self.memory_history = TorchMemoryHistory()
        return self.memory_history

    def _measure_ranks(self, config: StepConfig) -> Measurement:
        """Launch ``config.world_size`` ranks, one per GPU; the worst rank's measurement, as this GPU's."""
        from dataclasses import replace

        from memprobe.backends.rank_spec import LaunchSpec, worst_rank

        if self._rank_launcher is None:
            raise DeviceUnavailableError(
                "this CudaBackend has no rank launcher: create it with memprobe.backends.get_backend"
            )
        found = self._device_count()
        if found < config.world_size:
            raise DeviceUnavailableError(
                f"--gpus {config.world_size} launches one rank per GPU, but {found} CUDA GPU"
                f"{'s are' if found != 1 else ' is'} visible here: use --device trace to measure one rank"
            )
        spec = LaunchSpec(
            config, self.bucket_cap_mb, self.gradient_as_bucket_view, budget_bytes=self.budget_bytes
        )
        self.last_rank_measurements = list(self._rank_launcher(spec))
        return replace(worst_rank(self.last_rank_measurements), environment=self.environment())

    def _release_cached_memory(self) -> None:
        """Drop every reference the last probe left (an OOM traceback holds frames) and free the cache."""
        gc.collect()
        self.runtime.synchronize()
        self.runtime.empty_cache()
