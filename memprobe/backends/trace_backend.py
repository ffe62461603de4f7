"""The trace and cpu backends: every storage allocation tracked, no GPU needed.

``trace`` runs the step on fake tensors, so a 128^3 batch of 8 costs seconds and no real
memory; ``cpu`` executes the same step for real, to check ``trace`` on small sizes.
"""

from __future__ import annotations

import copy
import gc
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from memprobe.backends.allocation_tracker import AllocationTracker
from memprobe.backends.allocator_replay import replay
from memprobe.backends.distributed import DEFAULT_BUCKET_CAP_MB, fake_process_group, options_for, wrap
from memprobe.backends.traced_step import TracedStep
from memprobe.core.config import StepConfig
from memprobe.core.enums import DeviceKind
from memprobe.core.environment import software_environment
from memprobe.core.errors import MemprobeError, ModelError
from memprobe.core.measurement import Environment, Measurement
from memprobe.core.user_code import model_exited, raised_by_user_code
from memprobe.training.named_steps import load_step
from memprobe.training.networks import build_for_config
from memprobe.training.step import TrainingState, parameter_count, prepare_training

_CPU = torch.device("cpu")
# Windows each phase's peak is also recorded in (see AllocationTracker.split_phases). A user's
# training step announces the single segment "step", which is not split.
WINDOWS_PER_PHASE = {"forward": 8, "backward": 24, "optimizer": 2}


def _run_tracked(
    config: StepConfig,
    model: nn.Module,
    tracker: AllocationTracker,
    breakdown: dict[str, int] | None = None,
    state_bytes: dict[str, int] | None = None,
) -> tuple[float, int]:
    """Run a warm-up step, then the measured one; return its seconds and parameter count.

    With ``breakdown`` (a dict to fill), the peak is also split by what the memory holds.
    """
    train_step = load_step(config.step)
    tracker.track_module(model)
    state: TrainingState = prepare_training(config, model, _CPU)
    train_step(state, tracker.start_phase)  # warm-up: creates optimizer state, counts each phase's ops
    tracker.phase_peaks_bytes.clear()
    tracker.split_phases(WINDOWS_PER_PHASE)
    started = time.perf_counter()
    if breakdown is not None:
        from memprobe.backends.breakdown import run_with_breakdown

        breakdown.update(run_with_breakdown(tracker, state, train_step))
    else:
        tracker.reset_peak()
        train_step(state, tracker.start_phase)
    seconds = time.perf_counter() - started
    if state_bytes is not None:
        from memprobe.backends.distributed import sharded_state_bytes

        state_bytes.update(sharded_state_bytes(model, state.optimizer))
    return seconds, parameter_count(model)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def _assumed_rule(config: StepConfig) -> str:
    """For a custom model, the divisors and smallest patch memprobe assumed: the likely cause."""
    from memprobe.core.archs.registry import axis_divisors, resolve_arch, smallest_patch

    spec = resolve_arch(config.arch)
    if not spec.custom:
        return ""
    divisors, least = axis_divisors(spec), smallest_patch(spec)
    return (
        f" (patch {'x'.join(map(str, config.patch))}; divisors assumed {'x'.join(map(str, divisors))}, "
        f"smallest patch {'x'.join(map(str, least))}: declare the network's with --divisor and --min-patch)"
    )


