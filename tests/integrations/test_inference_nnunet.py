"""nnU-Net's predictor as an inference engine: its reproduction against nnU-Net's own code, trace
against real CPU execution, its calibration and plan; MONAI's buffer_steps."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from memprobe.backends.allocation_tracker import AllocationTracker
from memprobe.backends.sliding_window import SlidingWindowBackend
from memprobe.core.archs.registry import resolve_arch
from memprobe.core.inference_config import make_inference_config
from memprobe.inference.calibration_run import InferenceCalibrationReport
from tests.helpers import invoke
from tests.tiny_models import tiny_net

needs_nnunet = pytest.mark.skipif(
    importlib.util.find_spec("nnunetv2") is None, reason="nnunetv2 is not installed"
)

TINY = "tests.tiny_models:tiny_net"
GIB = 2**30


def _nnunet(**kwargs: Any) -> Any:
    return make_inference_config(TINY, (16, 16, 16), kwargs.pop("image", (32, 32, 40)), predictor="nnunet",
                                 precision="fp16-mixed", out_channels=3, **kwargs)  # fmt: skip


@needs_nnunet
@pytest.mark.parametrize(
    ("image", "step", "gaussian", "mirror_axes"),
    [((32, 32, 40), 0.5, True, (0, 1, 2)), ((24, 40, 16), 0.75, False, ()), ((10, 20, 20), 1.0, True, (2,))],
)
def test_the_reproduction_is_nnunets_sliding_window_on_real_cpu_tensors(
    monkeypatch: pytest.MonkeyPatch,
    image: tuple[int, int, int],
    step: float,
    gaussian: bool,
    mirror_axes: tuple[int, ...],
) -> None:
    """Same logits and same tracked peak as nnunetv2's own function (its producer thread made synchronous)."""
    import nnunetv2.inference.predict_from_raw_data as nnunet_predict

    from memprobe.integrations.nnunet import predictor as ours

    torch.manual_seed(0)
    roi = (16, 16, 16)
    network = tiny_net(1, 3).eval()
    padded = tuple(max(i, r) for i, r in zip(image, roi, strict=True))
    data = torch.randn((1, *padded))
    slicers = ours.sliding_window_slicers(roi, padded, step)
    weights = ours.gaussian_map(roi, torch.device("cpu")) if gaussian else None
    cpu = torch.device("cpu")

    def theirs() -> torch.Tensor:
        predictor = nnunet_predict.nnUNetPredictor(
            tile_step_size=step, use_gaussian=gaussian, use_mirroring=bool(mirror_axes),
            perform_everything_on_device=False, device=cpu, allow_tqdm=False,
        )  # fmt: skip
        predictor.network = network
        predictor.configuration_manager = SimpleNamespace(patch_size=list(roi))
        predictor.label_manager = SimpleNamespace(num_segmentation_heads=3)
        predictor.allowed_mirroring_axes = mirror_axes
        monkeypatch.setattr(nnunet_predict, "Queue", _SyncQueue)
        monkeypatch.setattr(nnunet_predict, "Thread", _SyncThread)
        return predictor._internal_predict_sliding_window_return_logits(data, slicers, True)  # type: ignore[no-any-return]

    def reproduced() -> torch.Tensor:
        return ours.predict_sliding_window(
            network,
            data,
            slicers,
            classes=3,
            gaussian=weights,
            compute=cpu,
            results=cpu,
            mirror_axes=mirror_axes,
        )

    (expected, expected_peak), (got, got_peak) = (
        _tracked(run, network, data, weights) for run in (theirs, reproduced)
    )
    assert expected.dtype == got.dtype == torch.half
    assert torch.equal(expected, got)
    assert got_peak == expected_peak


class _SyncQueue:
    """nnU-Net's Queue(maxsize=2) filled by memprobe's synchronous producer (``WindowQueue``)."""

    def __init__(self, maxsize: int) -> None:
        self.windows: Any = None

    def get(self) -> Any:
        return self.windows.get()

    def task_done(self) -> None:
        pass

    def join(self) -> None:
        pass


