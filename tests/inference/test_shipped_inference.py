"""Inference calibrations ship with memprobe: a new user's `suggest --mode inference` answers at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memprobe.core.archs.registry import ARCHS
from memprobe.store.calibration_sources import shipped_inference_calibrations
from tests.helpers import invoke


@pytest.fixture(autouse=True)
def _shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMPROBE_NO_SHIPPED", raising=False)


def test_every_registered_network_ships_monais_inference_at_fp32_and_bf16() -> None:
    shipped = {(c.arch, c.precision, c.predictor.value, c.device) for c in shipped_inference_calibrations()}
    assert {
        (arch, precision, "monai", "trace") for arch in ARCHS for precision in ("fp32", "bf16-mixed")
    } <= shipped
    assert all(c.source == "shipped" and c.quality.heldout_max_relative_error is not None
               for c in shipped_inference_calibrations())  # fmt: skip


def test_a_new_user_gets_an_inference_plan_from_the_shipped_calibration(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = invoke(capsys, "suggest", "--mode", "inference", "--arch", "basicunet", "--patch", "96", "96", "96",
                    "--image-shape", "600", "512", "512", "--out-channels", "16", "--gpu-mem", "24GiB",
                    "--db", str(tmp_path / "new.sqlite"), "--json")  # fmt: skip
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["calibration"]["source"] == "shipped" and data["calibration"]["device"] == "trace"
    assert data["sw_batch_size"] >= 1 and not (tmp_path / "new.sqlite").exists()


def test_the_users_own_inference_calibration_answers_before_the_shipped_one(tmp_path: Path) -> None:
    from memprobe.store.calibration_sources import all_inference_calibrations
    from memprobe.store.database import Database
    from tests.helpers import make_inference_calibration

    db = tmp_path / "db.sqlite"
    with Database.open(db) as database:
        database.add_calibration(make_inference_calibration())
    own = make_inference_calibration()
    found = [
        c
        for c in all_inference_calibrations(db)
        if (c.arch, c.precision, c.device) == (own.arch, own.precision, own.device)
    ]
    assert len(found) == 1 and found[0].source != "shipped"


def test_nnunets_predictor_ships_for_the_topologies_its_planners_chose() -> None:
    """The topologies of the side-by-side benchmark's datasets (benchmarks/nnunet_calibrations.json)."""
    topologies = {
        c["arch"]
        for c in json.loads(
            (Path(__file__).parents[2] / "benchmarks" / "nnunet_calibrations.json").read_text()
        )
    }
    shipped = {
        c.arch
        for c in shipped_inference_calibrations()
        if c.predictor.value == "nnunet" and c.precision == "fp16-mixed"
    }
    assert topologies and topologies <= shipped
