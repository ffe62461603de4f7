"""``--mode inference`` of probe, calibrate and suggest: the answers, the kwargs, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from memprobe.store.database import Database
from tests.helpers import invoke, make_inference_calibration

TINY = "tests.tiny_models:tiny_net"
GIB = 2**30
PROBE = ("probe", "--mode", "inference", "--arch", TINY, "--patch", "16", "16", "16")
CALIBRATE = ("calibrate", "--mode", "inference", "--arch", TINY)


@pytest.fixture
def inference_db(db_path: Path) -> Path:
    with Database.open(db_path) as database:
        database.add_calibration(make_inference_calibration())
    return db_path


def _suggest(db: Path, *extra: str) -> list[str]:
    return [
        "suggest",
        "--mode",
        "inference",
        "--arch",
        "unet",
        "--patch",
        "96",
        "96",
        "96",
        "--max-image-shape",
        "600",
        "512",
        "512",
        "--out-channels",
        "16",
        "--db",
        str(db),
        *extra,
    ]


def test_inference_calibrations_are_stored_apart_from_training(inference_db: Path) -> None:
    with Database.open(inference_db) as database:
        assert database.calibrations() == []
        stored = database.inference_calibrations()
    assert [c.arch for c in stored] == ["unet"] and stored[
        0
    ].phase_coefficients == make_inference_calibration().phase_coefficients


def test_suggest_json_gives_sliding_window_kwargs_and_where_to_stitch(
    inference_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """24 GiB: a 16-class 600x512x512 output (9.4 GiB) with its count map and image fits on the GPU."""
    result = invoke(
        capsys,
        *_suggest(inference_db, "--gpu-mem", "24GiB", "--overlap", "0.5", "--blend", "gaussian", "--json"),
    )
    data = json.loads(result.out)
    assert result.code == 0 and data["stitch"] == "gpu"
    kwargs = data["sliding_window_inference"]
    assert kwargs == {
        "roi_size": [96, 96, 96],
        "sw_batch_size": data["sw_batch_size"],
        "overlap": 0.5,
        "mode": "gaussian",
        "sw_device": "cuda",
        "device": "cuda",
    }
    assert data["need"]["total_bytes"] <= 24 * GIB < data["next_batch_total_bytes"]
    assert {t["name"] for t in data["need"]["terms"]} >= {"allocated (tensors)", "CUDA context", "margin"}
    assert data["calibration"]["step"] == "monai"  # the sliding window it measured, not "inference"


def test_suggest_moves_stitching_to_the_cpu_when_the_output_does_not_fit(
    inference_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = invoke(capsys, *_suggest(inference_db, "--gpu-mem", "12GiB", "--yaml"))
    data = yaml.safe_load(result.out)
    assert result.code == 0 and data["stitch"] == "cpu"
    assert data["sliding_window_inference"]["device"] == "cpu"
    assert data["nnunet_predictor"]["perform_everything_on_device"] is False
    assert any("must move to the CPU" in reason for reason in data["reasons"])


def test_suggest_table_shows_the_need_term_by_term(
    inference_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = invoke(capsys, *_suggest(inference_db, "--gpu-mem", "24GiB"))
    assert result.code == 0 and "stitching on the GPU" in result.out and "(step monai," in result.out
    assert "cuDNN workspace" in result.out and "margin" in result.out


def test_suggest_reads_the_largest_image_of_an_nnunet_fingerprint(
    inference_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fingerprint = tmp_path / "dataset_fingerprint.json"
    fingerprint.write_text(
        json.dumps({"shapes_after_crop": [[1, 100, 200, 200], [1, 600, 512, 512], [1, 300, 512, 512]]})
    )
    result = invoke(capsys, "suggest", "--mode", "inference", "--arch", "unet", "--patch", "96", "96", "96",
                    "--out-channels", "16", "--fingerprint", str(fingerprint), "--db", str(inference_db),
                    "--gpu-mem", "24GiB", "--json")  # fmt: skip
    assert result.code == 0, result.err
    assert json.loads(result.out)["image_shape"] == [600, 512, 512]


def test_probe_inference_says_when_it_pads(capsys: pytest.CaptureFixture[str]) -> None:
    """A window larger than the image is padded as MONAI does, and said."""
    result = invoke(capsys, *PROBE, "--image-shape", "8", "32", "32", "--device", "trace")
    assert result.code == 0 and "pads the image to 16x32x32" in result.out


def test_probe_inference_json(capsys: pytest.CaptureFixture[str]) -> None:
    result = invoke(capsys, *PROBE, "--image-shape", "32", "32", "32", "--sw-batch-size", "2", "--stitch", "cpu",
                    "--overlap", "0", "--device", "trace", "--json")  # fmt: skip
    data = json.loads(result.out)
    assert result.code == 0 and data["mode"] == "inference" and data["peak_allocated_bytes"] > 0
    assert data["sliding_window_inference"]["device"] == "cpu" and data["windows"] == 8


BAD = [
    pytest.param(
        ["--image-shape", "0", "64", "64"], "--image-shape': '0' is not a positive whole number", id="zero"
    ),
    pytest.param(
        ["--image-shape", "64", "6.5", "64"],
        "--image-shape': '6.5' is not a positive whole number",
        id="fraction",
    ),
    pytest.param(
        ["--image-shape", "64", "64", "64", "--optimizer", "sgd"],
        "--optimizer is a training option",
        id="optimizer",
    ),
    pytest.param(
        ["--image-shape", "64", "64", "64", "--batch", "4"], "--batch is a training option", id="batch"
    ),
    pytest.param([], "give the whole image as --image-shape", id="no-image"),
]


@pytest.mark.parametrize(("extra", "fragment"), BAD)
def test_bad_probe_input_is_one_line_exit_2(
    extra: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = invoke(capsys, *PROBE, *extra)
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and fragment in lines[0]
    assert "Traceback" not in result.err + result.out


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--effective-batch", "8"], "--effective-batch is a training option"),
        (["--optimizer", "sgd"], "--optimizer is a training option"),
        (["--sw-batch-size", "4"], "--sw-batch-size is what suggest plans"),
    ],
)
def test_bad_suggest_input_is_exit_2(
    inference_db: Path, extra: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = invoke(capsys, *_suggest(inference_db, "--gpu-mem", "24GiB", *extra))
    assert result.code == 2 and fragment in result.err


def test_inference_options_need_inference_mode(capsys: pytest.CaptureFixture[str]) -> None:
    result = invoke(
        capsys, "probe", "--arch", TINY, "--patch", "16", "16", "16", "--image-shape", "32", "32", "32"
    )
    assert result.code == 2 and "--image-shape needs --mode inference" in result.err


def test_calibrate_inference_refuses_training_options(capsys: pytest.CaptureFixture[str]) -> None:
    result = invoke(capsys, *CALIBRATE, "--optimizer", "sgd")
    assert result.code == 2 and "--optimizer" in result.err


@pytest.mark.slow
def test_calibrate_inference_stores_apart_and_suggest_answers_from_it(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trace inference calibration of a tiny model: reported, stored in its own table, used by suggest."""
    result = invoke(capsys, *CALIBRATE, "--device", "trace", "--db", str(db_path), "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["mode"] == "inference" and len(data["measurements"]) == 17
    assert data["calibration"]["optimizer"] == "inference"
    with Database.open(db_path) as database:
        assert database.calibrations() == [] and [c.arch for c in database.inference_calibrations()] == [TINY]
    result = invoke(capsys, "suggest", "--mode", "inference", "--arch", TINY, "--patch", "32", "32", "32",
                    "--image-shape", "256", "256", "256", "--out-channels", "4", "--gpu-mem", "8GiB",
                    "--device", "trace", "--db", str(db_path), "--json")  # fmt: skip
    assert result.code == 0, result.err
    assert json.loads(result.out)["calibration"]["device"] == "trace"


def test_db_list_shows_inference_calibrations(inference_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    listed = invoke(capsys, "db", "list", "--db", str(inference_db), "--json")
    assert listed.code == 0
    assert [(c["arch"], c["optimizer"]) for c in json.loads(listed.out)] == [("unet", "inference")]
    assert [c["predictor"] for c in json.loads(listed.out)] == ["monai"]
    table = invoke(capsys, "db", "list", "--db", str(inference_db), "--no-shipped")
    [row] = [line for line in table.out.splitlines() if line.startswith("| unet")]
    assert table.code == 0 and "monai" in row.split()  # the step column names the sliding window measured


@pytest.mark.parametrize(
    "option",
    [
        ("--image-shape", "64", "64", "64"),
        ("--sw-batch-size", "2"),
        ("--overlap", "0.5"),
        ("--blend", "gaussian"),
        ("--stitch", "cpu"),
        ("--mirror-axes", "012"),
        ("--buffer-steps", "2"),
    ],
)
def test_calibrate_inference_refuses_sizes_it_chooses_itself(
    option: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    """Declared with the reason (ModeOption.refused): refused by name, exit 2, before anything is measured."""
    result = invoke(capsys, *CALIBRATE, *option)
    assert result.code == 2 and result.error_lines == [
        f"memprobe: error: {option[0]} is not for calibrate: it measures its own windows, images, batches and mirroring"
    ]
    in_training = invoke(capsys, "calibrate", "--arch", TINY, *option)
    assert in_training.code == 2 and f"{option[0]} needs --mode inference" in in_training.err


def test_calibrate_inference_passes_isolate_and_a_shape_rule_to_the_library(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--isolate and --divisor are taken in inference mode (they were training's only) and reach the one library call."""
    import memprobe.inference.api as inference_api

    asked: dict[str, object] = {}

    def calibrate(arch: str, precision: str, **options: object) -> None:
        asked.update(options, arch=arch)
        raise SystemExit(0)  # stop before rendering: what was asked is the test

    monkeypatch.setattr(inference_api, "calibrate_inference", calibrate)
    result = invoke(capsys, *CALIBRATE, "--device", "trace", "--isolate", "--divisor", "8", "8", "8")
    assert result.code == 0, result.err
    assert asked["isolate"] is True and asked["device"] == "trace"
    assert (
        str(asked["arch"]).startswith(TINY) and str(asked["arch"]) != TINY
    )  # the rule travels with the name


def test_a_crashed_calibration_point_is_shown_as_failed_with_its_error() -> None:
    """With --isolate a point can crash: the report says "failed" and why, not "OOM"."""
    from memprobe.cli.inference import _calibration_report
    from memprobe.core.archs.registry import resolve_arch
    from memprobe.core.inference_config import make_inference_config
    from memprobe.core.inference_measurement import InferenceMeasurement
    from memprobe.core.measurement import Environment
    from memprobe.inference.calibration_run import InferenceCalibrationReport

    trace = Environment("trace", "trace")
    config = make_inference_config("unet", (32, 32, 32), (64, 64, 64), 1)
    ran = InferenceMeasurement(config, trace, 10**8, phase_peaks_bytes={"forward": 10**8})
    crashed = InferenceMeasurement(config, trace, None, error="the probe's process was killed by SIGSEGV")
    oom = InferenceMeasurement(config, trace, None, oom=True)
    report = InferenceCalibrationReport(make_inference_calibration(), (ran, crashed), (oom,), measured=3)
    rendered = _calibration_report(report, resolve_arch("unet"), "db.sqlite")
    assert [row["allocated"] for row in rendered.tables[0][1]][1:] == ["failed", "OOM"]
    assert any("failed, left out of the fit" in note and "SIGSEGV" in note for note in rendered.notes)
