"""MONAI's ``buffer_steps``: the buffer's geometry against MONAI's own, its term against trace probes, and its plan.

The buffer is not fitted: its size follows from the shapes (``memprobe.formula.inference_terms``). These
tests hold that term to the trace backend. From the segment peaks of a probe without a buffer (at the
same window batch), ``buffered_peak`` gives the buffered probe's peak to the byte stitching on the
CPU wherever the batch divides each buffer's windows, and stitching on the GPU wherever there is
more than one buffer (a whole-image buffer is filled before the output exists); elsewhere it is an
upper bound, never below the probe.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from memprobe.backends.sliding_window import SlidingWindowBackend
from memprobe.core.archs.registry import resolve_arch
from memprobe.core.inference_config import InferenceConfig, make_inference_config
from memprobe.formula.inference_terms import buffer_bytes, buffered_peak
from memprobe.planning.inference_plan import inference_need
from tests.helpers import invoke

TINY = "tests.tiny_models:tiny_net"
GIB = 2**30


@pytest.fixture(scope="module")
def runner() -> SlidingWindowBackend:
    return SlidingWindowBackend("trace")


def _config(image: tuple[int, int, int], sw: int, steps: int | None, **options: object) -> InferenceConfig:
    roi = options.pop("roi", (16, 16, 16))
    return make_inference_config(TINY, roi, image, sw, buffer_steps=steps, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("image", "roi", "overlap", "steps"),
    [
        ((48, 48, 48), (16, 16, 16), 0.0, 2),
        ((40, 48, 56), (16, 16, 16), 0.25, 3),
        ((32, 32, 64), (16, 16, 16), 0.5, 5),
        ((24, 40, 72), (16, 16, 32), 0.25, 2),
        ((8, 20, 40), (16, 16, 16), 0.25, 2),  # padded along depth
        ((400, 512, 500), (96, 96, 96), 0.25, 3),  # a CT volume
        ((64, 64, 64), (96, 96, 96), 0.25, 1),  # one window, padded everywhere
    ],
)
def test_buffers_are_monais(
    image: tuple[int, int, int], roi: tuple[int, int, int], overlap: float, steps: int
) -> None:
    """Widths and windows of each buffer are what MONAI's ``_create_buffered_slices`` makes."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _create_buffered_slices, _get_scan_interval

    config = make_inference_config(TINY, roi, image, 1, overlap=overlap, buffer_steps=steps)
    padded = config.padded_shape
    interval = _get_scan_interval(padded, roi, 3, (overlap,) * 3)
    slices = dense_patch_slices(padded, roi, interval, return_slice=False)
    _, n_per_batch, b_slices, _ = _create_buffered_slices(slices, 1, 1, 2, steps)
    ends = [0] + [b[0] for b in b_slices]
    assert len(slices) == config.windows()
    assert config.buffer_windows() == tuple(np.diff(ends).tolist())
    assert config.buffer_widths() == tuple(int(end - start) for _, start, end in b_slices)
    assert len(config.buffer_widths()) == n_per_batch


def _predicted(runner: SlidingWindowBackend, config: InferenceConfig) -> float:
    """``buffered_peak`` over the segment peaks of the same inference probed without a buffer."""
    plain = runner.measure(replace(config, buffer_steps=None, sw_batch_size=config.window_batch))
    segments = {k: v for k, v in plain.phase_peaks_bytes.items() if k in ("forward", "stitch")}
    return buffered_peak(segments, config)


EXACT = [  # (image, sw_batch_size, out_channels, overlap, buffer_steps, stitch, precision)
    ((48, 48, 48), 2, 3, 0.0, 1, "cpu", "fp32"),  # buffers of 9 windows, batches of 2: held in every forward
    ((48, 48, 48), 2, 3, 0.0, 3, "cpu", "fp32"),
    ((40, 48, 56), 1, 2, 0.25, 2, "cpu", "fp32"),  # buffers 28, 28, 16 voxels wide
    ((32, 32, 48), 4, 3, 0.0, 1, "cpu", "fp32"),  # one batch a buffer: the buffer only while stitching
    ((32, 32, 48), 8, 3, 0.0, 2, "cpu", "fp32"),
    ((24, 40, 72), 2, 2, 0.25, 3, "cpu", "fp32"),  # a 16x16x32 window
    ((8, 20, 40), 1, 2, 0.25, 2, "cpu", "fp32"),  # padded along depth
    ((32, 48, 64), 2, 2, 0.25, 2, "cpu", "bf16-mixed"),  # the buffer stays float32 under autocast
    ((48, 48, 48), 2, 3, 0.0, 2, "gpu", "fp32"),  # the first buffer the widest: a later one counts
    ((40, 48, 56), 1, 2, 0.25, 2, "gpu", "fp32"),
    ((32, 32, 64), 4, 4, 0.5, 2, "gpu", "fp32"),
    ((16, 16, 80), 1, 5, 0.0, 3, "gpu", "fp32"),
    ((32, 48, 64), 2, 2, 0.25, 1, "gpu", "fp16-mixed"),
]


