"""Run MONAI's ``sliding_window_inference`` (or nnU-Net's predictor) over a whole image and measure its GPU memory.

nnU-Net's predictor (``--predictor nnunet``) runs its reproduction in ``nnunet_predictor.py``
the same way: its results device (``perform_everything_on_device``) is the stitch device, the
input is made at the padded shape (nnU-Net pads on the host), and the division and infinity
check after the last window are a segment of their own (``finish``).

The network is built in eval mode and called by MONAI's own function under
``torch.inference_mode()`` (and CUDA's autocast lists for bf16/fp16), so the window loop,
padding, blending and aggregation are MONAI's, not a re-implementation.

On trace (fake tensors) and cpu (executed for real) everything runs on the CPU, so what would
live on the GPU is chosen by device:

- the network, its windows, activations and outputs, and the importance map are on the compute
  device and counted;
- stitching on the GPU (``device`` = ``sw_device``): the input image (``in_channels`` x voxels),
  the whole-image output (``out_channels`` x voxels, in the input's dtype) and the count map
  (voxels) are on the compute device too, and counted;
- stitching on the CPU (``sw_device`` the GPU, ``device`` the CPU): the input image is made
  before tracking starts and never charged (it stays on the host), and the output and count map are put on
  PyTorch's ``meta`` device, which allocates nothing and is not counted. With
  ``sw_batch_size`` 1, MONAI's ``inputs[window].to(sw_device)`` is a view on one device but a
  copy on a GPU: the window is cloned inside the predictor so that copy is counted.

The importance map is computed outside the tracked region (MONAI's ``compute_importance_map``
reads values, which fake tensors do not have) and passed as ``roi_weight_map``; it is counted
as a live GPU tensor from the start, as MONAI keeps it.
"""

from __future__ import annotations

import copy
import gc
import time
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from memprobe.backends.allocation_tracker import AllocationTracker
from memprobe.backends.allocator_replay import replay
from memprobe.core.archs.registry import resolve_arch
from memprobe.core.enums import DeviceKind, Precision, parse_enum
from memprobe.core.environment import software_environment
from memprobe.core.errors import DeviceUnavailableError, InvalidInputError, MemprobeError, ModelError
from memprobe.core.inference_config import BlendMode, InferenceConfig, StitchDevice
from memprobe.core.inference_measurement import InferenceMeasurement
from memprobe.core.measurement import Environment
from memprobe.core.user_code import model_exited, raised_by_user_code
from memprobe.training.networks import build_model

FORWARD, STITCH = "forward", "stitch"  # the two segments of an inference the formula fits
MAX_TRACED_FORWARDS = 2_000  # network runs a trace or cpu probe makes: about a minute or two on a laptop
FINISH = "finish"  # nnU-Net's division and infinity check after the last window: its own segment
SIGMA_SCALE = 0.125  # MONAI's default for gaussian blending
_HOST = torch.device("meta")  # stands in for the CPU when stitching there: allocates nothing


# Each forward's ops are split into windows (as training's phases are) so fine that each op of
# a network up to this many ops is its own segment: within a coarser window the op holding the
# peak moves with the classes (the last decoder level against the output convolution), which a
# linear fit per window cannot follow (MONAI's UNet: 12% held out with 8 windows, under 1% per op).
FORWARD_WINDOWS = 1024


class _GpuTracker(AllocationTracker):
    """Count storages that would live on the GPU (not ``meta``); a phase's (or window's) peak is its
    largest visit's: the network runs once per window batch, the same ops every time."""

    def __init__(self) -> None:
        super().__init__()
        self.host_storages: set[int] = set()  # storages on the CPU (the input image when stitching there)

    def track(self, tensor: torch.Tensor) -> None:
        # An op may return a host tensor itself (MONAI's ``inputs.to(memory_format=...)``): still host.
        if tensor.device.type != "meta" and tensor.untyped_storage()._cdata not in self.host_storages:
            super().track(tensor)

    def _close_window(self) -> None:
        key = f"{self._phase}.{(self._ops_in_phase - 1) // self._window_size:02d}"
        previous = self.phase_peaks_bytes.get(key, 0)
        super()._close_window()
        self.phase_peaks_bytes[key] = max(previous, self.phase_peaks_bytes[key])

    def start_phase(self, name: str | None) -> None:
        before = dict(self.phase_peaks_bytes)
        super().start_phase(name)
        for phase, peak in before.items():
            self.phase_peaks_bytes[phase] = max(peak, self.phase_peaks_bytes.get(phase, 0))


