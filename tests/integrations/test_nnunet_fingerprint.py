"""Reading nnU-Net's dataset fingerprint (#12): spacing and median shape as its planner derives them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memprobe.core.errors import InvalidInputError
from memprobe.integrations.nnunet.fingerprint import read_fingerprint


def _write(path: Path, spacings: list[list[float]], shapes: list[list[int]]) -> Path:
    path.write_text(json.dumps({"spacings": spacings, "shapes_after_crop": shapes}))
    return path


def test_isotropic_data_takes_the_median(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "f.json",
        [[1, 1, 1], [1, 1, 1], [2, 2, 2]],
        [[100, 200, 200], [120, 220, 220], [60, 100, 100]],
    )
    found = read_fingerprint(path)
    assert found.spacing == (1.0, 1.0, 1.0) and found.median_shape == (120, 200, 200)
    assert found.transpose_forward == (0, 1, 2) and not found.transposed


def test_thick_slices_take_the_tenth_percentile(tmp_path: Path) -> None:
    spacings = [[5.0, 0.8, 0.8]] * 9 + [[2.5, 0.8, 0.8]]
    path = _write(tmp_path / "f.json", spacings, [[40, 512, 512]] * 10)
    found = read_fingerprint(path)
    assert found.spacing[0] == pytest.approx(4.75) and found.spacing[1:] == (0.8, 0.8)
    assert found.median_shape == (42, 512, 512)


def test_the_largest_spacing_moves_first_as_nnunet_transposes(tmp_path: Path) -> None:
    path = _write(tmp_path / "f.json", [[0.8, 0.7, 5.0]] * 4, [[512, 500, 40]] * 4)
    found = read_fingerprint(path)
    assert found.transpose_forward == (2, 0, 1) and found.transposed
    assert found.spacing == (5.0, 0.8, 0.7) and found.median_shape == (40, 512, 500)


def test_a_missing_fingerprint_names_the_nnunet_command(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="nnUNetv2_extract_fingerprint"):
        read_fingerprint(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InvalidInputError, match="nnUNetv2_extract_fingerprint"):
        read_fingerprint(tmp_path / "bad.json")


def test_suggest_plans_from_a_fingerprint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from memprobe.store.database import Database
    from tests.helpers import invoke, make_calibration

    db = tmp_path / "db.sqlite"
    with Database.open(db) as database:
        database.add_calibration(make_calibration())
    fingerprint = _write(tmp_path / "f.json", [[5.0, 0.8, 0.8]] * 4, [[40, 512, 512]] * 4)
    arguments = [
        "suggest",
        "--batch",
        "2",
        "--gpu-mem",
        "24GiB",
        "--precision",
        "fp32",
        "--db",
        str(db),
        "--json",
    ]
    result = invoke(capsys, *arguments, "--nnunet-fingerprint", str(fingerprint))
    assert result.code == 0, result.err
    assert "spacing 5 0.8 0.8 mm, median shape 40 512 512" in result.err
    typed = invoke(capsys, *arguments, "--spacing", "5", "0.8", "0.8", "--median-shape", "40", "512", "512")
    assert json.loads(result.out)["patch"] == json.loads(typed.out)["patch"]


def test_suggest_and_plan_say_the_axes_are_transposed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from memprobe.store.database import Database
    from tests.helpers import invoke, make_calibration

    db = tmp_path / "db.sqlite"
    with Database.open(db) as database:
        database.add_calibration(make_calibration())
    fingerprint = _write(tmp_path / "f.json", [[0.8, 0.8, 5.0]] * 4, [[512, 512, 40]] * 4)
    arguments = ["--batch", "2", "--precision", "fp32", "--gpu-mem", "24GiB", "--db", str(db), "--json"]
    typed = invoke(
        capsys, "suggest", *arguments, "--spacing", "5", "0.8", "0.8", "--median-shape", "40", "512", "512"
    )
    for command in ("suggest", "plan"):
        result = invoke(capsys, command, *arguments, "--nnunet-fingerprint", str(fingerprint))
        assert result.code == 0, result.err
        assert "spacing 5 0.8 0.8 mm, median shape 40 512 512" in result.err
        assert "transpose_forward 2 0 1" in result.err
        data = json.loads(result.out)
        assert data.get("patch", data.get("patch_size")) == json.loads(typed.out)["patch"]


def test_suggest_without_a_fingerprint_exits_2(tmp_path: Path) -> None:
    from tests.helpers import run_cli

    result = run_cli(
        "suggest", "--batch", "2", "--gpu-mem", "24GiB", "--nnunet-fingerprint", str(tmp_path / "no.json")
    )
    assert result.code == 2 and "nnUNetv2_extract_fingerprint" in result.err