@pytest.mark.parametrize(("image", "sw", "classes", "overlap", "steps", "stitch", "precision"), EXACT)
def test_the_buffer_term_is_the_trace_peak_to_the_byte(
    runner: SlidingWindowBackend,
    image: tuple[int, int, int],
    sw: int,
    classes: int,
    overlap: float,
    steps: int,
    stitch: str,
    precision: str,
) -> None:
    config = _config(
        image, sw, steps, out_channels=classes, overlap=overlap, stitch=stitch, precision=precision
    )
    assert runner.measure(config).peak_allocated_bytes == _predicted(runner, config)


UPPER = [  # (image, sw_batch_size, buffer_steps, stitch)
    ((32, 32, 48), 3, 1, "cpu"),  # batches of 3 and 1 a buffer: the 1 runs beside only 1 held output
    ((32, 32, 48), 8, 3, "cpu"),  # 12 windows in batches of 8 and 4
    ((48, 48, 48), 2, 3, "gpu"),  # one whole-image buffer, filled before the output exists
    ((24, 40, 72), 2, 5, "gpu"),
    ((32, 32, 48), 3, 2, "gpu"),
]


@pytest.mark.parametrize(("image", "sw", "steps", "stitch"), UPPER)
def test_elsewhere_the_buffer_term_is_an_upper_bound(
    runner: SlidingWindowBackend, image: tuple[int, int, int], sw: int, steps: int, stitch: str
) -> None:
    """Over by less than the buffer and the batch's outputs together (measured: at most 29% of the peak
    of a network whose outputs are most of its memory)."""
    config = _config(image, sw, steps, out_channels=3, overlap=0.0, stitch=stitch)
    measured = runner.measure(config).peak_allocated_bytes
    predicted = _predicted(runner, config)
    outputs = 4 * config.out_channels * math.prod(config.roi) * config.window_batch
    assert measured <= predicted <= measured + buffer_bytes(config) + outputs


def test_batches_stop_at_a_buffers_end() -> None:
    """MONAI's batches never cross a buffer: the window batch is capped at the largest buffer's windows."""
    config = _config((32, 32, 48), 8, 1, overlap=0.0)
    assert config.buffer_windows() == (4, 4, 4) and config.window_batch == 4
    assert replace(config, buffer_steps=None).window_batch == 8
    assert (
        buffer_bytes(config) == 4 * 2 * 32 * 32 * 16 and buffer_bytes(replace(config, buffer_steps=None)) == 0
    )


def _shipped_unet(monkeypatch: pytest.MonkeyPatch, db_path: Path) -> Path:
    from memprobe.store.calibration_sources import shipped_inference_calibrations

    monkeypatch.delenv("MEMPROBE_NO_SHIPPED", raising=False)
    shipped = [c for c in shipped_inference_calibrations() if c.arch == "unet" and c.precision == "fp32"]
    from memprobe.store.database import Database

    with Database.open(db_path) as database:
        database.add_calibration(shipped[0])
    return db_path


def test_max_sw_batch_size_plans_the_buffer_as_its_own_term(
    monkeypatch: pytest.MonkeyPatch, db_path: Path
) -> None:
    from memprobe.inference.api import max_sw_batch_size

    db = _shipped_unet(monkeypatch, db_path)
    ask = dict(gpu_mem="6GiB", precision="fp32", db=db, device="trace", stitch="cpu", overlap=0.25)
    plan = max_sw_batch_size("unet", (96, 96, 96), (400, 512, 512), buffer_steps=1, **ask)  # type: ignore[arg-type]
    config = plan.config
    assert config.buffer_steps == 1 and plan.sliding_window_kwargs()["buffer_steps"] == 1
    assert config.sw_batch_size < max(config.buffer_windows())  # so the buffer is held while a batch runs
    terms = {name: (size, source) for name, size, source in plan.need.terms()}
    size, source = terms["buffer_steps buffer"]
    assert size == buffer_bytes(config) and "from the shapes" in source
    assert plan.need.total_bytes <= 6 * GIB
    # The calibrated peak is the same inference's without a buffer; the total is it and the buffer.
    unbuffered = inference_need(plan.calibration, resolve_arch("unet"), replace(config, buffer_steps=None))
    assert plan.need.allocated_bytes == pytest.approx(unbuffered.allocated_bytes)
    assert plan.need.reserved_bytes == pytest.approx(unbuffered.reserved_bytes + size)


def test_suggest_plans_buffer_steps_and_says_its_term(
    monkeypatch: pytest.MonkeyPatch, db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _shipped_unet(monkeypatch, db_path)
    result = invoke(capsys, "suggest", "--mode", "inference", "--arch", "unet", "--patch", "96", "96", "96",
                    "--max-image-shape", "400", "512", "512", "--gpu-mem", "8GiB", "--device", "trace",
                    "--db", str(db), "--buffer-steps", "2", "--stitch", "cpu", "--json")  # fmt: skip
    data = json.loads(result.out)
    assert result.code == 0 and data["buffer_steps"] == 2
    assert data["sliding_window_inference"]["buffer_steps"] == 2
    assert data["sliding_window_inference"]["buffer_dim"] == -1
    buffer = [t for t in data["need"]["terms"] if t["name"] == "buffer_steps buffer"]
    assert (
        buffer
        and "buffer_steps 2" in buffer[0]["source"]
        and buffer[0]["bytes"] == data["need"]["buffer_bytes"]
    )
    assert data["need"]["total_bytes"] <= 8 * GIB
