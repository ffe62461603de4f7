"""Shape rules (#12): per-axis divisors and the smallest patch, declared, given or found; the
calibration design and the planner follow them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from memprobe.calibration_run import design_points, measure_or_record
from memprobe.core.archs.registry import axis_divisors, resolve_arch, smallest_patch
from memprobe.core.archs.shape_rules import arch_with_rule, find_rule, parse_rule_suffix
from memprobe.core.config import make_step_config, validate_patch
from memprobe.core.errors import InvalidInputError, ModelError
from memprobe.formula.terms import stage_voxels
from tests.helpers import invoke

ANISO = "tests.aniso_models:aniso_net"
DECLARED = "tests.aniso_models:declared_aniso_net"


def _pooling_network(divisors: tuple[int, int, int], least: tuple[int, int, int]):  # type: ignore[no-untyped-def]
    """accepts(patch) of a network with these divisors that needs every axis at least ``least``."""
    return lambda patch: all(p % d == 0 and p >= m for p, d, m in zip(patch, divisors, least, strict=True))


def test_a_rule_travels_in_the_name() -> None:
    name = arch_with_rule("pkg.mod:build", (4, 32, 32), (8, 64, 64))
    assert name == "pkg.mod:build[div=4x32x32,min=8x64x64]"
    assert parse_rule_suffix(name) == ("pkg.mod:build", (4, 32, 32), (8, 64, 64))
    spec = resolve_arch(name)
    assert spec.custom and spec.factory == "pkg.mod:build"
    assert axis_divisors(spec) == (4, 32, 32) and smallest_patch(spec) == (8, 64, 64)


@pytest.mark.parametrize(
    "name", ["pkg.mod:build[4x32x32]", "pkg.mod:build[div=4x0x32]", "m:f[div=4x32x32,min=6x64x64]"]
)
def test_a_malformed_rule_is_refused(name: str) -> None:
    with pytest.raises(InvalidInputError):
        resolve_arch(name)


def test_find_rule_recovers_anisotropic_divisors_and_the_smallest_patch() -> None:
    rule = find_rule(_pooling_network((4, 32, 32), (8, 64, 64)), "net")
    assert rule.divisors == (4, 32, 32) and rule.min_patch == (8, 64, 64) and rule.source == "found"


def test_find_rule_names_divisor_when_nothing_runs() -> None:
    with pytest.raises(InvalidInputError, match="--divisor"):
        find_rule(lambda patch: False, "net")


def test_validate_patch_checks_each_axis() -> None:
    spec = resolve_arch(arch_with_rule("pkg.mod:build", (4, 32, 32), (8, 64, 64)))
    assert validate_patch((8, 64, 96), spec) == (8, 64, 96)
    with pytest.raises(InvalidInputError, match="divisible by 4x32x32: 6 is not"):
        validate_patch((6, 64, 64), spec)
    with pytest.raises(InvalidInputError, match="at least 8x64x64"):
        validate_patch((4, 64, 64), spec)


def test_stage_voxels_follow_per_axis_strides() -> None:
    strides = ((1, 1, 1), (1, 2, 2), (2, 2, 2))
    assert stage_voxels((16, 64, 64), 3, strides) == [16 * 64 * 64, 16 * 32 * 32, 8 * 16 * 16]
    assert stage_voxels((16, 64, 64), 2) == [16 * 64 * 64, 8 * 32 * 32]


def test_design_points_are_anisotropic_and_valid() -> None:
    name = arch_with_rule("pkg.mod:build", (4, 32, 32), (8, 64, 64))
    spec = resolve_arch(name)
    base = make_step_config(name, (8, 64, 64), 1)
    points = design_points(base, spec)
    patches = [c.patch for c in (*points.fit, *points.heldout)]
    assert (8, 64, 64) in patches and (32, 256, 256) in patches
    for patch in patches:
        validate_patch(patch, spec)  # raises if any design patch breaks the rule


def test_a_design_point_that_fails_is_recorded_not_fatal() -> None:
    class _Log:
        class backend:
            @staticmethod
            def environment() -> object:
                return None

        def measure(self, config: object) -> object:
            raise ModelError("the training step failed: RuntimeError: sizes do not match")

    config = make_step_config("pkg.mod:build", (16, 16, 16), 1)
    measurement = measure_or_record(_Log(), config)  # type: ignore[arg-type]
    assert not measurement.ok and "sizes do not match" in (measurement.error or "")


def test_shape_rule_of_a_registered_network_is_refused() -> None:
    from memprobe.planning.shape_probe import shape_rule_arch

    with pytest.raises(InvalidInputError, match="drop --divisor"):
        shape_rule_arch("unet", divisors=(4, 32, 32))


def test_a_declared_rule_is_read_from_the_factory() -> None:
    from memprobe.planning.shape_probe import shape_rule_arch

    name, rule = shape_rule_arch(DECLARED)
    assert rule is not None and rule.source == "declared"
    assert name == f"{DECLARED}[div=4x8x8,min=8x16x16]"


def test_calibrate_finds_the_rule_plans_valid_patches_and_probes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole path for an anisotropically pooling network: found rule, fit, plan, probe."""
    db = str(tmp_path / "db.sqlite")
    result = invoke(capsys, "calibrate", "--arch", ANISO, "--device", "trace", "--precision", "fp32",
                    "--gpu-mem", "8GiB", "--no-search", "--db", db, "--json")  # fmt: skip
    assert result.code == 0, result.err
    assert "patch sizes divisible by 4x8x8" in result.err and "(found)" in result.err
    data = json.loads(result.out)
    assert data["calibration"]["arch"].startswith(f"{ANISO}[div=4x8x8")
    assert data["searches"] == []
    quality = data["calibration"]["quality"]
    assert quality["heldout_median_relative_error"] < 0.03 and quality["heldout_max_relative_error"] < 0.05
    depths = {m["patch"][0] for m in data["measurements"]}
    widths = {m["patch"][2] for m in data["measurements"]}
    assert min(widths) == 2 * min(depths)  # the design follows the network's anisotropic pooling

    for spacing, shape in (((3, 0.8, 0.8), (70, 199, 199)), ((1, 1, 1), (90, 101, 133))):
        planned = invoke(
            capsys,
            *("suggest", "--arch", ANISO, "--batch", "2", "--gpu-mem", "3GiB", "--device", "trace"),
            *("--precision", "fp32"),  # as calibrated above; suggest's default is bf16-mixed
            *("--db", db, "--spacing", *map(str, spacing), "--median-shape", *map(str, shape), "--json"),
        )
        assert planned.code == 0, planned.err
        patch = json.loads(planned.out)["patch"]
        assert [p % d for p, d in zip(patch, (4, 8, 8), strict=True)] == [0, 0, 0]
        from memprobe.api import probe

        measured = probe(data["calibration"]["arch"], patch, 1, device="trace")
        assert measured.ok and math.prod(patch) > 0


