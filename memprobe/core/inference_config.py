"""What one measured sliding-window inference is: the network, the window, the image, and where it stitches."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from memprobe.core.archs.registry import resolve_arch
from memprobe.core.checks import check_triple
from memprobe.core.config import _positive_int, default_precision, validate_patch
from memprobe.core.enums import Precision, parse_enum
from memprobe.core.errors import InvalidInputError
from memprobe.core.input_files import shown
from memprobe.core.units import format_shape

if TYPE_CHECKING:
    from memprobe.core.gpus import GpuInfo

# An image beyond this is refused: 2048^3 voxels of one float32 class are 32 GiB on the host alone.
MAX_IMAGE_VOXELS = 2048**3


class BlendMode(StrEnum):
    """How overlapping windows are blended (MONAI's ``mode``)."""

    CONSTANT = "constant"
    GAUSSIAN = "gaussian"


class Predictor(StrEnum):
    """Whose sliding-window loop runs the network over the image."""

    MONAI = "monai"  # monai.inferers.sliding_window_inference
    NNUNET = "nnunet"  # nnunetv2's nnUNetPredictor.predict_sliding_window_return_logits


NNUNET_INSTALL = "pip install 'memprobe[nnunet]'"
NNUNET_AXES = (0, 1, 2)  # nnU-Net's allowed mirroring axes of a 3D model, its default test-time augmentation


class StitchDevice(StrEnum):
    """Where the whole-image output and count map live (MONAI's ``device``)."""

    GPU = "gpu"  # sw_device and device both the GPU: the input image and the aggregation on it
    CPU = "cpu"  # sw_device the GPU, device the CPU: only windows and their outputs on the GPU


@dataclass(frozen=True)
class InferenceConfig:
    """One sliding-window inference configuration, the key every inference measurement is stored under."""

    arch: str
    roi: tuple[int, int, int]
    image_shape: tuple[int, int, int]
    sw_batch_size: int = 1
    overlap: float = 0.25
    blend: BlendMode = BlendMode.CONSTANT
    precision: Precision = Precision.FP32
    in_channels: int = 1
    out_channels: int = 2
    stitch: StitchDevice = StitchDevice.GPU
    predictor: Predictor = Predictor.MONAI
    mirror_axes: tuple[int, ...] = ()  # nnU-Net's mirroring: each window predicted 2^len times
    buffer_steps: int | None = None  # MONAI's buffer_steps (buffer_dim -1)

    @property
    def nnunet(self) -> bool:
        return self.predictor is Predictor.NNUNET

    @property
    def tile_step_size(self) -> float:
        """nnU-Net's ``tile_step_size``: the step between windows as a share of the window."""
        return round(1 - self.overlap, 6)

    @property
    def patch(self) -> tuple[int, int, int]:
        """The network's input window (what a training config calls its patch)."""
        return self.roi

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        """The image as MONAI processes it: padded to the window along any axis smaller than it."""
        depth, height, width = (max(i, r) for i, r in zip(self.image_shape, self.roi, strict=True))
        return depth, height, width

    @property
    def image_voxels(self) -> int:
        return math.prod(self.padded_shape)

    @property
    def padded(self) -> bool:
        return self.padded_shape != self.image_shape

    def windows(self) -> int:
        """How many windows MONAI's ``dense_patch_slices`` (or nnU-Net's steps) cut the padded image into."""
        along = _nnunet_windows_along if self.nnunet else _windows_along
        return math.prod(along(i, r, self.overlap) for i, r in zip(self.padded_shape, self.roi, strict=True))

    @property
    def window_batch(self) -> int:
        """Windows the network sees at once: ``sw_batch_size``, unless the image (or, with
        ``buffer_steps``, MONAI's largest buffer, whose batches never cross it) has fewer."""
        if self.buffer_steps and not self.nnunet:
            return min(self.sw_batch_size, max(self.buffer_windows()))
        return min(self.sw_batch_size, self.windows())

    def buffer_widths(self) -> tuple[int, ...]:
        """Each of MONAI's buffers' width in voxels along the last axis (``buffer_dim`` -1), in order.

        MONAI's ``_create_buffered_slices``: the windows' start positions along that axis are taken
        ``buffer_steps`` at a time, and each buffer spans its first window's start to its last
        window's end. Empty without ``buffer_steps``.
        """
        if not self.buffer_steps or self.nnunet:
            return ()
        starts = _starts_along(self.padded_shape[2], self.roi[2], self.overlap)
        step = min(len(starts), self.buffer_steps)
        return tuple(
            starts[min(first + step, len(starts)) - 1] + self.roi[2] - starts[first]
            for first in range(0, len(starts), step)
        )

    def buffer_windows(self) -> tuple[int, ...]:
        """How many windows each of MONAI's buffers gathers (its window batches stop at its end)."""
        if not self.buffer_steps or self.nnunet:
            return ()
        across = math.prod(
            _windows_along(i, r, self.overlap)
            for i, r in zip(self.padded_shape[:2], self.roi[:2], strict=True)
        )
        along = _windows_along(self.padded_shape[2], self.roi[2], self.overlap)
        step = min(along, self.buffer_steps)
        return tuple(across * (min(first + step, along) - first) for first in range(0, along, step))

    def padding_note(self) -> str | None:
        """What MONAI (or nnU-Net) does when the window is larger than the image, in words; None when it is not."""
        if not self.padded:
            return None
        who = "nnU-Net (pad_nd_image)" if self.nnunet else "MONAI"
        return (
            f"the window {_x(self.roi)} is larger than the image {_x(self.image_shape)}: {who} pads the "
            f"image to {_x(self.padded_shape)} (constant 0), infers on that and crops the output back"
        )

    def sliding_window_kwargs(self, compute_device: str = "cuda") -> dict[str, object]:
        """The arguments to pass to ``monai.inferers.sliding_window_inference`` for this configuration."""
        return {
            "roi_size": list(self.roi),
            "sw_batch_size": self.sw_batch_size,
            "overlap": self.overlap,
            "mode": self.blend.value,
            "sw_device": compute_device,
            "device": compute_device if self.stitch is StitchDevice.GPU else "cpu",
            **({"buffer_steps": self.buffer_steps, "buffer_dim": -1} if self.buffer_steps else {}),
        }

    def nnunet_predictor_kwargs(self, compute_device: str = "cuda") -> dict[str, object]:
        """The arguments to pass to ``nnunetv2``'s ``nnUNetPredictor(...)`` for this configuration.

        Its mirroring axes come from the trained model (``inference_allowed_mirroring_axes``);
        ``use_mirroring`` False is the same as no axes.
        """
        return {
            "tile_step_size": self.tile_step_size,
            "use_gaussian": self.blend is BlendMode.GAUSSIAN,
            "use_mirroring": bool(self.mirror_axes),
            "perform_everything_on_device": self.stitch is StitchDevice.GPU,
            "device": compute_device,
        }

    def settings(self) -> dict[str, object]:
        """What this configuration sets beyond MONAI's defaults (the predictor, mirroring, buffer_steps)."""
        settings: dict[str, object] = {}
        if self.nnunet:
            settings.update(predictor=self.predictor.value, mirror_axes=list(self.mirror_axes))
        if self.buffer_steps:
            settings["buffer_steps"] = self.buffer_steps
        return settings

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.update(
            roi=list(self.roi),
            image_shape=list(self.image_shape),
            blend=self.blend.value,
            precision=self.precision.value,
            stitch=self.stitch.value,
            predictor=self.predictor.value,
            mirror_axes=list(self.mirror_axes),
        )
        return data

    def range_values(self) -> dict[str, int]:
        """The sizes an inference calibration's fit range spans (``memprobe.formula.fit.measured_range``)."""
        return {
            "sw_batch_size": self.window_batch,
            "voxels": math.prod(self.roi),
            "image_voxels": self.image_voxels,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InferenceConfig:
        """Inverse of :meth:`to_dict`."""
        roi_d, roi_h, roi_w = (int(size) for size in data["roi"])
        depth, height, width = (int(size) for size in data["image_shape"])
        buffer_steps = data.get("buffer_steps")
        return cls(
            arch=str(data["arch"]),
            roi=(roi_d, roi_h, roi_w),
            image_shape=(depth, height, width),
            sw_batch_size=int(data["sw_batch_size"]),
            overlap=float(data["overlap"]),
            blend=BlendMode(data["blend"]),
            precision=Precision(data["precision"]),
            in_channels=int(data["in_channels"]),
            out_channels=int(data["out_channels"]),
            stitch=StitchDevice(data["stitch"]),
            predictor=Predictor(data.get("predictor", Predictor.MONAI.value)),
            mirror_axes=tuple(int(axis) for axis in data.get("mirror_axes", ())),
            buffer_steps=None if buffer_steps is None else int(buffer_steps),
        )

    def label(self) -> str:
        """Short human-readable form: ``unet roi 96x96x96 image 600x512x512 sw4 fp32 c1->16 stitch gpu``."""
        extra = f" buffer_steps {self.buffer_steps}" if self.buffer_steps else ""
        if self.nnunet:
            extra = f" nnunet mirror {''.join(map(str, self.mirror_axes)) or 'off'}"
        return (
            f"{self.arch} roi {_x(self.roi)} image {_x(self.image_shape)} sw{self.sw_batch_size} "
            f"{self.precision.value} c{self.in_channels}->{self.out_channels} {self.blend.value} "
            f"stitch {self.stitch.value}{extra}"
        )


def _x(sizes: Sequence[int]) -> str:
    return format_shape(sizes)


def _windows_along(image: int, roi: int, overlap: float) -> int:
    """MONAI's ``_get_scan_interval`` and ``dense_patch_slices`` along one axis."""
    if roi >= image:
        return 1
    interval = max(1, int(roi * (1 - overlap)))
    return next(d for d in range(image) if d * interval + roi >= image) + 1


def _starts_along(image: int, roi: int, overlap: float) -> list[int]:
    """MONAI's window starts along one axis (``dense_patch_slices``: the last one moved back to fit)."""
    interval = max(1, int(roi * (1 - overlap)))
    return [min(d * interval, image - roi) for d in range(_windows_along(image, roi, overlap))]


def _nnunet_windows_along(image: int, roi: int, overlap: float) -> int:
    """nnU-Net's ``compute_steps_for_sliding_window`` (nnunetv2 2.8.1) along one axis: the step is
    at most ``tile_step_size`` windows, the steps spread evenly over the image."""
    if roi >= image:
        return 1
    return math.ceil((image - roi) / (roi * round(1 - overlap, 6))) + 1


def validate_image_shape(shape: Sequence[object]) -> tuple[int, int, int]:
    """Ensure an image shape is three positive whole numbers of voxels (a list, tuple or array)."""
    if isinstance(shape, Sequence) and not isinstance(shape, (str, bytes)) and len(shape) != 3:
        raise InvalidInputError(
            f"an image shape has 3 sizes (depth height width), got {len(shape)}: e.g. --image-shape 600 512 512"
        )
    sizes = tuple(_positive_int(size, "each image size") for size in check_triple(shape, "image_shape"))
    if math.prod(sizes) > MAX_IMAGE_VOXELS:
        raise InvalidInputError(f"image {_x(sizes)} has more than 2048^3 voxels: give the shape of one image")
    return sizes  # type: ignore[return-value]


def _overlap(value: object) -> float:
    try:
        overlap = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidInputError(f"overlap must be a number in [0, 1), got {shown(repr(value))}") from None
    if not 0 <= overlap < 1:
        raise InvalidInputError(f"overlap must be in [0, 1) as MONAI requires, got {shown(repr(value))}")
    return overlap


def make_inference_config(
    arch: str,
    roi: Sequence[object],
    image_shape: Sequence[object],
    sw_batch_size: object = 1,
    *,
    overlap: object = 0.25,
    blend: str | BlendMode = BlendMode.CONSTANT,
    precision: str | Precision = Precision.FP32,
    in_channels: object = 1,
    out_channels: object = 2,
    stitch: str | StitchDevice = StitchDevice.GPU,
    predictor: str | Predictor = Predictor.MONAI,
    mirror_axes: Sequence[object] | None = None,
    buffer_steps: object = None,
) -> InferenceConfig:
    """Validate user input into an InferenceConfig, raising one-line InvalidInputErrors.

    With the nnU-Net predictor: one window at a time, fp16 autocast (nnU-Net's on CUDA), and
    mirroring along ``mirror_axes`` (default nnU-Net's 0, 1, 2; empty: none).
    """
    spec = resolve_arch(arch)
    config = InferenceConfig(
        arch=spec.name,
        roi=validate_patch(roi, spec),
        image_shape=validate_image_shape(image_shape),
        sw_batch_size=_positive_int(sw_batch_size, "sw_batch_size"),
        overlap=_overlap(overlap),
        blend=parse_enum(BlendMode, str(blend), "blend mode"),
        precision=parse_enum(Precision, str(precision), "precision"),
        in_channels=_positive_int(in_channels, "in_channels"),
        out_channels=_positive_int(out_channels, "out_channels"),
        stitch=parse_enum(StitchDevice, str(stitch), "stitch device"),
        predictor=parse_enum(Predictor, str(predictor), "predictor"),
        buffer_steps=None if buffer_steps is None else _positive_int(buffer_steps, "buffer_steps"),
    )
    if config.nnunet:
        check_nnunet_config(config)
        return replace(config, mirror_axes=_mirror_axes(NNUNET_AXES if mirror_axes is None else mirror_axes))
    if mirror_axes:
        raise InvalidInputError(
            "mirroring is nnU-Net's test-time augmentation: give it with --predictor nnunet"
        )
    return config


def require_nnunet() -> None:
    """Ensure nnunetv2 is installed: its predictor's steps and gaussian are nnU-Net's own code."""
    if importlib.util.find_spec("nnunetv2") is None:
        raise InvalidInputError(f"--predictor nnunet needs nnU-Net v2: {NNUNET_INSTALL}")


def check_nnunet_config(config: InferenceConfig) -> None:
    """Ensure an nnU-Net predictor configuration is one nnU-Net runs: a window at a time, in fp16 autocast."""
    if config.sw_batch_size != 1:
        raise InvalidInputError("nnU-Net's predictor runs one window at a time: drop --sw-batch-size")
    if config.precision is not Precision.FP16_MIXED:
        raise InvalidInputError(
            "nnU-Net's predictor always autocasts to fp16 on CUDA: use --precision fp16-mixed (or leave it out)"
        )
    if config.buffer_steps:
        raise InvalidInputError("buffer_steps is MONAI's: drop it with --predictor nnunet")


def _mirror_axes(axes: Sequence[object]) -> tuple[int, ...]:
    """Ensure mirroring axes are distinct spatial axes 0, 1, 2 (nnU-Net's ``allowed_mirroring_axes``)."""
    try:
        parsed = tuple(sorted({int(str(axis)) for axis in axes}))
    except ValueError:
        raise InvalidInputError(
            f"mirror axes are 0, 1 and 2 (depth, height, width), got {list(axes)}"
        ) from None
    if any(axis not in NNUNET_AXES for axis in parsed):
        raise InvalidInputError(f"mirror axes are 0, 1 and 2 (depth, height, width), got {list(axes)}")
    return parsed


def inference_precision(given: str | None, predictor: str, gpu: GpuInfo | None) -> str:
    """The precision an inference runs at: ``given``; else nnU-Net's predictor's own fp16 autocast;
    else the default rule every command uses, for ``gpu`` (``default_precision``)."""
    if given is not None:
        return given
    if predictor == Predictor.NNUNET.value:
        return Precision.FP16_MIXED.value
    return default_precision(gpu)[0].value
