"""The inference formula on trace: held-out accuracy, and a whole-CT plan whose configuration a trace probe fits.

One trace calibration of MONAI's UNet (about a minute on 2 cores) answers every test here.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from memprobe.core.archs.registry import resolve_arch
from memprobe.inference.calibration_run import InferenceCalibrationReport

GIB = 2**30
CT = (600, 512, 512)  # an abdominal CT, 16 classes


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> InferenceCalibrationReport:
    from memprobe.inference.api import calibrate_inference

    db = Path(tmp_path_factory.mktemp("inference")) / "calibrations.sqlite"
    return calibrate_inference("unet", device="trace", db=db)


@pytest.mark.slow
def test_held_out_images_batches_and_classes_within_3_and_5_percent(
    report: InferenceCalibrationReport,
) -> None:
    """Held-out shapes, window batches and class counts: 3% median and 5% worst on trace (the issue's bar)."""
    spec = resolve_arch("unet")
    errors = [
        abs(report.calibration.inference_peak_bytes(spec, m.config) - m.peak_allocated_bytes)
        / m.peak_allocated_bytes
        for m in report.heldout
    ]
    fitted_images = {m.config.image_shape for m in report.fitted}
    assert len(errors) == 4 and not fitted_images & {m.config.image_shape for m in report.heldout}
    assert statistics.median(errors) <= 0.03 and max(errors) <= 0.05, errors
    quality = report.calibration.quality
    assert quality.heldout_max_relative_error == pytest.approx(max(errors))


@pytest.mark.slow
def test_a_16_class_ct_plan_says_where_to_stitch_and_a_trace_probe_of_it_fits(
    report: InferenceCalibrationReport,
) -> None:
    """600x512x512, 16 classes, 24 GiB: the plan names the stitch device; the planned run, traced, fits."""
    from memprobe.backends.sliding_window import SlidingWindowBackend
    from memprobe.core.inference_config import StitchDevice, make_inference_config
    from memprobe.planning.inference_plan import plan_inference

    spec = resolve_arch("unet")
    base = make_inference_config("unet", (160, 160, 160), CT, 1, out_channels=16, overlap=0.25)
    plan = plan_inference(report.calibration, spec, base, 24 * GIB)
    stitch_reason = next(r for r in plan.reasons if "stitch" in r)
    if plan.config.stitch is StitchDevice.GPU:
        assert plan.gpu_stitch_need.total_bytes <= 24 * GIB and "on the GPU" in stitch_reason
    else:
        assert plan.gpu_stitch_need.total_bytes > 24 * GIB and "must move to the CPU" in stitch_reason
    assert plan.need.total_bytes <= 24 * GIB and plan.config.sw_batch_size >= 1
    assert plan.next_need is None or plan.next_need.total_bytes > 24 * GIB

    measured = SlidingWindowBackend("trace").measure(plan.config)
    overheads = plan.need.fixed_bytes
    assert measured.peak_reserved_bytes + overheads <= 24 * GIB
    assert measured.peak_allocated_bytes <= plan.need.allocated_bytes + plan.need.margin_bytes


@pytest.mark.slow
def test_a_smaller_card_moves_the_ct_s_stitching_to_the_cpu(report: InferenceCalibrationReport) -> None:
    """The 16-class output of 600x512x512 float32 voxels alone is 9.4 GiB: at 12 GiB it must stitch on the CPU."""
    from memprobe.core.inference_config import StitchDevice, make_inference_config
    from memprobe.planning.inference_plan import plan_inference

    base = make_inference_config("unet", (96, 96, 96), CT, 1, out_channels=16)
    plan = plan_inference(report.calibration, resolve_arch("unet"), base, 12 * GIB)
    assert plan.config.stitch is StitchDevice.CPU
    assert any("must move to the CPU" in reason for reason in plan.reasons)
    assert (
        plan.sliding_window_kwargs()["device"] == "cpu"
        and plan.sliding_window_kwargs()["sw_device"] == "cuda"
    )
    assert plan.nnunet_predictor_kwargs()["perform_everything_on_device"] is False


@pytest.mark.slow
def test_a_rerun_reuses_every_stored_point_through_the_shared_log(report: InferenceCalibrationReport) -> None:
    """Inference measures through training's MeasurementLog: a second run measures nothing and fits the same."""
    from memprobe.inference.api import calibrate_inference

    seen: list[bool] = []
    again = calibrate_inference(
        "unet", device="trace", db=report.stored_in, on_measurement=lambda m, reused: seen.append(reused)
    )
    assert report.measured == len(report.fitted) + len(report.heldout) and report.reused == 0
    assert (
        (again.measured, again.reused) == (0, report.measured) and all(seen) and len(seen) == report.measured
    )
    assert again.calibration.phase_coefficients == report.calibration.phase_coefficients
    assert again.calibration.fit_range == report.calibration.fit_range
