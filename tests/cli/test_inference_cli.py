"""``--mode inference`` of probe, calibrate and suggest: the answers, the kwargs, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from memprobe.cli.main import main
from memprobe.formula.calibration import FitQuality
from memprobe.formula.inference_calibration import INFERENCE, InferenceCalibration
from memprobe.store.database import Database

TINY = "tests.tiny_models:tiny_net"
GIB = 2**30


def _calibration(per_window_voxel: float = 400.0, precision: str = "bf16-mixed") -> InferenceCalibration:
    """Hand-made: 4 bytes per output and image voxel, ``per_window_voxel`` bytes of activations.

    At bf16-mixed, the precision every command defaults to with no GPU in view.
    """
    return InferenceCalibration(
        arch="unet",
        device="trace",
        precision=precision,
        optimizer=INFERENCE,
        deep_supervision=False,
        phase_coefficients={
            "forward": {
                "constant": 1e8,
                "input_voxels": per_window_voxel,
                "image_output": 4.0,
                "image_voxels": 4.0,
            },
            "stitch": {"constant": 1e8, "image_output": 4.0, "image_voxels": 4.0},
        },
        parameter_model={"constant": 1e6, "in_channels": 0.0, "out_channels": 0.0, "tokens": 0.0},
        quality=FitQuality(13, 0.01, 0.02, 4, 0.02, 0.04),
        created_at="2026-11-29T00:00:00+00:00",
        fit_range={
            "sw_batch_size": [1, 8],
            "voxels": [32**3, 96**3],
            "in_channels": [1, 3],
            "out_channels": [2, 16],
        },
    )


@pytest.fixture
def inference_db(db_path: Path) -> Path:
    with Database.open(db_path) as database:
        database.add_calibration(_calibration())
    return db_path


def _run(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the console entry point; its exit code (0 when it returns), stdout and stderr."""
    try:
        main(arguments)
        code = 0
    except SystemExit as exited:
        code = int(exited.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


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
    ].phase_coefficients == _calibration().phase_coefficients