class _SyncThread:
    """nnU-Net's producer thread: hands its data and slicers to the queue, which clones on ``get``."""

    def __init__(self, target: Callable[..., None], args: tuple[Any, ...], daemon: bool) -> None:
        self.args = args

    def start(self) -> None:
        from memprobe.integrations.nnunet.predictor import WindowQueue

        data, slicers, queue = self.args
        queue.windows = WindowQueue(data, slicers, torch.device("cpu"))


def _tracked(
    run: Callable[[], torch.Tensor],
    network: torch.nn.Module,
    data: torch.Tensor,
    weights: torch.Tensor | None,
) -> tuple[torch.Tensor, int]:
    tracker = AllocationTracker()
    tracker.track_module(network)
    tracker.track(data)
    if weights is not None:
        tracker.track(weights)
    with torch.inference_mode(), tracker:
        output = run()
    return output, tracker.peak_bytes


@needs_nnunet
def test_window_count_is_nnunets() -> None:
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    for image, roi, step in [((200, 300, 300), (64, 64, 64), 0.5), ((201, 317, 90), (64, 48, 80), 0.75)]:
        config = make_inference_config("unet", roi, image, predictor="nnunet", precision="fp16-mixed",
                                       overlap=1 - step)  # fmt: skip
        steps = compute_steps_for_sliding_window(config.padded_shape, roi, step)
        assert config.windows() == math.prod(len(s) for s in steps)


@needs_nnunet
@pytest.mark.parametrize(
    "options",
    [
        {"stitch": "gpu", "blend": "gaussian"},  # nnU-Net's defaults: mirroring on all three axes
        {"stitch": "cpu", "blend": "gaussian", "mirror_axes": (1, 2)},
        {"stitch": "gpu", "blend": "constant", "mirror_axes": (), "image": (10, 40, 20)},  # padded
    ],
)
def test_trace_peak_equals_real_cpu_execution_for_nnunets_predictor(options: dict[str, Any]) -> None:
    """The issue's check for nnU-Net's predictor: the same peak, segments and reserve on fakes as executed."""
    config = _nnunet(overlap=0.0, **options)
    trace, cpu = (SlidingWindowBackend(kind).measure(config) for kind in ("trace", "cpu"))
    assert trace.ok and cpu.ok
    assert trace.peak_allocated_bytes == cpu.peak_allocated_bytes
    assert trace.phase_peaks_bytes == cpu.phase_peaks_bytes
    assert trace.peak_reserved_bytes == cpu.peak_reserved_bytes


@needs_nnunet
def test_results_off_the_device_leave_nnunets_half_precision_buffers_on_the_host() -> None:
    """perform_everything_on_device=False: no logits (2 bytes a class-voxel), count map or input on the GPU."""
    on_gpu, on_cpu = (
        SlidingWindowBackend("trace").measure(_nnunet(stitch=s, mirror_axes=(), overlap=0.0))
        for s in ("gpu", "cpu")
    )
    voxels = 32 * 32 * 40
    # logits (half), count map (half) and input (float); at the end the infinity check's bool too
    difference = on_gpu.peak_allocated_bytes - on_cpu.peak_allocated_bytes
    assert voxels * (3 * 2 + 2 + 4) <= difference <= voxels * (3 * 3 + 2 + 4)


@needs_nnunet
def test_nnunet_settings_are_stored_and_keep_measurements_apart(tmp_path: Path) -> None:
    from memprobe.store.database import Database

    runner = SlidingWindowBackend("trace")
    mirrored = _nnunet(mirror_axes=(0, 1, 2), overlap=0.5)
    plain = make_inference_config(TINY, (16, 16, 16), (32, 32, 40), 1, overlap=0.5, out_channels=3)
    with Database.open(tmp_path / "db.sqlite") as db:
        db.add_measurement(runner.measure(plain))  # a MONAI row (its settings: MONAI's)
        assert db.find_measurement(mirrored, runner.environment()) is None
        db.add_measurement(runner.measure(mirrored))
        found = db.find_measurement(mirrored, runner.environment())
        assert found is not None and found.config == mirrored
        assert db.find_measurement(plain, runner.environment()).config == plain  # type: ignore[union-attr]
        unmirrored = _nnunet(mirror_axes=(), overlap=0.5)
        assert db.find_measurement(unmirrored, runner.environment()) is None


