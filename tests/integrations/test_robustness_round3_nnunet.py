"""nnU-Net inputs are checked before nnU-Net sees them; numbers read from files are finite (round 3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import invoke
from tests.nnunet_dataset import NAME, make_dataset

pytest.importorskip("nnunetv2")

SPACINGS, SHAPES = [[3.0, 0.8, 0.8]] * 4, [[80, 300, 300]] * 4


@pytest.fixture
def dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A valid dataset nnU-Net (already imported) points at; nnU-Net's planner must never run."""
    import nnunetv2.paths
    from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner as planner
    from nnunetv2.utilities import dataset_name_id_conversion as conversion

    import memprobe.integrations.nnunet.planner as memprobe_planner

    raw, preprocessed = make_dataset(tmp_path, SPACINGS, SHAPES)
    for module in (nnunetv2.paths, planner, conversion):
        monkeypatch.setattr(module, "nnUNet_raw", str(raw), raising=False)
        monkeypatch.setattr(module, "nnUNet_preprocessed", str(preprocessed), raising=False)

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("nnU-Net's planner ran on a bad input")

    monkeypatch.setattr(memprobe_planner, "measured_planner", never)
    return raw / NAME / "dataset.json", preprocessed / NAME / "dataset_fingerprint.json"


def _plan(capsys: pytest.CaptureFixture[str], *extra: str) -> Any:
    return invoke(capsys, "nnunet", "plan", "-d", NAME, "--gpu-mem", "24GiB", *extra)


def _edit(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("which", "change", "message"),
    [
        (0, lambda d: d.pop("labels"), "'labels'"),
        (0, lambda d: d.update(numTraining="4"), "'numTraining'"),
        (0, lambda d: d.update(channel_names=[]), "'channel_names'"),
        (1, lambda d: d.update(spacings=[[0.8, 0.8]] * 4, shapes_after_crop=[[300, 300]] * 4), "2D"),
        (1, lambda d: d.update(spacings=[[0.0, 0.8, 0.8]] * 4), "'spacings'"),
        (1, lambda d: d.update(shapes_after_crop=[["80", 300, 300]] * 4), "fingerprint"),
        (1, lambda d: d.pop("foreground_intensity_properties_per_channel"), "foreground_intensity"),
    ],
)
def test_a_malformed_dataset_is_one_line_before_nnunet_runs(
    capsys: pytest.CaptureFixture[str], dataset: tuple[Path, Path], which: int, change: Any, message: str
) -> None:
    _edit(dataset[which], change)
    result = _plan(capsys)
    assert result.code == 2 and len(result.error_lines) == 1 and "Traceback" not in result.err, result.err
    assert message in result.error_lines[0]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_in_a_fingerprint_are_refused(
    capsys: pytest.CaptureFixture[str], dataset: tuple[Path, Path], number: str
) -> None:
    fingerprint = dataset[1]
    fingerprint.write_text(fingerprint.read_text().replace("[3.0, 0.8, 0.8]", f"[{number}, 0.8, 0.8]", 1))
    result = _plan(capsys)
    assert result.code == 2 and "'spacings'" in result.err and "Traceback" not in result.err, result.err
    suggested = invoke(capsys, "suggest", "--arch", "nnunet", "--batch", "2", "--gpu-mem", "24GiB",
                       "--nnunet-fingerprint", str(fingerprint))  # fmt: skip
    assert suggested.code == 2 and "Traceback" not in suggested.err, suggested.err


@pytest.mark.parametrize("name", ["../../etc", "", "Dataset987_Memprobe/../x", "/etc/passwd", "4" * 5])
def test_a_dataset_argument_that_is_no_id_or_name_is_refused(
    capsys: pytest.CaptureFixture[str], dataset: tuple[Path, Path], name: str
) -> None:
    result = invoke(capsys, "nnunet", "plan", "-d", name, "--gpu-mem", "24GiB")
    assert result.code == 2 and "-d" in result.error_lines[0], result.err


def test_an_unknown_configuration_is_refused_before_planning(
    capsys: pytest.CaptureFixture[str], dataset: tuple[Path, Path]
) -> None:
    result = _plan(capsys, "-c", "junk")
    assert result.code == 2 and "-c 'junk'" in result.error_lines[0], result.err