def test_suggest_json_gives_sliding_window_kwargs_and_where_to_stitch(
    inference_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """24 GiB: a 16-class 600x512x512 output (9.4 GiB) with its count map and image fits on the GPU."""
    code, out, _ = _run(
        [*_suggest(inference_db, "--gpu-mem", "24GiB", "--overlap", "0.5", "--blend", "gaussian"), "--json"],
        capsys,
    )
    data = json.loads(out)
    assert code == 0 and data["stitch"] == "gpu"
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


def test_suggest_moves_stitching_to_the_cpu_when_the_output_does_not_fit(
    inference_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run([*_suggest(inference_db, "--gpu-mem", "12GiB"), "--yaml"], capsys)
    data = yaml.safe_load(out)
    assert code == 0 and data["stitch"] == "cpu" and data["sliding_window_inference"]["device"] == "cpu"
    assert data["nnunet_predictor"]["perform_everything_on_device"] is False
    assert any("must move to the CPU" in reason for reason in data["reasons"])


def test_suggest_table_shows_the_need_term_by_term(
    inference_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(_suggest(inference_db, "--gpu-mem", "24GiB"), capsys)
    assert code == 0 and "stitching on the GPU" in out and "cuDNN workspace" in out and "margin" in out


def test_suggest_reads_the_largest_image_of_an_nnunet_fingerprint(
    inference_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fingerprint = tmp_path / "dataset_fingerprint.json"
    fingerprint.write_text(
        json.dumps({"shapes_after_crop": [[1, 100, 200, 200], [1, 600, 512, 512], [1, 300, 512, 512]]})
    )
    arguments = [
        "suggest",
        "--mode",
        "inference",
        "--arch",
        "unet",
        "--patch",
        "96",
        "96",
        "96",
        "--out-channels",
        "16",
    ]
    arguments += [
        "--fingerprint",
        str(fingerprint),
        "--db",
        str(inference_db),
        "--gpu-mem",
        "24GiB",
        "--json",
    ]
    code, out, err = _run(arguments, capsys)
    assert code == 0, err
    assert json.loads(out)["image_shape"] == [600, 512, 512]


def test_probe_inference_says_when_it_pads(capsys: pytest.CaptureFixture[str]) -> None:
    """A window larger than the image is padded as MONAI does, and said."""
    code, out, _ = _run(
        [
            "probe",
            "--mode",
            "inference",
            "--arch",
            TINY,
            "--patch",
            "16",
            "16",
            "16",
            "--image-shape",
            "8",
            "32",
            "32",
            "--device",
            "trace",
        ],
        capsys,
    )
    assert code == 0 and "pads the image to 16x32x32" in out


def test_probe_inference_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        [
            "probe",
            "--mode",
            "inference",
            "--arch",
            TINY,
            "--patch",
            "16",
            "16",
            "16",
            "--image-shape",
            "32",
            "32",
            "32",
            "--sw-batch-size",
            "2",
            "--stitch",
            "cpu",
            "--overlap",
            "0",
            "--device",
            "trace",
            "--json",
        ],
        capsys,
    )
    data = json.loads(out)
    assert code == 0 and data["mode"] == "inference" and data["peak_allocated_bytes"] > 0
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
    code, out, err = _run(
        ["probe", "--mode", "inference", "--arch", TINY, "--patch", "16", "16", "16", *extra], capsys
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0] and "Traceback" not in err + out


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
    code, _, err = _run([*_suggest(inference_db, "--gpu-mem", "24GiB"), *extra], capsys)
    assert code == 2 and fragment in err


def test_inference_options_need_inference_mode(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(
        ["probe", "--arch", TINY, "--patch", "16", "16", "16", "--image-shape", "32", "32", "32"], capsys
    )
    assert code == 2 and "--image-shape needs --mode inference" in err


def test_calibrate_inference_refuses_training_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["calibrate", "--mode", "inference", "--arch", TINY, "--optimizer", "sgd"], capsys)
    assert code == 2 and "--optimizer" in err


@pytest.mark.slow
def test_calibrate_inference_stores_apart_and_suggest_answers_from_it(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trace inference calibration of a tiny model: reported, stored in its own table, used by suggest."""
    code, out, err = _run(
        [
            "calibrate",
            "--mode",
            "inference",
            "--arch",
            TINY,
            "--device",
            "trace",
            "--db",
            str(db_path),
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["mode"] == "inference" and len(data["measurements"]) == 17
    assert data["calibration"]["optimizer"] == "inference"
    with Database.open(db_path) as database:
        assert database.calibrations() == [] and [c.arch for c in database.inference_calibrations()] == [TINY]
    code, out, err = _run(
        [
            "suggest",
            "--mode",
            "inference",
            "--arch",
            TINY,
            "--patch",
            "32",
            "32",
            "32",
            "--image-shape",
            "256",
            "256",
            "256",
            "--out-channels",
            "4",
            "--gpu-mem",
            "8GiB",
            "--device",
            "trace",
            "--db",
            str(db_path),
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["calibration"]["device"] == "trace"


def test_db_list_shows_inference_calibrations(inference_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["db", "list", "--db", str(inference_db), "--json"], capsys)
    assert code == 0 and [(c["arch"], c["optimizer"]) for c in json.loads(out)] == [("unet", "inference")]
    assert [c["predictor"] for c in json.loads(out)] == ["monai"]
    code, out, _ = _run(["db", "list", "--db", str(inference_db), "--no-shipped"], capsys)
    [row] = [line for line in out.splitlines() if line.startswith("| unet")]
    assert code == 0 and "monai" in row.split()  # the step column names the sliding window measured


def test_calibrate_inference_refuses_sizes_it_chooses_itself(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(
        ["calibrate", "--mode", "inference", "--arch", TINY, "--image-shape", "64", "64", "64"], capsys
    )
    assert code == 2 and "--image-shape is not for calibrate" in err


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
    code, _, err = _run(
        [
            "calibrate",
            "--mode",
            "inference",
            "--arch",
            TINY,
            "--device",
            "trace",
            "--isolate",
            "--divisor",
            "8",
            "8",
            "8",
        ],
        capsys,
    )
    assert code == 0, err
    assert asked["isolate"] is True and asked["device"] == "trace"
    assert (
        str(asked["arch"]).startswith(TINY) and str(asked["arch"]) != TINY
    )  # the rule travels with the name
