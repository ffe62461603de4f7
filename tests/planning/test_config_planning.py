"""Tests of planning PyTorch Connectomics configs: auto_plan_config and `memprobe plan --config`."""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from memprobe.api import max_batch_size
from memprobe.core.errors import InvalidInputError
from memprobe.integrations.pytc.compat import AutoConfigPlanner, auto_plan_config
from memprobe.integrations.pytc.config_file import is_explicit, plan_config
from memprobe.integrations.pytc.yaml_config import plan_config_file
from tests.helpers import Result, invoke, make_calibration, write_calibrations

GIB = 2**30

SEED_CONFIG = """\
# tutorials/mednext_auto.yaml
system:
  auto_plan: true  # Enable auto-planning
  print_auto_plan: true  # Print results

model:
  architecture: mednext
  deep_supervision: false   # odd spacing is kept as written

data:
  # Optional: provide dataset statistics for better planning
  target_spacing: [1.0, 1.0, 1.0]  # Voxel spacing in mm
  median_shape: [128, 256, 256]  # Median volume shape
  train_image: 'datasets/lucchi/im.h5'   # quoted, and kept quoted
  batch_size:   # left empty: planned

  # These will be AUTO-DETERMINED:
  # patch_size: [auto]
  # num_workers: [auto]

optimizer:
  name: AdamW
  lr: 0.0005  # OVERRIDE: Custom learning rate

training:
  # precision: [auto]  # Mixed precision if GPU supports
  max_epochs: 100
"""


