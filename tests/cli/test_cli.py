"""Tests of the memprobe command line: help, JSON/YAML output, and one-line errors with exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import yaml

from memprobe.cli.main import cli
from memprobe.cli.render.plans import TRACE_NOTE
from memprobe.core.archs.registry import ARCHS, get_arch
from memprobe.planning.size_search import plan_batch
from memprobe.store.database import Database
from tests.helpers import invoke, make_calibration, write_calibrations

GIB = 2**30
TINY = "tests.tiny_models:tiny_net"
# The plan most tests ask for: the largest batch of a 128^3 patch on 24 GiB.
SUGGEST_128 = ("suggest", "--patch", "128", "128", "128", "--gpu-mem", "24GiB")


@pytest.fixture
def calibrated_db(db_path: Path) -> Path:
    """A database with trace calibrations of MedNeXt (fp32, bf16-mixed) and BasicUNet (fp32)."""
    return write_calibrations(
        db_path,
        make_calibration(),
        make_calibration(precision="bf16-mixed"),
        make_calibration(arch="basicunet"),
    )


def _walk(
    command: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _walk(sub, (*path, name))


COMMAND_PATHS = [path for path, _ in _walk(cli)]


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=[" ".join(p) or "memprobe" for p in COMMAND_PATHS])
def test_every_command_has_help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    """Every command and subcommand documents itself and each of its options."""
    command = dict(_walk(cli))[path]
    assert command.help and command.help.strip()
    for parameter in command.params:
        if isinstance(parameter, click.Option) and parameter.name not in ("help", "version"):
            assert parameter.help, f"{' '.join(path)} {parameter.opts} has no help"
    result = invoke(capsys, *path, "--help")
    assert result.code == 0 and "Usage:" in result.out
    first_line = " ".join(command.help.strip().splitlines()[0].split())
    assert first_line in " ".join(result.out.split())


def test_commands_are_registered() -> None:
    """The documented commands exist."""
    assert {"archs", "probe", "calibrate", "suggest", "plan", "db"} <= set(cli.commands)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the package version."""
    from memprobe import __version__

    result = invoke(capsys, "--version")
    assert result.code == 0 and __version__ in result.out


def test_archs_json_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    """archs --json is parseable and lists every registered architecture with its divisor."""
    result = invoke(capsys, "archs", "--json")
    assert result.code == 0
    data = json.loads(result.out)
    assert [item["name"] for item in data][: len(ARCHS)] == list(ARCHS)
    assert all(item["divisor"] == ARCHS[item["name"]].divisor for item in data if item["name"] in ARCHS)


def test_archs_table(capsys: pytest.CaptureFixture[str]) -> None:
    """archs without --json prints a table naming every architecture."""
    result = invoke(capsys, "archs")
    assert result.code == 0 and all(name in result.out for name in ARCHS)


def test_probe_tiny_model_on_trace(capsys: pytest.CaptureFixture[str]) -> None:
    """probe of a user model on trace prints a measurement with its peak as JSON."""
    result = invoke(
        capsys,
        "probe",
        "--arch",
        TINY,
        "--patch",
        "16",
        "16",
        "16",
        "--batch",
        "2",
        "--device",
        "trace",
        "--json",
    )
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["arch"] == TINY and data["patch"] == [16, 16, 16] and data["batch"] == 2
    assert data["device"] == "trace" and not data["oom"]
    assert isinstance(data["peak_allocated_bytes"], int) and data["peak_allocated_bytes"] > 0
    assert data["peak_allocated_bytes"] % 512 == 0