@pytest.fixture(scope="module")
def nnunet_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, InferenceCalibrationReport]:
    """One trace calibration of nnU-Net's predictor with the tiny network (about half a minute on 2 cores)."""
    from memprobe.inference.api import calibrate_inference

    db = Path(tmp_path_factory.mktemp("nnunet")) / "calibrations.sqlite"
    return db, calibrate_inference(TINY, device="trace", db=db, predictor="nnunet")


@needs_nnunet
def test_nnunet_held_out_images_within_3_and_5_percent(
    nnunet_db: tuple[Path, InferenceCalibrationReport],
) -> None:
    """Held-out images, classes, tile steps and mirroring: 3% median and 5% worst on trace."""
    report = nnunet_db[1]
    spec = resolve_arch(TINY)
    errors = [
        abs(report.calibration.inference_peak_bytes(spec, m.config) - m.peak_allocated_bytes)
        / m.peak_allocated_bytes
        for m in report.heldout
    ]
    assert len(errors) == 4 and not {m.config.image_shape for m in report.fitted} & {
        m.config.image_shape for m in report.heldout
    }
    assert statistics.median(errors) <= 0.03 and max(errors) <= 0.05, errors
    assert report.calibration.predictor.value == "nnunet"


def _suggest(db: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    result = invoke(capsys, "suggest", "--mode", "inference", "--predictor", "nnunet", "--arch", TINY, "--patch",
                    "64", "64", "64", "--max-image-shape", "600", "512", "512", "--out-channels", "16", "--device",
                    "trace", "--db", str(db), "--json", *extra)  # fmt: skip
    assert result.code == 0, result.err
    return json.loads(result.out)  # type: ignore[no-any-return]


@needs_nnunet
def test_suggest_says_whether_perform_everything_on_device_fits(
    nnunet_db: tuple[Path, InferenceCalibrationReport], capsys: pytest.CaptureFixture[str]
) -> None:
    """16 classes of 600x512x512: half-precision logits are 4.7 GiB; on 24 GiB on the device, on 4 GiB not."""
    db = nnunet_db[0]
    roomy, tight = _suggest(db, capsys, "--gpu-mem", "24GiB"), _suggest(db, capsys, "--gpu-mem", "4GiB")
    assert roomy["nnunet_predictor"] == {
        "tile_step_size": 0.5,
        "use_gaussian": True,
        "use_mirroring": True,
        "perform_everything_on_device": True,
        "device": "cuda",
    }
    assert roomy["nnunet_allowed_mirroring_axes"] == [0, 1, 2] and roomy["sliding_window_inference"] is None
    assert tight["nnunet_predictor"]["perform_everything_on_device"] is False
    assert any("perform_everything_on_device must be False" in reason for reason in tight["reasons"])
    assert roomy["sw_batch_size"] == tight["sw_batch_size"] == 1


@needs_nnunet
def test_a_trace_probe_of_the_planned_configuration_fits(
    nnunet_db: tuple[Path, InferenceCalibrationReport],
) -> None:
    """The plan's predicted allocated peak for a mid-size image matches a trace probe of it within 5%."""
    from memprobe.inference.api import max_sw_batch_size

    plan = max_sw_batch_size(TINY, (64, 64, 64), (160, 192, 224), "8GiB", out_channels=5, db=nnunet_db[0],
                             device="trace", predictor="nnunet", mirror_axes=(2,))  # fmt: skip
    measured = SlidingWindowBackend("trace").measure(plan.config)
    assert measured.ok and plan.need.allocated_bytes <= plan.usable_bytes
    assert (
        abs(plan.need.allocated_bytes - measured.peak_allocated_bytes) <= 0.05 * measured.peak_allocated_bytes
    )


def test_without_nnunetv2_the_nnunet_predictor_is_exit_2_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # what find_spec reports for a package that is absent
    for command in (
        ["probe", "--mode", "inference", "--arch", TINY, "--patch", "16", "16", "16", "--image-shape", "32", "32", "32"],
        ["calibrate", "--mode", "inference", "--arch", TINY],
        ["suggest", "--mode", "inference", "--arch", TINY, "--patch", "16", "16", "16", "--max-image-shape", "32",
         "32", "32", "--gpu-mem", "8GiB"],
    ):  # fmt: skip
        result = invoke(capsys, *command, "--predictor", "nnunet", "--device", "trace")
        assert result.code == 2 and "pip install 'memprobe[nnunet]'" in result.err, result.err


_PROBE = ["probe", "--mode", "inference", "--arch", TINY, "--patch", "16", "16", "16", "--image-shape", "32", "32",
          "32", "--device", "trace"]  # fmt: skip


@pytest.mark.parametrize(
    ("option", "flag"),
    [(["--checkpointing"], "--checkpointing"), (["--step", "monai"], "--step"), (["--gpus", "2"], "--gpus")],
)
def test_training_only_options_are_refused_with_inference_mode(
    option: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = invoke(capsys, *_PROBE, *option)
    assert result.code == 2 and f"{flag} is a training option" in result.err


def test_nnunet_only_options_need_the_nnunet_predictor(capsys: pytest.CaptureFixture[str]) -> None:
    result = invoke(capsys, *_PROBE, "--mirror-axes", "012")
    assert result.code == 2 and "--predictor nnunet" in result.err
    result = invoke(capsys, *_PROBE, "--predictor", "nnunet", "--sw-batch-size", "2")
    assert result.code == 2 and "one window at a time" in result.err
    result = invoke(capsys, *_PROBE, "--predictor", "nnunet", "--precision", "bf16-mixed")
    assert result.code == 2 and "fp16" in result.err


def test_buffer_steps_adds_its_slabs_to_the_gpu_and_is_passed_through() -> None:
    """MONAI's buffer_steps, stitching on the CPU: each step keeps a slab (classes x roi along the last axis
    x the rest of the image, float32) on the GPU; the argument is recorded and passed to MONAI."""
    runner = SlidingWindowBackend("trace")
    config = lambda steps: make_inference_config(TINY, (16, 16, 16), (48, 48, 48), 2, stitch="cpu", out_channels=3,
                                                 overlap=0.0, buffer_steps=steps)  # fmt: skip
    peaks = [runner.measure(config(steps)).peak_allocated_bytes for steps in (None, 1, 2)]
    slab = 3 * 48 * 48 * 16 * 4
    assert peaks[1] - peaks[0] == slab and peaks[2] - peaks[0] == 2 * slab
    assert config(2).sliding_window_kwargs()["buffer_steps"] == 2
    assert runner.measure(config(2)).to_dict()["buffer_steps"] == 2


@needs_nnunet
def test_db_merge_carries_the_settings_column(tmp_path: Path) -> None:
    """A database with nnU-Net rows merged with one without the column: both kinds kept, apart."""
    from memprobe.store.database import Database
    from memprobe.store.merge import merge_databases

    runner = SlidingWindowBackend("trace")
    nnunet = _nnunet(mirror_axes=(), overlap=0.0, image=(32, 32, 32))
    monai = make_inference_config(TINY, (16, 16, 16), (32, 32, 32), 1, overlap=0.0, out_channels=3)
    for name, config in (("monai", monai), ("nnunet", nnunet)):
        with Database.open(tmp_path / f"{name}.sqlite") as db:
            db.add_measurement(runner.measure(config))
    merge_databases([tmp_path / "monai.sqlite", tmp_path / "nnunet.sqlite"], tmp_path / "out.sqlite")
    with Database.open(tmp_path / "out.sqlite") as db:
        assert {m.config for m in db.inference_measurements()} == {monai, nnunet}


@needs_nnunet
def test_settings_round_trip_on_postgresql(postgres_url: str) -> None:
    """The settings column is added and read the same way on a PostgreSQL server."""
    from memprobe.store.database import Database

    runner = SlidingWindowBackend("trace")
    monai = make_inference_config(TINY, (16, 16, 16), (32, 32, 32), 1, overlap=0.0, out_channels=3)
    nnunet = _nnunet(mirror_axes=(), overlap=0.0, image=(32, 32, 32))
    with Database.open(postgres_url) as db:
        db.add_measurement(runner.measure(monai))
        assert db.find_measurement(nnunet, runner.environment()) is None
        db.add_measurement(runner.measure(nnunet))
        for config in (monai, nnunet):
            assert db.find_measurement(config, runner.environment()).config == config  # type: ignore[union-attr]