def test_probe_of_a_shape_the_model_fails_on_is_one_line() -> None:
    from tests.helpers import run_cli

    result = run_cli(
        "probe", "--arch", ANISO, "--patch", "10", "24", "24", "--batch", "1", "--device", "trace"
    )
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("measuring")  # no log spam from fake tensors
    assert lines[1].startswith("memprobe: error: the training step of") and "RuntimeError" in lines[1]
    assert "divisors assumed 1x1x1" in lines[1] and "10x24x24" in lines[1]


def test_a_rule_that_cannot_be_found_exits_2_naming_divisor(tmp_path: Path) -> None:
    from tests.helpers import run_cli

    shapeless = "tests.aniso_models:shapeless_net"
    result = run_cli("calibrate", "--arch", shapeless, "--device", "trace", "--db", str(tmp_path / "d"))
    assert result.code == 2, result.err
    assert "--divisor" in result.err.splitlines()[-1]


def test_a_given_rule_is_checked() -> None:
    from tests.helpers import run_cli

    result = run_cli("calibrate", "--arch", ANISO, "--divisor", "4", "8", "8", "--min-patch", "6", "16", "16")
    assert result.code == 2
    assert "not divisible by the divisors 4x8x8" in result.err


def test_plan_takes_optimizer(capsys: pytest.CaptureFixture[str]) -> None:
    result = invoke(capsys, "plan", "--help")
    assert "--optimizer" in result.out


def test_probe_refuses_a_patch_against_the_given_divisors() -> None:
    from tests.helpers import run_cli

    result = run_cli(
        "probe", "--arch", ANISO, "--divisor", "4", "8", "8", "--patch", "10", "24", "24", "--device", "trace"
    )
    assert result.code == 2
    assert "divisible by 4x8x8: 10 is not (nearest valid: 8 or 12)" in result.err