def test_suggest_json_is_a_consistent_plan(calibrated_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """suggest --json gives the largest batch: it fits budget*safety and the next does not."""
    result = invoke(capsys, *SUGGEST_128, "--db", str(calibrated_db), "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    budget = 24 * GIB
    assert data["budget_bytes"] == budget and data["safety"] == 1.0
    assert data["need"]["total_bytes"] <= budget < data["next_batch_total_bytes"]
    expected = plan_batch(make_calibration(), get_arch("mednext"), (128, 128, 128), budget)
    assert data["batch"] == expected.batch == 4  # the margin charges published runs' reserve gap
    assert data["pytorch_connectomics"]["data.batch_size"] == data["batch"]
    assert data["nnunet_plans"] == {"batch_size": 4, "patch_size": [128, 128, 128]}
    assert data["calibration"]["device"] == "trace" and data["warnings"] == []
    assert data["calibration"]["note"] == TRACE_NOTE
    terms = data["need"]["terms"]
    assert [t["name"] for t in terms] == [
        "allocated (tensors)",
        "allocator reserve",
        "CUDA context",
        "cuBLAS workspace",
        "cuDNN workspaces and CUDA-only buffers",
        "margin",
    ]
    assert sum(t["bytes"] for t in terms) == pytest.approx(data["need"]["total_bytes"], abs=len(terms))


def test_suggest_yaml_parses(calibrated_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """suggest --yaml is valid YAML with the same plan as --json."""
    result = invoke(capsys, *SUGGEST_128, "--db", str(calibrated_db), "--yaml", "--effective-batch", "16")
    assert result.code == 0, result.err
    data = yaml.safe_load(result.out)
    # 5 fit; 16 needs 4 steps of 5, and then 4 steps of 4 reach it exactly with a smaller batch
    assert data["batch"] == 4 and data["accumulate_grad_batches"] == 4 and data["effective_batch"] == 16
    assert data["pytorch_connectomics"]["training.accumulate_grad_batches"] == 4


def test_suggest_patch_for_a_batch(calibrated_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """suggest --batch plans a divisible patch within the budget and the median shape."""
    result = invoke(capsys, "suggest", "--batch", "2", "--gpu-mem", "24GiB", "--spacing", "5", "0.8", "0.8",
                    "--median-shape", "64", "320", "320", "--db", str(calibrated_db), "--json")  # fmt: skip
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert all(size % 16 == 0 for size in data["patch"])
    assert all(size <= limit for size, limit in zip(data["patch"], (64, 320, 320), strict=True))
    assert data["predicted_peak_bytes"] <= 24 * GIB * 0.9 and data["reasons"]


def test_suggest_all_archs(calibrated_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--all-archs compares every architecture calibrated at the precision."""
    result = invoke(capsys, *SUGGEST_128, "--all-archs", "--precision", "fp32", "--db", str(calibrated_db),
                    "--json")  # fmt: skip
    assert result.code == 0, result.err
    assert [plan["arch"] for plan in json.loads(result.out)] == ["mednext", "basicunet"]


def test_suggest_all_archs_reads_precision_in_any_case(
    calibrated_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--all-archs finds the calibrated networks whatever the case of --precision, as planning does."""
    result = invoke(capsys, *SUGGEST_128, "--all-archs", "--precision", "FP32", "--db", str(calibrated_db),
                    "--json")  # fmt: skip
    assert result.code == 0, result.err
    assert [plan["arch"] for plan in json.loads(result.out)] == ["mednext", "basicunet"]


def test_suggest_table(calibrated_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The default table shows the batch and the budget."""
    result = invoke(capsys, *SUGGEST_128, "--db", str(calibrated_db))
    assert result.code == 0 and "| mednext" in result.out and "24.00 GiB" in result.out


def test_plan_json(calibrated_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """plan --json fills every value, with a reason for each."""
    result = invoke(
        capsys, "plan", "--gpu-mem", "24GiB", "--precision", "fp32", "--db", str(calibrated_db), "--json"
    )
    assert result.code == 0, result.err
    data = json.loads(result.out)
    for name in (
        "precision",
        "patch_size",
        "batch_size",
        "accumulate_grad_batches",
        "num_workers",
        "lr",
        "scheduler",
    ):
        assert name in data and data["reasons"][name]
    assert data["precision"] == "fp32" and data["reasons"]["precision"] == "manual override"


BAD_INPUT = [
    pytest.param(
        ["suggest", "--patch", "128", "128", "128", "--gpu-mem", "abc"],
        "cannot read memory size",
        id="budget-abc",
    ),
    pytest.param(["suggest", "--gpu-mem", "24GiB", "--patch", "128", "128"], "--patch", id="patch-of-two"),
    pytest.param(
        ["suggest", "--patch", "128", "128", "--gpu-mem", "24GiB"], "", id="patch-of-two-then-option"
    ),
    pytest.param(
        [*SUGGEST_128, "--precision", "fp8"],
        "'fp8' is not one of",
        id="unknown-precision",
    ),
    pytest.param(
        ["suggest", "--patch", "100", "128", "128", "--gpu-mem", "24GiB"],
        "nearest valid: 96 or 112",
        id="not-divisible",
    ),
    pytest.param(
        [*SUGGEST_128, "--arch", "resnet"],
        "unknown architecture",
        id="unknown-arch",
    ),
    pytest.param(["suggest", "--batch", "x", "--gpu-mem", "24GiB"], "--batch", id="batch-x"),
    pytest.param(["suggest", "--patch", "128", "128", "128"], "--gpu-mem", id="no-budget-no-gpu"),
    pytest.param(
        ["probe", "--patch", "16", "16", "16", "--arch", TINY, "--batch", "0", "--device", "trace"],
        "'--batch': '0' is not a positive whole number",
        id="probe-batch-0",
    ),
    pytest.param(
        ["plan", "--gpu-mem", "24GiB", "--precision", "fp9"], "'fp9' is not one of", id="plan-precision"
    ),
    pytest.param(["nonsense"], "No such command", id="unknown-command"),
]


@pytest.mark.parametrize(("arguments", "fragment"), BAD_INPUT)
def test_bad_input_is_one_line_exit_2(
    arguments: list[str], fragment: str, calibrated_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad input exits with code 2 and a single 'memprobe: error:' line, no traceback."""
    if arguments[0] in ("suggest", "plan"):
        arguments = [arguments[0], "--db", str(calibrated_db), *arguments[1:]]
    result = invoke(capsys, *arguments)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memprobe: error:"), result.err
    assert fragment in lines[0] and "Traceback" not in result.err + result.out


def test_unknown_device_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown measuring device is refused with the known ones, exit code 2, no traceback."""
    result = invoke(capsys, "probe", "--patch", "32", "32", "32", "--device", "tpu")
    assert result.code == 2 and "Traceback" not in result.err
    assert (
        result.err.strip().splitlines()[-1]
        == "memprobe: error: unknown device 'tpu': choose one of cuda, trace, cpu"
    )


def test_a_missing_database_is_read_the_same_named_by_db_or_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--db and $MEMPROBE_DB naming a file that does not exist: the same answer, nothing created."""
    monkeypatch.delenv("MEMPROBE_NO_SHIPPED")
    missing = tmp_path / "missing.sqlite"
    by_option = invoke(capsys, *SUGGEST_128, "--json", "--db", str(missing))
    monkeypatch.setenv("MEMPROBE_DB", str(missing))
    by_environment = invoke(capsys, *SUGGEST_128, "--json")
    assert by_option.code == by_environment.code == 0, by_option.err
    assert json.loads(by_option.out)["calibration"] == json.loads(by_environment.out)["calibration"]
    assert json.loads(by_option.out)["calibration"]["source"] == "shipped"
    listed = [invoke(capsys, "db", "list", "--json", *db) for db in (["--db", str(missing)], [])]
    assert listed[0] == listed[1] and listed[0].code == 0
    for db in (["--db", str(missing)], []):  # measurements live only in that file: there are none to show
        result = invoke(capsys, "db", "measurements", *db)
        assert result.code == 2 and result.err.strip() == (
            f"memprobe: error: no database at {missing}: run `memprobe calibrate` first or pass --db"
        )
    assert not missing.exists()


def test_no_calibration_is_exit_2_naming_the_command(
    calibrated_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Planning an uncalibrated network says which calibrate command to run."""
    result = invoke(capsys, *SUGGEST_128, "--arch", "unet", "--db", str(calibrated_db))
    assert result.code == 2 and "memprobe calibrate --arch unet" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_model_failure_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A model whose forward raises is a one-line error with exit code 1."""
    result = invoke(capsys, "probe", "--arch", "tests.tiny_models:raising_net", "--patch", "8", "8", "8",
                    "--device", "trace")  # fmt: skip
    assert result.code == 1
    assert result.err.strip().splitlines()[-1].startswith("memprobe: error:")
    assert "forward failed on purpose" in result.err and "Traceback" not in result.err


def test_success_exits_zero(calibrated_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """main() exits 0 after printing the report on stdout."""
    result = invoke(capsys, *SUGGEST_128, "--db", str(calibrated_db), "--json")
    assert result.code == 0 and json.loads(result.out)["batch"] == 4 and "error" not in result.err


def test_console_script_reports_errors_in_one_line(tmp_path: Path) -> None:
    """The installed command (python -m memprobe.cli.main) prints one error line and exits 2."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "memprobe.cli.main",
            "suggest",
            "--patch",
            "128",
            "128",
            "128",
            "--gpu-mem",
            "24XB",
            "--db",
            str(tmp_path / "none.sqlite"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        "memprobe: error: Invalid value for '--gpu-mem': cannot read memory size '24XB': write e.g. "
        "24GiB, 24GB, 24000MiB or 24 (GiB) (see `memprobe suggest --help`)"
    ]
    assert completed.stdout == ""


def test_bare_memprobe_shows_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`memprobe` alone prints the help and exits 0, not a usage error."""
    result = invoke(capsys)
    assert result.code == 0 and not result.err
    assert "Usage: memprobe" in result.out and "Commands:" in result.out


def test_a_patch_of_two_sizes_says_it_needs_three(capsys: pytest.CaptureFixture[str]) -> None:
    """--patch 128 128 --gpu-mem 24GiB names the real mistake, not the option it swallowed."""
    result = invoke(capsys, "suggest", "--patch", "128", "128", "--gpu-mem", "24GiB")
    assert result.code == 2 and "--patch needs 3 values" in result.err and result.err.count("\n") == 1


def test_a_stand_in_calibration_is_warned_about_once(
    calibrated_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A GPU without its own calibration: one memprobe warning line, no raw UserWarning."""
    result = invoke(capsys, *SUGGEST_128, "--db", str(calibrated_db), "--device", "NVIDIA A100-SXM4-80GB")
    assert result.code == 0
    assert (result.out + result.err).count("no calibration of mednext for NVIDIA A100-SXM4-80GB") == 1
    assert "UserWarning" not in result.out + result.err


@pytest.mark.parametrize(
    ("typed", "precision"), [("bf16", "bf16-mixed"), ("fp16", "fp16-mixed"), ("32-true", "fp32")]
)
def test_short_precision_names_are_understood(typed: str, precision: str) -> None:
    from memprobe.core.enums import Precision, parse_enum

    assert parse_enum(Precision, typed, "precision") is Precision(precision)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--patch", "128", "128", "128", "--batch", "2"], "not both"),
        (["--patch", "128", "128", "128", "--json", "--yaml"], "--json and --yaml"),
    ],
)
def test_flags_that_contradict_each_other_are_refused(
    calibrated_db: Path, arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Options that would be silently ignored or combined end in one line and exit 2."""
    result = invoke(capsys, "suggest", *arguments, "--gpu-mem", "24GiB", "--db", str(calibrated_db))
    assert result.code == 2 and message in result.err and result.err.count("\n") == 1 and not result.out


def test_suggest_and_plan_default_to_one_precision_and_show_it(
    calibrated_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --precision both plan at bf16-mixed (plan's rule for a GPU with bf16, or none) and say so."""
    patch = ["--patch", "128", "128", "128", "--gpu-mem", "24GiB", "--db", str(calibrated_db)]
    table = invoke(capsys, "suggest", *patch)
    assert table.code == 0, table.err
    assert "| precision" in table.out and "precision bf16-mixed (the default;" in table.out
    suggested = invoke(capsys, "suggest", *patch, "--json")
    assert json.loads(suggested.out)["precision"] == "bf16-mixed"
    batch = ["--batch", "2", "--gpu-mem", "24GiB", "--db", str(calibrated_db), "--json"]
    assert json.loads(invoke(capsys, "suggest", *batch).out)["precision"] == "bf16-mixed"
    planned = invoke(capsys, "plan", "--gpu-mem", "24GiB", "--db", str(calibrated_db), "--json")
    assert planned.code == 0, planned.err
    assert json.loads(planned.out)["precision"] == "bf16-mixed"


def test_all_archs_with_deep_supervision_skips_networks_without_it(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--all-archs --deep-supervision names the networks without heads once and plans the others."""
    from dataclasses import replace

    with Database.open(db_path) as db:
        db.add_calibration(replace(make_calibration(), deep_supervision=True))
        db.add_calibration(make_calibration(arch="basicunet"))
    result = invoke(capsys, *SUGGEST_128, "--precision", "fp32", "--all-archs", "--deep-supervision",
                    "--db", str(db_path), "--json")  # fmt: skip
    assert result.code == 0, result.err
    assert result.err.splitlines() == ["skipped basicunet: no deep supervision"]
    assert json.loads(result.out)["arch"] == "mednext"


# Metavars the options use for numbers: a size per axis, a spacing per axis, a memory size.
NUMERIC_METAVARS = {"D H W", "Z Y X", "SIZE"}


def _takes_numbers(parameter: click.Option) -> bool:
    """Whether an option's declaration says it holds numbers: a numeric default, or a numeric metavar."""
    default = parameter.default
    values = default if isinstance(default, (tuple, list)) else (default,)
    numeric_default = any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    return (numeric_default and not parameter.is_flag) or parameter.metavar in NUMERIC_METAVARS


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=[" ".join(p) or "memprobe" for p in COMMAND_PATHS])
def test_every_numeric_option_is_read_by_a_click_type(path: tuple[str, ...]) -> None:
    """Numbers and sizes are checked where the option is declared, never as text in the command body."""
    checked = 0
    for parameter in dict(_walk(cli))[path].params:
        if isinstance(parameter, click.Option) and _takes_numbers(parameter):
            checked += 1
            assert parameter.type is not click.STRING, f"{' '.join(path)} {parameter.opts}"
    numeric = {("probe",), ("calibrate",), ("suggest",), ("plan",), ("report",), ("sweep",)}
    assert checked > 0 or path not in numeric, f"{' '.join(path)} declares no numeric option?"


NUMERIC_TYPES = (click.types.IntParamType, click.types.FloatParamType)


def _numeric_options() -> list[tuple[tuple[str, ...], click.Option]]:
    """Every option whose click type reads numbers (click's own, or memprobe's counts and sizes)."""
    from memprobe.cli.options import ByteSize, _Count, _PositiveNumber

    found = []
    for path, command in _walk(cli):
        for parameter in command.params:
            kind = parameter.type
            if (
                isinstance(parameter, click.Option)
                and not parameter.is_flag
                and (isinstance(kind, (*NUMERIC_TYPES, ByteSize, _Count, _PositiveNumber)))
            ):
                found.append((path, parameter))
    return found


NUMERIC = _numeric_options()


@pytest.mark.parametrize(("path", "option"), NUMERIC, ids=[f"{' '.join(p)} {o.opts[0]}" for p, o in NUMERIC])
def test_every_numeric_option_refuses_text_in_one_line_naming_itself(
    path: tuple[str, ...], option: click.Option, capsys: pytest.CaptureFixture[str]
) -> None:
    """Derived from the click types: each numeric option refuses ``abc`` where it is parsed, exit 2."""
    result = invoke(capsys, *path, option.opts[0], *(["abc"] * option.nargs))
    assert result.code == 2 and len(result.error_lines) == 1, result.err
    assert option.opts[0] in result.err or option.name in result.err


def test_a_memory_size_is_read_into_bytes_by_its_type() -> None:
    from memprobe.cli.options import BYTES

    assert BYTES.convert("24GiB", None, None) == 24 * GIB
    assert BYTES.convert("24GB", None, None) == 24 * 10**9
    with pytest.raises(click.BadParameter, match="less than 1 MiB"):
        BYTES.convert("512KiB", None, None)
    with pytest.raises(click.BadParameter, match="cannot read memory size 'abc'"):
        BYTES.convert("abc", None, None)


def test_a_calibration_made_with_defaults_is_the_one_plans_read_with_defaults(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """calibrate, suggest and memprobe.estimate share one default precision (the auto rule)."""
    import memprobe
    from tests.helpers import SMALL_BUDGET

    tiny = "tests.tiny_models:tiny_net"
    made = invoke(capsys, "calibrate", "--arch", tiny, "--device", "trace", "--gpu-mem", SMALL_BUDGET,
                  "--no-search", "--db", str(db_path), "--json")  # fmt: skip
    assert made.code == 0, made.err
    precision = json.loads(made.out)["calibration"]["precision"]
    suggested = invoke(capsys, "suggest", "--arch", tiny, "--patch", "16", "16", "16", "--gpu-mem", "2GiB",
                       "--calibrated-on", "trace", "--db", str(db_path), "--json")  # fmt: skip
    assert suggested.code == 0, suggested.err
    assert json.loads(suggested.out)["precision"] == precision == "bf16-mixed"
    estimated = memprobe.estimate(tiny, (16, 16, 16), 1, db=db_path, device="trace")
    assert estimated.calibration.precision == precision


@pytest.mark.parametrize(
    ("old", "new", "arguments"),
    [
        (
            "--budget",
            "--gpu-mem",
            (
                "probe",
                "--arch",
                "tests.tiny_models:tiny_net",
                "--patch",
                "16",
                "16",
                "16",
                "--device",
                "trace",
                "--json",
            ),
        ),
        ("--nnunet-fingerprint", "--fingerprint", ("suggest", "--patch", "128", "128", "128", "--json")),
        ("--device", "--calibrated-on", ("suggest", "--patch", "128", "128", "128", "--json")),
        ("--num-gpus", "--gpus", ("plan", "--json")),
    ],
)
def test_a_renamed_option_still_works_and_names_its_new_name(
    old: str, new: str, arguments: tuple[str, ...], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Users' scripts keep working: the old flag is read as the new one, with a warning on stderr."""
    values = {"--budget": "1GiB", "--nnunet-fingerprint": str(tmp_path / "missing.json"), "--device": "trace",
              "--num-gpus": "0"}  # fmt: skip
    before = invoke(capsys, *arguments, old, values[old])
    after = invoke(capsys, *arguments, new, values[old])
    assert f"memprobe: warning: {old} is deprecated: use {new}" in before.err
    assert before.code == after.code and _steady(before.out) == _steady(after.out)
    assert before.err.splitlines()[1:] == after.err.splitlines()
    assert all(old not in parameter.opts for parameter in cli.commands[arguments[0]].params)


def _steady(out: str) -> object:
    """A command's JSON without its timings (two runs of one step differ in those alone)."""
    if not out.strip().startswith("{"):
        return out
    return {key: value for key, value in json.loads(out).items() if "seconds" not in key}