@pytest.fixture
def calibrated_db(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MedNeXt and BasicUNet at fp32 and both mixed precisions; also the default database."""
    write_calibrations(
        db_path,
        *(
            make_calibration(arch, precision, per_voxel=40.0 if precision == "fp32" else 24.0)
            for arch in ("mednext", "basicunet")
            for precision in ("fp32", "fp16-mixed", "bf16-mixed")
        ),
    )
    monkeypatch.setenv("MEMPROBE_DB", str(db_path))
    return db_path


def _config(**data: Any) -> dict[str, Any]:
    return {
        "system": {"auto_plan": True},
        "model": {"architecture": "mednext"},
        "data": {"median_shape": [128, 256, 256], **data},
    }


def _plan(config: Any, **planning: Any) -> Any:
    planning.setdefault("gpu_memory_gb", 24.0)
    return auto_plan_config(config, print_results=False, **planning)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- auto_plan_config on plain dicts and OmegaConf ---


def test_fills_every_unset_value(calibrated_db: Path) -> None:
    """An empty config gets batch, patch, precision, accumulation, workers and lr at the issue's keys."""
    config = _plan(_config())
    planner = AutoConfigPlanner(median_shape=[128, 256, 256], gpu_memory_gb=24.0).plan()
    assert (
        config["data"]["batch_size"] == planner.batch_size
        and config["data"]["patch_size"] == planner.patch_size
    )
    assert config["training"] == {
        "precision": "bf16-mixed",
        "accumulate_grad_batches": planner.accumulate_grad_batches,
    }
    assert config["system"]["num_workers"] == planner.num_workers and config["optimization"]["lr"] == 1e-3


def test_a_set_patch_is_kept_and_the_batch_planned_for_it(calibrated_db: Path) -> None:
    """data.patch_size set by the user is kept, and the batch is the largest for that patch."""
    config = _plan(_config(patch_size=[64, 64, 64]))
    assert config["data"]["patch_size"] == [64, 64, 64]
    expected = max_batch_size("mednext", (64, 64, 64), 24 * GIB, "bf16-mixed", safety=0.85, db=calibrated_db)
    assert config["data"]["batch_size"] == expected.batch > 2


def test_explicit_values_are_never_changed(calibrated_db: Path) -> None:
    """Every value the user set stays exactly as written; only unset ones are added."""
    original = _config(batch_size=3, num_workers=7)
    original["training"] = {"precision": "32", "accumulate_grad_batches": 2}
    original["optimizer"] = {"lr": 5e-4}
    config = _plan(copy.deepcopy(original))
    assert config["data"]["batch_size"] == 3 and config["data"]["num_workers"] == 7
    assert config["training"] == {"precision": "32", "accumulate_grad_batches": 2}
    assert config["optimizer"] == {"lr": 5e-4} and "optimization" not in config
    assert "num_workers" not in config["system"]  # the planner's docs keep workers in data


def test_plan_reports_what_it_set_and_kept(calibrated_db: Path) -> None:
    """plan_config says which dotted keys it sets and which it keeps, and leaves the config alone."""
    config = _config(batch_size=2)
    plan = plan_config(config, gpu_memory_gb=24.0)
    assert plan.kept == {"data.batch_size": 2}
    assert set(plan.planned) == {
        "data.patch_size",
        "training.precision",
        "training.accumulate_grad_batches",
        "system.num_workers",
        "optimization.lr",
    }
    assert config == _config(batch_size=2)


@pytest.mark.parametrize("marker", [None, "auto", "AUTO", ["auto"], "???"])
def test_auto_markers_are_not_explicit(calibrated_db: Path, marker: Any) -> None:
    """null, 'auto', '[auto]' and '???' mean "plan this"; a number does not."""
    assert not is_explicit(marker)
    assert _plan(_config(batch_size=marker))["data"]["batch_size"] != marker
    assert is_explicit(0) and is_explicit([64, 64, 64]) and is_explicit("16-mixed")


def test_auto_plan_false_changes_nothing(calibrated_db: Path) -> None:
    """system.auto_plan: false leaves the config as it is."""
    config = _config()
    config["system"]["auto_plan"] = False
    assert _plan(copy.deepcopy(config)) == config


def test_missing_architecture_plans_the_default_and_says_so(
    calibrated_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config without model.architecture is planned for MedNeXt, and the printout says so."""
    config: dict[str, Any] = {"data": {"median_shape": [96, 96, 96]}}
    plan = plan_config(config, gpu_memory_gb=24.0)
    assert plan.result is not None and plan.result.arch == "mednext"
    assert any("model.architecture is not set" in note for note in plan.notes)
    auto_plan_config(config, gpu_memory_gb=24.0)
    assert "model.architecture is not set" in capsys.readouterr().out


def test_pytc_architecture_names_plan_their_network(calibrated_db: Path) -> None:
    """monai_basic_unet3d plans with BasicUNet's calibration."""
    config = _config()
    config["model"]["architecture"] = "monai_basic_unet3d"
    plan = plan_config(config, gpu_memory_gb=24.0)
    assert (
        plan.result is not None
        and plan.result.arch == "basicunet"
        and plan.planned["optimization.lr"] == 1e-4
    )


def test_unknown_architecture_is_refused(calibrated_db: Path) -> None:
    config = _config()
    config["model"]["architecture"] = "rsunet"
    with pytest.raises(InvalidInputError, match="memprobe archs"):
        _plan(config)


def test_omegaconf_struct_config_keeps_explicit_values(calibrated_db: Path) -> None:
    """On a struct OmegaConf config, new keys are added and a set patch is kept."""
    omegaconf = pytest.importorskip("omegaconf")
    config = omegaconf.OmegaConf.create(_config(patch_size=[64, 64, 64], batch_size="???"))
    omegaconf.OmegaConf.set_struct(config, True)
    _plan(config)
    assert list(config.data.patch_size) == [64, 64, 64] and config.data.batch_size > 2
    assert config.optimization.lr == 1e-3 and omegaconf.OmegaConf.is_struct(config)


# --- memprobe plan --config ---


@pytest.fixture
def seed_config(tmp_path: Path) -> Path:
    path = tmp_path / "mednext_auto.yaml"
    path.write_text(SEED_CONFIG)
    return path


def test_plan_config_keeps_every_comment_and_untouched_key(
    calibrated_db: Path, seed_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The planned file differs from the input only by the planned keys; the input is untouched."""
    before = _sha(seed_config)
    out = tmp_path / "planned.yaml"
    result = invoke(capsys, "plan", "--config", str(seed_config), "--gpu-mem", "24GiB", "--out", str(out))
    assert result.code == 0, result.err
    assert _sha(seed_config) == before
    original, planned = SEED_CONFIG.splitlines(), out.read_text().splitlines()
    removed, added = [], []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=original, b=planned, autojunk=False).get_opcodes():
        removed += original[i1:i2] if tag in ("replace", "delete") else []
        added += planned[j1:j2] if tag in ("replace", "insert") else []
    assert removed == ["  batch_size:   # left empty: planned"]
    assert {line.split(":")[0].strip() for line in added} == {
        "batch_size",
        "patch_size",
        "num_workers",
        "precision",
        "accumulate_grad_batches",
    }
    assert "  lr: 0.0005  # OVERRIDE: Custom learning rate" in planned  # kept, not moved to optimization
    assert any(line.startswith("  patch_size: [") for line in planned)  # inline, as configs write it


def test_plan_config_without_out_prints_the_yaml(
    calibrated_db: Path, seed_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --out the planned YAML goes to stdout and the file is left as it was."""
    before = _sha(seed_config)
    result = invoke(capsys, "plan", "--config", str(seed_config), "--gpu-mem", "24GiB")
    assert result.code == 0 and _sha(seed_config) == before
    assert result.out == plan_config_file(seed_config, gpu_memory_gb=24.0).text
    assert "# These will be AUTO-DETERMINED:" in result.out
    assert "train_image: 'datasets/lucchi/im.h5'" in result.out


def test_plan_config_json_lists_set_and_kept(
    calibrated_db: Path, seed_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json gives what was set and kept, the reasons and the calibration."""
    result = invoke(capsys, "plan", "--config", str(seed_config), "--gpu-mem", "24GiB", "--json")
    data = json.loads(result.out)
    assert result.code == 0 and data["kept"] == {"optimizer.lr": 0.0005}
    assert set(data["set"]) == {
        "data.batch_size",
        "data.patch_size",
        "training.precision",
        "training.accumulate_grad_batches",
        "system.num_workers",
    }
    assert data["arch"] == "mednext" and "mednext on trace" in data["calibration"]
    assert (
        data["set"]["data.batch_size"]
        == plan_config_file(seed_config, gpu_memory_gb=24.0).plan.planned["data.batch_size"]
    )


def _one_line_error(result: Result) -> str:
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("memprobe: error:"), result.err
    assert "Traceback" not in result.out + result.err
    return lines[0]


def test_unparsable_yaml_names_line_and_column(
    calibrated_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A YAML file that does not parse: exit 2 with its line and column; nothing written."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  architecture: mednext\ndata:\n  patch_size: [64, 64\n  batch_size: 2\n")
    before, out = _sha(bad), tmp_path / "planned.yaml"
    error = _one_line_error(
        invoke(capsys, "plan", "--config", str(bad), "--gpu-mem", "24GiB", "--out", str(out))
    )
    assert "line 5, column 13" in error and str(bad) in error
    assert _sha(bad) == before and not out.exists()


def test_out_equal_to_the_input_is_refused(
    calibrated_db: Path, seed_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _sha(seed_config)
    error = _one_line_error(
        invoke(capsys, "plan", "--config", str(seed_config), "--gpu-mem", "24GiB", "--out", str(seed_config))
    )
    assert "is the input config" in error and _sha(seed_config) == before


@pytest.mark.parametrize(
    ("architecture", "fragment"),
    [("rsunet", "`memprobe archs`"), ("monai_unet", "memprobe calibrate --arch unet")],
)
def test_architecture_errors_exit_2(
    calibrated_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], architecture: str, fragment: str
) -> None:
    """Unknown network: names `memprobe archs`; uncalibrated one: names the calibrate command."""
    config = tmp_path / "config.yaml"
    config.write_text(f"model:\n  architecture: {architecture}  # mine\n")
    before = _sha(config)
    error = _one_line_error(invoke(capsys, "plan", "--config", str(config), "--gpu-mem", "24GiB"))
    assert fragment in error and _sha(config) == before


@pytest.mark.parametrize(
    "arguments",
    [["--patch", "64", "64", "64"], ["--arch", "unet"], ["--yaml"]],
    ids=["patch", "arch", "yaml"],
)
def test_options_the_config_decides_are_refused(
    calibrated_db: Path, seed_config: Path, capsys: pytest.CaptureFixture[str], arguments: list[str]
) -> None:
    error = _one_line_error(
        invoke(capsys, "plan", "--config", str(seed_config), "--gpu-mem", "24GiB", *arguments)
    )
    assert "cannot be combined with --config" in error


def test_out_without_config_is_refused(
    calibrated_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = _one_line_error(invoke(capsys, "plan", "--gpu-mem", "24GiB", "--out", str(tmp_path / "x.yaml")))
    assert "--out needs --config" in error and not (tmp_path / "x.yaml").exists()


def test_write_replaces_the_output_whole(calibrated_db: Path, seed_config: Path, tmp_path: Path) -> None:
    """An existing output is replaced by the complete plan, and no temporary file is left behind."""
    out = tmp_path / "planned.yaml"
    out.write_text("old: content\n")
    planned = plan_config_file(seed_config, out, gpu_memory_gb=24.0)
    assert out.read_text() == planned.text and planned.written == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.sqlite", "mednext_auto.yaml", "planned.yaml"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("data: 5\n", "data must be a section"),
        ("model:\n  in_channels: abc\n", "model.in_channels must be a whole number"),
        ("data:\n  batch_size: two\n", "data.batch_size must be a whole number"),
        ("data:\n  target_spacing: 3\n", "data.target_spacing must be 3 positive numbers"),
        ("data:\n  patch_size: [64, 64]\n", "data.patch_size must be 3 positive whole numbers"),
        ("training:\n  precision: 64\n", "training.precision 64 is not a precision memprobe measures"),
        ("optimizer:\n  lr: -1\n", "optimizer.lr must be a positive number"),
        ("- a list\n", "a config must be a mapping"),
    ],
    ids=["scalar-section", "channels", "batch", "spacing", "patch", "precision", "lr", "list"],
)
def test_wrong_values_name_their_key(
    calibrated_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, fragment: str
) -> None:
    """A value of the wrong type is one line naming its key, exit 2; the file is left as it was."""
    config = tmp_path / "config.yaml"
    config.write_text(content)
    before = _sha(config)
    error = _one_line_error(invoke(capsys, "plan", "--config", str(config), "--gpu-mem", "24GiB"))
    assert fragment in error and _sha(config) == before


def test_planner_accepts_tuples_and_numpy_sizes(calibrated_db: Path) -> None:
    """Spacing and shapes may be tuples or numpy arrays, as dataset analysis returns them."""
    numpy = pytest.importorskip("numpy")
    from_lists = AutoConfigPlanner(median_shape=[96, 128, 128], gpu_memory_gb=24.0).plan()
    planner = AutoConfigPlanner(
        target_spacing=(1.0, 1.0, 1.0), median_shape=numpy.array([96, 128, 128]), gpu_memory_gb=24.0
    )
    assert planner.plan().patch_size == from_lists.patch_size
