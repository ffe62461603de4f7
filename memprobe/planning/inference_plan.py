"""Plan sliding-window inference from a calibration: the largest ``sw_batch_size``, and where to stitch.

Pure arithmetic, no torch. The need of a configuration is a training plan's
(``memprobe.planning.need.MemoryNeed``): allocated + allocator reserve + CUDA context + cuBLAS and
cuDNN workspaces + margin, each term with its source; with MONAI's ``buffer_steps`` the buffer
it keeps on the GPU is a term of its own, from the shapes (``memprobe.formula.inference_terms``).
Stitching on the GPU is tried first; when even one window at a time does not fit with it, the
output and count map move to the CPU.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, fields, replace

from memprobe.core.archs.registry import ArchSpec
from memprobe.core.bisection import largest_at_most
from memprobe.core.errors import NothingFitsError
from memprobe.core.gpus import GpuInfo
from memprobe.core.inference_config import InferenceConfig, StitchDevice
from memprobe.core.units import format_bytes
from memprobe.formula.inference_calibration import InferenceCalibration
from memprobe.formula.inference_terms import BUFFER_ITEM_BYTES, buffer_bytes
from memprobe.planning.need import EXTRAPOLATION_FACTOR, MemoryNeed, MemoryPlan, need_from_peaks
from memprobe.planning.size_search import _check_budget, _check_fixed_overheads, describe_need


@dataclass(frozen=True)
class InferenceNeed(MemoryNeed):
    """A MemoryNeed with MONAI's ``buffer_steps`` buffer as its own term (beside the calibrated peak)."""

    buffer_bytes: float = 0.0  # what the buffer adds to the peak
    buffer_source: str = ""

    @property
    def reserved_bytes(self) -> float:
        return self.allocated_bytes + self.buffer_bytes + self.reserve_overhead_bytes

    def terms(self) -> list[tuple[str, float, str]]:
        allocated, *rest = super().terms()
        return [allocated, ("buffer_steps buffer", self.buffer_bytes, self.buffer_source), *rest]

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "buffer_bytes": round(self.buffer_bytes)}


def inference_need(
    calibration: InferenceCalibration, spec: ArchSpec, config: InferenceConfig, gpu: GpuInfo | None = None
) -> MemoryNeed:
    """Every term of the GPU memory ``config`` needs, as ``calibration`` predicts it on ``gpu``."""
    allocated = calibration.inference_peak_bytes(spec, config)
    reserved = calibration.inference_reserved_bytes(spec, config)
    need = need_from_peaks(calibration, allocated, reserved, gpu)
    if not config.buffer_steps:
        return need
    added = calibration.inference_buffer_bytes(spec, config)
    kept = {f.name: getattr(need, f.name) for f in fields(need)}
    return InferenceNeed(
        **(kept | {"allocated_bytes": allocated - added}),
        buffer_bytes=added,
        buffer_source=_buffer_source(config, added),
    )


def _buffer_source(config: InferenceConfig, added: float) -> str:
    """Where the buffer's term comes from, in words: its shape, and how much of it the peak holds."""
    depth, height, _ = config.padded_shape
    widths = config.buffer_widths()
    largest = buffer_bytes(config)
    text = (
        f"from the shapes: buffer_steps {config.buffer_steps}, {len(widths)} buffers along the last axis, the "
        f"largest {config.out_channels} classes x {depth}x{height}x{max(widths)} voxels x {BUFFER_ITEM_BYTES} B "
        f"= {format_bytes(largest)}"
    )
    if added < largest:
        text += f"; adds {format_bytes(added)} to the peak (not held while the largest forward runs)"
    return text


@dataclass(frozen=True)
class InferencePlan(MemoryPlan):
    """The planned configuration (largest ``sw_batch_size``, stitch device) and what it needs."""

    calibration: InferenceCalibration
    _: KW_ONLY
    config: InferenceConfig
    next_need: MemoryNeed | None  # one more window in the batch (None: the image has no more windows)
    gpu_stitch_need: (
        MemoryNeed  # one window at a time, stitching on the GPU: why the stitch device was chosen
    )

    def sliding_window_kwargs(self) -> dict[str, object]:
        """What to pass to ``monai.inferers.sliding_window_inference``."""
        return self.config.sliding_window_kwargs()

    def nnunet_predictor_kwargs(self) -> dict[str, object]:
        """The arguments of nnU-Net's ``nnUNetPredictor(...)`` (stitching on the GPU: everything on the device)."""
        return self.config.nnunet_predictor_kwargs()


