"""What one measured sliding-window inference is: the network, the window, the image, and where it stitches."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum

from memprobe.archs.registry import resolve_arch
from memprobe.config import _positive_int, validate_patch
from memprobe.enums import Precision, parse_enum
from memprobe.errors import InvalidInputError

# An image beyond this is refused: 2048^3 voxels of one float32 class are 32 GiB on the host alone.
MAX_IMAGE_VOXELS = 2048**3


class BlendMode(StrEnum):
    """How overlapping windows are blended (MONAI's ``mode``)."""

    CONSTANT = "constant"
    GAUSSIAN = "gaussian"


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
        """How many windows MONAI's ``dense_patch_slices`` cuts the padded image into."""
        return math.prod(
            _windows_along(i, r, self.overlap) for i, r in zip(self.padded_shape, self.roi, strict=True)
        )

    @property
    def window_batch(self) -> int:
        """Windows the network sees at once: ``sw_batch_size``, unless the image has fewer."""
        return min(self.sw_batch_size, self.windows())

    def with_sw_batch(self, sw_batch_size: int) -> InferenceConfig:
        return replace(self, sw_batch_size=sw_batch_size)

    def with_stitch(self, stitch: StitchDevice) -> InferenceConfig:
        return replace(self, stitch=stitch)

    def padding_note(self) -> str | None:
        """What MONAI does when the window is larger than the image, in words; None when it is not."""
        if not self.padded:
            return None
        return (
            f"the window {_x(self.roi)} is larger than the image {_x(self.image_shape)}: MONAI pads the "
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
        }

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.update(
            roi=list(self.roi),
            image_shape=list(self.image_shape),
            blend=self.blend.value,
            precision=self.precision.value,
            stitch=self.stitch.value,
        )
        return data

    def label(self) -> str:
        """Short human-readable form: ``unet roi 96x96x96 image 600x512x512 sw4 fp32 c1->16 stitch gpu``."""
        return (
            f"{self.arch} roi {_x(self.roi)} image {_x(self.image_shape)} sw{self.sw_batch_size} "
            f"{self.precision.value} c{self.in_channels}->{self.out_channels} {self.blend.value} "
            f"stitch {self.stitch.value}"
        )


def _x(sizes: Sequence[int]) -> str:
    return "x".join(map(str, sizes))


def _windows_along(image: int, roi: int, overlap: float) -> int:
    """MONAI's ``_get_scan_interval`` and ``dense_patch_slices`` along one axis."""
    if roi >= image:
        return 1
    interval = max(1, int(roi * (1 - overlap)))
    return next(d for d in range(image) if d * interval + roi >= image) + 1


def validate_image_shape(shape: Sequence[object]) -> tuple[int, int, int]:
    """Ensure an image shape is three positive whole numbers of voxels."""
    if len(shape) != 3:
        raise InvalidInputError(
            f"an image shape has 3 sizes (depth height width), got {len(shape)}: e.g. --image-shape 600 512 512"
        )
    sizes = tuple(_positive_int(size, "each image size") for size in shape)
    if math.prod(sizes) > MAX_IMAGE_VOXELS:
        raise InvalidInputError(f"image {_x(sizes)} has more than 2048^3 voxels: give the shape of one image")
    return sizes  # type: ignore[return-value]


def _overlap(value: object) -> float:
    try:
        overlap = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidInputError(f"overlap must be a number in [0, 1), got {value!r}") from None
    if not 0 <= overlap < 1:
        raise InvalidInputError(f"overlap must be in [0, 1) as MONAI requires, got {value!r}")
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
) -> InferenceConfig:
    """Validate user input into an InferenceConfig, raising one-line InvalidInputErrors."""
    spec = resolve_arch(arch)
    return InferenceConfig(
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
    )
