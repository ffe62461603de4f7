"""Inference configurations: validation, MONAI's window count and padding, the kwargs a plan gives."""

from __future__ import annotations

import pytest

from memprobe.core.errors import InvalidInputError
from memprobe.core.inference_config import StitchDevice, make_inference_config

TINY = "tests.tiny_models:tiny_net"


@pytest.mark.parametrize(
    ("image", "roi", "overlap"),
    [
        ((64, 64, 64), (32, 32, 32), 0.25),
        ((600, 512, 512), (96, 96, 96), 0.5),
        ((50, 70, 33), (16, 32, 32), 0.0),
    ],
)
def test_window_count_is_monai_s(image: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> None:
    """The pure-Python count equals MONAI's dense_patch_slices on the padded image."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    config = make_inference_config(TINY, roi, image, 1, overlap=overlap)
    padded = config.padded_shape
    slices = dense_patch_slices(padded, roi, _get_scan_interval(padded, roi, 3, (overlap,) * 3))
    assert config.windows() == len(slices)


@pytest.mark.parametrize("shape", [(0, 64, 64), (64.5, 64, 64), ("a", 64, 64), (64, 64), (-1, 64, 64)])
def test_bad_image_shapes_are_refused_in_one_line(shape: tuple[object, ...]) -> None:
    with pytest.raises(InvalidInputError) as error:
        make_inference_config(TINY, (16, 16, 16), shape, 1)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("field", "value"), [("overlap", 1.0), ("overlap", -0.1), ("blend", "median"), ("stitch", "tpu")]
)
def test_bad_inference_options_are_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidInputError):
        make_inference_config(TINY, (16, 16, 16), (32, 32, 32), 1, **{field: value})  # type: ignore[arg-type]


def test_a_window_larger_than_the_image_is_padded_as_monai_does_and_said() -> None:
    config = make_inference_config(TINY, (32, 32, 32), (20, 64, 64), 1)
    assert config.padded_shape == (32, 64, 64) and config.image_voxels == 32 * 64 * 64
    assert "pads the image to 32x64x64" in (config.padding_note() or "")
    assert make_inference_config(TINY, (16, 16, 16), (20, 64, 64), 1).padding_note() is None


def test_kwargs_for_sliding_window_inference() -> None:
    config = make_inference_config(
        TINY, (16, 16, 16), (64, 64, 64), 4, overlap=0.5, blend="gaussian", stitch="cpu"
    )
    assert config.stitch is StitchDevice.CPU
    assert config.sliding_window_kwargs() == {
        "roi_size": [16, 16, 16],
        "sw_batch_size": 4,
        "overlap": 0.5,
        "mode": "gaussian",
        "sw_device": "cuda",
        "device": "cpu",
    }