def build_eval_network(config: InferenceConfig) -> nn.Module:
    """The network of ``config`` in eval mode (no deep-supervision heads: inference uses the main output)."""
    spec = resolve_arch(config.arch)
    return build_model(spec, config.in_channels, config.out_channels, patch=config.roi).eval()


def _importance_map(config: InferenceConfig) -> torch.Tensor | None:
    """MONAI's importance map, or nnU-Net's gaussian (None without ``use_gaussian``), made on the CPU."""
    if config.nnunet:
        from memprobe.integrations.nnunet.predictor import gaussian_map

        return gaussian_map(config.roi, torch.device("cpu")) if config.blend is BlendMode.GAUSSIAN else None
    from monai.data.utils import compute_importance_map

    return compute_importance_map(
        config.roi, mode=config.blend.value, sigma_scale=SIGMA_SCALE, device="cpu", dtype=torch.float32
    )


def _stitch_device(config: InferenceConfig, compute: torch.device) -> torch.device:
    """Where the whole-image buffers live: the GPU, the CPU, or (off CUDA) a device that allocates nothing."""
    if config.stitch is StitchDevice.GPU:
        return compute
    return _HOST if compute.type != "cuda" else torch.device("cpu")


def _inference_context(config: InferenceConfig, compute: torch.device) -> ExitStack:
    """``torch.inference_mode``, and autocast where the precision asks for it."""
    stack = ExitStack()
    stack.enter_context(torch.inference_mode())
    autocast = _autocast(config.precision, compute.type)
    if autocast is not None:
        stack.enter_context(autocast)
    return stack


def _autocast(precision: Precision, device_type: str) -> Any:
    """CUDA's autocast on a GPU; its cast lists emulated on CPU and fake tensors (``training/autocast.py``)."""
    if not precision.is_mixed:
        return None
    dtype = torch.bfloat16 if precision is Precision.BF16_MIXED else torch.float16
    if device_type == "cuda":
        return torch.autocast("cuda", dtype=dtype)
    from memprobe.training.autocast import CudaAutocastEmulation

    return CudaAutocastEmulation(dtype)


