"""The trace and cpu backends: every storage allocation tracked, no GPU needed.

``trace`` runs the step on fake tensors, so a 128^3 batch of 8 costs seconds and no real
memory; ``cpu`` executes the same step for real, to check ``trace`` on small sizes.
"""

from __future__ import annotations

import copy
import gc
import time
from contextlib import ExitStack

import torch
from torch import nn

from memprobe.archs.build import build_model
from memprobe.archs.registry import resolve_arch
from memprobe.backends.caching_allocator import replay
from memprobe.backends.tracking import AllocationTracker
from memprobe.config import StepConfig
from memprobe.enums import DeviceKind
from memprobe.environment import software_environment
from memprobe.errors import ModelError
from memprobe.measurement import Environment, Measurement
from memprobe.step import TrainingState, parameter_count, prepare_training, train_step
from memprobe.user_code import model_exited, raised_by_user_code

_CPU = torch.device("cpu")
# Windows each phase's peak is also recorded in (see AllocationTracker.split_phases).
WINDOWS_PER_PHASE = {"forward": 8, "backward": 24, "optimizer": 2}


def _run_tracked(
    config: StepConfig, model: nn.Module, tracker: AllocationTracker, breakdown: dict[str, int] | None = None
) -> tuple[float, int]:
    """Run a warm-up step, then the measured one; return its seconds and parameter count.

    With ``breakdown`` (a dict to fill), the peak is also split by what the memory holds.
    """
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
    return time.perf_counter() - started, parameter_count(model)


def _model_key(config: StepConfig) -> tuple[object, ...]:
    """What a built network depends on: UNETR's parameters depend on the patch too."""
    return (config.arch, config.in_channels, config.out_channels, config.deep_supervision, config.patch)


class _TrackedBackend:
    kind: DeviceKind
    fake: bool

    def __init__(self, breakdown: bool = False) -> None:
        self.breakdown = breakdown
        # The last network built, as a template: each probe works on a copy, and building
        # (with MONAI's weight initialisation) costs more than a fake step for large networks.
        self._template: tuple[tuple[object, ...], nn.Module] | None = None
        self._environment: Environment | None = None

    def environment(self) -> Environment:
        if self._environment is None:
            self._environment = software_environment(self.kind.value, self.kind.value)
        return self._environment

    def _fresh_model(self, config: StepConfig) -> nn.Module:
        key = _model_key(config)
        if self._template is None or self._template[0] != key:
            spec = resolve_arch(config.arch)
            self._template = None  # release the old network before building the next
            self._template = (
                key,
                build_model(
                    spec,
                    config.in_channels,
                    config.out_channels,
                    deep_supervision=config.deep_supervision,
                    patch=config.patch,
                ),
            )
        return self._template[1]

    def measure(self, config: StepConfig) -> Measurement:
        model = self._fresh_model(config)
        if not self.fake:
            model = copy.deepcopy(model)  # a real step updates the weights in place
        tracker = AllocationTracker()
        try:
            with ExitStack() as stack:
                if self.fake:
                    from torch._subclasses.fake_tensor import FakeCopyMode, FakeTensorMode

                    fake_mode = FakeTensorMode()
                    with FakeCopyMode(fake_mode):
                        model = copy.deepcopy(model)
                    stack.enter_context(fake_mode)
                stack.enter_context(tracker)
                breakdown: dict[str, int] | None = {} if self.breakdown else None
                seconds, parameters = _run_tracked(config, model, tracker, breakdown)
            simulated = replay(tracker.events, measure_from=tracker.measured_from, spans=tracker.phase_starts)
        except (torch.OutOfMemoryError, MemoryError):
            return Measurement(config, self.environment(), None, oom=True)
        except Exception as error:
            raise ModelError(
                f"the training step of {config.label()} failed: {type(error).__name__}: {error}"
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