@contextmanager
def quiet_fake_tensors() -> Iterator[None]:
    """Silence the logging and warnings fake tensors emit when a model fails on a shape."""
    loggers = [logging.getLogger(name) for name in ("torch._subclasses.fake_tensor", "torch")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def fake_copy(model: nn.Module) -> tuple[nn.Module, Any]:
    """A copy of ``model`` with fake parameters and buffers, and the FakeTensorMode to run it in."""
    from torch._subclasses.fake_tensor import FakeCopyMode, FakeTensorMode

    fake_mode = FakeTensorMode()
    with FakeCopyMode(fake_mode):
        return copy.deepcopy(model), fake_mode


def traced_peak_bytes(model: nn.Module, make_step: Callable[[nn.Module], Callable[[], None]]) -> int:
    """Peak live bytes of a step on a fake copy of ``model``: a warm-up step, then the measured one.

    ``make_step`` gets the fake model, inside the fake mode and the tracker, and returns the
    step to run (it creates the optimizer and batch it needs there, so they are counted too).
    """
    fake_model, fake_mode = fake_copy(model)
    tracker = AllocationTracker()
    try:
        with fake_mode, tracker:
            tracker.track_module(fake_model)
            step = make_step(fake_model)
            step()  # warm-up: creates optimizer state
            tracker.reset_peak()
            step()
        return tracker.peak_bytes
    finally:
        del fake_model
        gc.collect()


def _model_key(config: StepConfig) -> tuple[object, ...]:
    """What a built network depends on: UNETR's parameters depend on the patch too."""
    return (
        config.arch,
        config.in_channels,
        config.out_channels,
        config.deep_supervision,
        config.patch,
        config.checkpointing,
    )


class _TrackedBackend:
    kind: DeviceKind
    fake: bool

    def __init__(
        self,
        breakdown: bool = False,
        bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB,
        gradient_as_bucket_view: bool = False,
    ) -> None:
        self.breakdown = breakdown
        # DDP's bucket settings, for a config that is one rank of DDP (memprobe.backends.distributed)
        self.bucket_cap_mb = bucket_cap_mb
        self.gradient_as_bucket_view = gradient_as_bucket_view
        self.last_state_bytes: dict[str, int] = {}  # one rank's parameters, gradients, optimizer state
        # The last network built, as a template: each probe works on a copy, and building
        # (with MONAI's weight initialisation) costs more than a fake step for large networks.
        self._template: tuple[tuple[object, ...], nn.Module] | None = None
        self._environment: Environment | None = None
        self.last_replay_seconds = 0.0  # what the allocator replay added to the last probe
        # With record_trace, the last probe's allocation history (for `probe --snapshot`).
        self.record_trace = False
        self.last_trace: TracedStep | None = None

    def environment(self) -> Environment:
        if self._environment is None:
            self._environment = software_environment(self.kind.value, self.kind.value)
        return self._environment

    def _fresh_model(self, config: StepConfig) -> nn.Module:
        key = _model_key(config)
        if self._template is None or self._template[0] != key:
            self._template = None  # release the old network before building the next
            self._template = (
                key,
                build_for_config(config),
            )
        return self._template[1]

    def measure(self, config: StepConfig) -> Measurement:
        model = self._fresh_model(config)
        if not self.fake:
            model = copy.deepcopy(model)  # a real step updates the weights in place
        tracker = AllocationTracker()
        distributed = options_for(config, self.bucket_cap_mb, self.gradient_as_bucket_view)
        try:
            with ExitStack() as stack:
                if distributed is not None:
                    stack.enter_context(fake_process_group(distributed.world_size))
                if self.fake:
                    model, fake_mode = fake_copy(model)
                    stack.enter_context(quiet_fake_tensors())
                    stack.enter_context(fake_mode)
                stack.enter_context(tracker)
                if distributed is not None:
                    model = wrap(model, distributed, fake=self.fake)
                if self.record_trace:
                    for handle in tracker.record_modules(model):
                        stack.callback(handle.remove)
                breakdown: dict[str, int] | None = {} if self.breakdown else None
                seconds, parameters = _run_tracked(config, model, tracker, breakdown, self.last_state_bytes)
            replay_started = time.perf_counter()
            simulated = replay(tracker.events, measure_from=tracker.measured_from, spans=tracker.phase_starts)
            self.last_replay_seconds = time.perf_counter() - replay_started
            if self.record_trace:
                self.last_trace = TracedStep(tracker.events, tracker.measured_from, tracker.phase_starts,
                                             tracker.module_of, f"{config.label()} on {self.kind.value}")  # fmt: skip
        except (torch.OutOfMemoryError, MemoryError):
            return Measurement(config, self.environment(), None, oom=True)
        except MemprobeError:
            raise  # a step that cannot be loaded, or a user's step that raised: already one line
        except Exception as error:
            raise ModelError(
                f"the training step of {config.label()} failed: {type(error).__name__}: {_first_line(error)}"
                f"{_assumed_rule(config)}"
            ) from error
        except BaseException as error:
            if not raised_by_user_code(error):
                raise
            raise model_exited(error, f"training {config.label()}") from None
        finally:
            del model
            gc.collect()
        return Measurement(
            config=config,
            environment=self.environment(),
            peak_allocated_bytes=tracker.peak_bytes,
            phase_peaks_bytes=dict(tracker.phase_peaks_bytes),
            step_seconds=seconds,
            parameter_count=parameters,
            breakdown_bytes=breakdown or {},
            peak_reserved_bytes=simulated.peak_reserved_bytes,
            reserved_source="simulated",
            simulated_allocated_bytes=simulated.peak_allocated_bytes,
            reserved_phase_peaks_bytes={name: peaks[1] for name, peaks in simulated.span_peaks.items()},
            warmup_steps=1,
        )


class TraceBackend(_TrackedBackend):
    """Fake tensors: the peak a CUDA step would allocate, measured on any machine."""

    kind = DeviceKind.TRACE
    fake = True


class CpuBackend(_TrackedBackend):
    """Real execution on the CPU, tracked the same way, to check the trace backend."""

    kind = DeviceKind.CPU
    fake = False