def _image(config: InferenceConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """The input as each predictor takes it: MONAI's (1, C, D, H, W), nnU-Net's (C, D, H, W) padded on the host."""
    if config.nnunet:
        return torch.zeros((config.in_channels, *config.padded_shape), device=device)
    return torch.zeros((1, config.in_channels, *config.image_shape), device=device)


def _check_window_count(config: InferenceConfig) -> None:
    """Refuse to trace more windows than a probe can run in minutes, saying how many there are.

    Each window runs the network once on trace and cpu; the peak does not depend on how many
    windows follow the first batches (the output buffers are allocated once), only the time does.
    """
    per_run = 1 if config.nnunet else config.window_batch
    buffers = config.buffer_windows()  # MONAI's buffers: a window batch never crosses one
    batches = sum(-(-w // per_run) for w in buffers) if buffers else -(-config.windows() // per_run)
    if batches > MAX_TRACED_FORWARDS:
        raise InvalidInputError(
            f"{config.windows():,} windows at overlap {config.overlap:g} would run the network {batches:,} times on "
            f"{'x'.join(map(str, config.image_shape))} (at most {MAX_TRACED_FORWARDS:,} are traced): lower --overlap, "
            "raise --sw-batch-size, or probe a smaller image with the same window"
        )


def _sliding_window(
    config: InferenceConfig,
    model: nn.Module,
    image: torch.Tensor,
    importance: torch.Tensor | None,
    compute: torch.device,
    on_phase: Any,
) -> None:
    """Run the configured predictor's sliding window over ``image``."""
    if config.nnunet:
        _nnunet_sliding_window(config, model, image, importance, compute, on_phase)
    else:
        _monai_sliding_window(config, model, image, importance, compute, on_phase)


def _nnunet_sliding_window(
    config: InferenceConfig,
    model: nn.Module,
    data: torch.Tensor,
    gaussian: torch.Tensor | None,
    compute: torch.device,
    on_phase: Any,
) -> None:
    """nnU-Net's sliding window (``nnunet_predictor.py``), with ``data`` and ``gaussian`` on its results device."""
    from memprobe.integrations.nnunet.predictor import predict_sliding_window, sliding_window_slicers

    def network(window: torch.Tensor) -> torch.Tensor:
        on_phase(FORWARD)
        output = model(window)
        on_phase(STITCH)
        return output  # type: ignore[no-any-return]

    results = _stitch_device(config, compute)
    slicers = sliding_window_slicers(config.roi, config.padded_shape, config.tile_step_size)
    with _inference_context(config, compute):
        on_phase(STITCH)
        predict_sliding_window(
            network,
            data.to(results) if compute.type == "cuda" else data,
            slicers,
            classes=config.out_channels,
            gaussian=gaussian,
            compute=compute,
            results=results,
            mirror_axes=config.mirror_axes,
            check_values=results.type != "meta" and not _is_fake(data),
            on_finish=lambda: on_phase(FINISH),
        )
        on_phase(None)


def _is_fake(tensor: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(tensor, FakeTensor)


def _monai_sliding_window(
    config: InferenceConfig,
    model: nn.Module,
    image: torch.Tensor,
    importance: torch.Tensor | None,
    compute: torch.device,
    on_phase: Any,
) -> None:
    """Call MONAI's sliding_window_inference as a user would, reporting forward and stitch phases."""
    from monai.inferers import sliding_window_inference

    clone_window = config.stitch is StitchDevice.CPU and config.sw_batch_size == 1 and compute.type != "cuda"

    def predictor(window: torch.Tensor) -> torch.Tensor:
        if clone_window:
            window = window.clone()
        on_phase(FORWARD)  # after the clone: every forward is the same ops, so its windows align
        output = model(window)
        on_phase(STITCH)
        return output  # type: ignore[no-any-return]

    buffer: dict[str, Any] = (
        {"buffer_steps": config.buffer_steps, "buffer_dim": -1} if config.buffer_steps else {}
    )
    host = _stitch_device(config, compute)
    with _inference_context(config, compute):
        on_phase(STITCH)
        sliding_window_inference(
            image,
            config.roi,
            config.sw_batch_size,
            predictor,
            overlap=config.overlap,
            mode=config.blend.value,
            sw_device=compute,
            device=host,
            roi_weight_map=importance,
            **buffer,
        )
        on_phase(None)


class SlidingWindowBackend:
    """Measure sliding-window inference on ``trace``, ``cpu`` or ``cuda``; the network is built once per key.

    An inference backend (``memprobe.backends.base.InferenceBackend``): ``get_inference_backend``
    makes one, and wraps it for ``--isolate`` as it wraps a training step's.
    """

    def __init__(self, device: str | DeviceKind | None = None) -> None:
        from memprobe.backends import default_device_kind

        self.kind = default_device_kind() if device is None else parse_enum(DeviceKind, str(device), "device")
        if self.kind is DeviceKind.CUDA and not torch.cuda.is_available():
            raise DeviceUnavailableError(
                "no CUDA GPU is available here: use --device trace to measure without a GPU"
            )
        self._template: tuple[tuple[object, ...], nn.Module] | None = None
        self._environment: Environment | None = None

    def environment(self) -> Environment:
        if self._environment is None:
            if self.kind is DeviceKind.CUDA:
                from memprobe.backends.cuda import TorchCudaRuntime, cuda_environment

                self._environment = cuda_environment(TorchCudaRuntime())
            else:
                self._environment = software_environment(self.kind.value, self.kind.value)
        return self._environment

    def _network(self, config: InferenceConfig) -> nn.Module:
        key = (config.arch, config.in_channels, config.out_channels, config.roi)
        if self._template is None or self._template[0] != key:
            self._template = None
            self._template = (key, build_eval_network(config))
        return self._template[1]

    def measure(self, config: InferenceConfig) -> InferenceMeasurement:
        """Run the inference; running out of memory is a result, any other failure a ModelError."""
        try:
            if self.kind is DeviceKind.CUDA:
                return self._measure_cuda(config)
            return self._measure_tracked(config)
        except MemprobeError:
            raise
        except (torch.OutOfMemoryError, MemoryError):
            return InferenceMeasurement(config, self.environment(), None, oom=True)
        except Exception as error:
            raise ModelError(
                f"sliding-window inference of {config.label()} failed: {type(error).__name__}: {error}"
            ) from error
        except BaseException as error:
            if not raised_by_user_code(error):
                raise
            raise model_exited(error, f"predicting {config.label()}") from None
        finally:
            gc.collect()

    def _measure_tracked(self, config: InferenceConfig) -> InferenceMeasurement:
        _check_window_count(config)
        model = self._network(config)
        importance = _importance_map(config)
        tracker = _GpuTracker()
        compute = torch.device("cpu")
        with ExitStack() as stack:
            if self.kind is DeviceKind.TRACE:
                from torch._subclasses.fake_tensor import FakeCopyMode, FakeTensorMode

                fake_mode = FakeTensorMode()
                with FakeCopyMode(fake_mode):
                    model = copy.deepcopy(model)
                importance = None if importance is None else fake_mode.from_tensor(importance)
                stack.enter_context(fake_mode)
            if config.nnunet and config.stitch is StitchDevice.CPU and importance is not None:
                importance = importance.to(_HOST)  # nnU-Net's gaussian lives on its results device
            image = _image(config)
            tracker.track_module(model)
            if importance is not None:
                tracker.track(importance)
            if config.stitch is StitchDevice.GPU:
                tracker.track(image)
            else:
                tracker.host_storages.add(image.untyped_storage()._cdata)
            # From the second window batch on (the first teaches the op count), each forward is
            # also recorded in windows of ops, whose peaks are linear in the terms.
            tracker.split_phases({FORWARD: FORWARD_WINDOWS})
            stack.enter_context(tracker)
            started = time.perf_counter()
            _sliding_window(config, model, image, importance, compute, tracker.start_phase)
            seconds = time.perf_counter() - started
        spans = [(index, f"{name}#{n}") for n, (index, name) in enumerate(tracker.phase_starts)]
        simulated = replay(tracker.events, spans=spans)
        reserved_phases: dict[str, int] = {}
        for span, (_, reserved) in simulated.span_peaks.items():
            name = span.partition("#")[0]
            reserved_phases[name] = max(reserved, reserved_phases.get(name, 0))
        return InferenceMeasurement(
            config,
            self.environment(),
            tracker.peak_bytes,
            simulated.peak_reserved_bytes,
            phase_peaks_bytes=dict(tracker.phase_peaks_bytes),
            reserved_phase_peaks_bytes=reserved_phases,
            seconds=seconds,
            parameter_count=sum(p.numel() for p in model.parameters()),
            reserved_source="simulated",
            simulated_allocated_bytes=simulated.peak_allocated_bytes,
        )

    def _measure_cuda(self, config: InferenceConfig) -> InferenceMeasurement:
        from memprobe.backends.cuda import TorchCudaRuntime

        runtime = TorchCudaRuntime()
        compute = torch.device("cuda")
        allocated: dict[str, int] = {}
        reserved: dict[str, int] = {}
        current: list[str | None] = [None]

        def on_phase(name: str | None) -> None:
            runtime.synchronize()
            if current[0] is not None:
                allocated[current[0]] = max(allocated.get(current[0], 0), runtime.max_memory_allocated())
                reserved[current[0]] = max(reserved.get(current[0], 0), runtime.max_memory_reserved())
            runtime.reset_peak_memory_stats()
            current[0] = name

        gc.collect()
        runtime.empty_cache()
        model = build_eval_network(config).to(compute)
        parameters = sum(p.numel() for p in model.parameters())
        importance = _importance_map(config)
        on_gpu = config.stitch is StitchDevice.GPU
        if importance is not None:
            importance = importance.to(compute if on_gpu or not config.nnunet else torch.device("cpu"))
        # nnU-Net's input comes from the host and is moved inside its sliding window
        image = _image(config, compute if on_gpu and not config.nnunet else torch.device("cpu"))
        started = time.perf_counter()
        try:
            runtime.reset_peak_memory_stats()
            _sliding_window(config, model, image, importance, compute, on_phase)
            seconds = time.perf_counter() - started
            context = runtime.context_bytes()
        finally:
            del model, image, importance
            gc.collect()
            runtime.empty_cache()
        return InferenceMeasurement(
            config,
            self.environment(),
            max(allocated.values(), default=0),
            max(reserved.values(), default=0),
            phase_peaks_bytes=allocated,
            reserved_phase_peaks_bytes=reserved,
            seconds=seconds,
            parameter_count=parameters,
            reserved_source="measured",
            context_bytes=context,
        )