def plan_inference(
    calibration: InferenceCalibration,
    spec: ArchSpec,
    base: InferenceConfig,
    budget_bytes: int,
    *,
    safety: float = 1.0,
    gpu: GpuInfo | None = None,
    stitch: StitchDevice | None = None,
) -> InferencePlan:
    """The largest ``sw_batch_size`` for ``base``'s window and image whose whole need fits.

    Stitching on the GPU when one window at a time fits with it, else on the CPU (or only on
    ``stitch`` when given). A batch beyond the image's windows needs nothing more, so the batch
    is capped there.

    Raises:
        InvalidInputError: the budget is below the fixed overheads.
        NothingFitsError: one window at a time does not fit even stitching on the CPU.
    """
    _check_budget(budget_bytes, safety)
    usable = budget_bytes * safety
    need = lambda c: inference_need(calibration, spec, c, gpu)
    on_gpu = need(replace(base, sw_batch_size=1, stitch=StitchDevice.GPU))
    _check_fixed_overheads(on_gpu, usable)
    reasons = []
    if base.padded:
        reasons.append(base.padding_note() or "")
    if stitch is None:
        fits_on_gpu = on_gpu.total_bytes <= usable
        chosen = StitchDevice.GPU if fits_on_gpu else StitchDevice.CPU
        reasons.append((_nnunet_reason if base.nnunet else _monai_reason)(base, on_gpu, usable, fits_on_gpu))
    else:
        chosen = stitch
        reasons.append(f"stitching on the {chosen.value.upper()}, as asked")
    at = lambda b: replace(base, sw_batch_size=b, stitch=chosen)
    first = need(at(1))
    if first.total_bytes > usable:
        raise NothingFitsError(
            f"nothing fits: one {'x'.join(map(str, base.roi))} window of {base.arch} stitching on the "
            f"{chosen.value.upper()} needs {describe_need(first)}, more than the {format_bytes(usable)} usable: "
            + (
                "choose a smaller patch, perform_everything_on_device=False, or a larger GPU"
                if base.nnunet
                else "choose a smaller roi, bf16-mixed, stitching on the CPU, or a larger GPU"
            )
        )
    windows = _batch_cap(base)
    batch = largest_at_most(lambda b: need(at(b)).total_bytes, usable, 1, windows)
    if not base.nnunet:
        reasons.append(
            f"largest sw_batch_size within {format_bytes(usable)}: {batch}"
            + (f" ({_cap_reason(base, windows)}: a larger batch holds no more)" if batch == windows else "")
        )
    planned = at(batch)
    reasons.append(_window_count(planned))
    return InferencePlan(
        need(planned),
        budget_bytes,
        safety,
        calibration,
        reasons=tuple(r for r in reasons if r),
        warnings=tuple(_extrapolation_warnings(calibration, planned)),
        config=planned,
        next_need=need(at(batch + 1)) if batch < windows else None,
        gpu_stitch_need=on_gpu,
    )


def _batch_cap(config: InferenceConfig) -> int:
    """The largest batch that holds more windows: nnU-Net runs one; MONAI's batches stop at a buffer's end."""
    if config.nnunet:
        return 1
    return max(config.buffer_windows()) if config.buffer_steps else config.windows()


def _cap_reason(config: InferenceConfig, windows: int) -> str:
    if config.buffer_steps:
        return f"MONAI's largest buffer gathers {windows} windows, and a batch never crosses a buffer"
    return f"the image has {windows} windows"


MANY_WINDOWS = 100_000  # beyond, the prediction's time, not its memory, is what to look at


def _window_count(config: InferenceConfig) -> str:
    """Every plan says how many windows it runs: an overlap near 1 makes millions."""
    windows = config.windows()
    batch = 1 if config.nnunet else config.window_batch
    runs = sum(-(-w // batch) for w in config.buffer_windows() or (windows,))
    times = "once" if runs == 1 else f"{runs:,} times"
    text = f"{windows:,} windows at overlap {config.overlap:g}: the network runs {times}"
    if windows > MANY_WINDOWS:
        text += " (lower --overlap: memory does not depend on the count, time does)"
    return text


def _monai_reason(base: InferenceConfig, on_gpu: MemoryNeed, usable: float, fits: bool) -> str:
    """Whether MONAI's stitching fits on the GPU, in words."""
    if fits:
        return (
            f"stitching on the GPU: one window at a time needs {format_bytes(on_gpu.total_bytes)} with the "
            f"whole-image output and count map, within {format_bytes(usable)}"
        )
    return (
        f"stitching must move to the CPU (sw_device GPU, device CPU): with the output of "
        f"{base.out_channels} classes x {base.image_voxels} voxels and the count map on the GPU, even one "
        f"window at a time needs {format_bytes(on_gpu.total_bytes)}, more than {format_bytes(usable)}"
    )


def _nnunet_reason(base: InferenceConfig, on_gpu: MemoryNeed, usable: float, fits: bool) -> str:
    """Whether nnU-Net's ``perform_everything_on_device`` fits, in words."""
    if fits:
        return (
            f"perform_everything_on_device=True fits: with predicted_logits ({base.out_channels} classes x "
            f"{base.image_voxels} voxels, half precision), n_predictions and the input on the GPU, nnU-Net's "
            f"predictor needs {format_bytes(on_gpu.total_bytes)}, within {format_bytes(usable)}"
        )
    return (
        f"perform_everything_on_device must be False: with predicted_logits ({base.out_channels} classes x "
        f"{base.image_voxels} voxels, half precision), n_predictions and the input on the GPU it needs "
        f"{format_bytes(on_gpu.total_bytes)}, more than {format_bytes(usable)}; left True, nnU-Net would run "
        "out of memory on the device, then start again with its results on the CPU"
    )


def _extrapolation_warnings(calibration: InferenceCalibration, config: InferenceConfig) -> list[str]:
    """A warning for each quantity beyond twice the range the calibration measured.

    Image voxels are the exception: the image terms are there to carry small calibration images
    to whole volumes (their coefficient is bytes per voxel), so a large image is said, not warned.
    """
    if not calibration.fit_range:
        return []
    asked = {
        "sw_batch_size": config.window_batch,
        "voxels": config.roi[0] * config.roi[1] * config.roi[2],
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
    }
    warnings = []
    for name, value in asked.items():
        low, high = calibration.fit_range.get(name, [value, value])
        if value > EXTRAPOLATION_FACTOR * high or value < low / EXTRAPOLATION_FACTOR:
            warnings.append(
                f"{name} {value} is beyond twice the calibrated range {low}-{high}: the prediction "
                "extrapolates; probe the planned configuration (memprobe probe --mode inference)"
            )
    return warnings
