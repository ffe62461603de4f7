"""Bad input everywhere: one line that says what to do, exit code 2 (1 when the model itself fails),
no traceback unless --debug, and nothing written.

Every case runs through ``memprobe.cli.main.main``, the one place errors become a line and a code;
a few run as real processes too. CUDA is always reported absent, whatever this machine has.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import memprobe
from memprobe.core.errors import DeviceUnavailableError, InvalidInputError, MemprobeError, ModelError
from memprobe.store.database import default_db_path
from tests.helpers import TINY, file_state, invoke, make_calibrated_db, run_cli

PATCH = ("--patch", "32", "32", "32")
PROBE = ("probe", "--arch", TINY, "--device", "trace", "--batch", "1")
CALIBRATE = ("calibrate", "--arch", TINY, "--device", "trace", "--gpu-mem", "1MiB")
SUGGEST = ("suggest", "--arch", "mednext", "--gpu-mem", "24GiB")
PLAN = ("plan", "--arch", "mednext", "--gpu-mem", "24GiB")

# (arguments, exit code, what the one line must say)
PATCH_CASES = {
    "patch of 2 sizes": (
        ("--patch", "128", "128"),
        "requires 3 arguments. (see `memprobe {command} --help`)",
    ),
    "patch size 0": (("--patch", "128", "0", "128"), "positive whole number"),
    "negative patch size": (("--patch", "128", "-128", "128"), "positive whole number"),
    "fractional patch size": (("--patch", "128", "12.5", "128"), "positive whole number"),
    "patch of 10000^3": (("--patch", "10000", "10000", "10000"), "choose a smaller patch"),
}
BUDGET_CASES = {
    "0": "memory size '0' must be greater than zero",
    "-1": "cannot read memory size '-1': write e.g. 24GiB",
    "abc": "cannot read memory size 'abc': write e.g. 24GiB",
    "24XB": "cannot read memory size '24XB': write e.g. 24GiB",
}
MODEL_CASES = {
    "model that cannot be imported": (
        "tests.no_such_module:net",
        2,
        "cannot import 'tests.no_such_module'",
        "check that the module is on PYTHONPATH",
    ),
    "model that is not callable": (
        "tests.tiny_models:NOT_CALLABLE",
        2,
        "is not callable",
        "give a function or class returning an nn.Module",
    ),
    "model that returns a str": (
        "tests.tiny_models:not_a_module",
        2,
        "returned str, not a torch.nn.Module",
        "the factory must return the network",
    ),
    "model whose forward raises": (
        "tests.tiny_models:raising_net",
        1,
        "failed: RuntimeError: forward failed on purpose",
        "raising_net",
    ),
}
STEP_CASES = {
    "unknown precision": (
        ("--precision", "fp8"),
        "'fp8' is not one of 'fp32', 'fp16-mixed', 'bf16-mixed', 'fp16', 'bf16'",
    ),
    "unknown optimizer": (("--optimizer", "lion"), "'lion' is not one of 'adamw', 'sgd'"),
}
DEVICE_CASES = {
    "unknown device": (("--device", "tpu"), "unknown device 'tpu': choose one of cuda, trace, cpu"),
    "cuda without a GPU": (("--device", "cuda"), "no CUDA GPU is available here: use --device trace"),
}


def _with_arch(arguments: tuple[str, ...], arch: str) -> tuple[str, ...]:
    index = arguments.index("--arch")
    return (*arguments[: index + 1], arch, *arguments[index + 2 :])


def _cases() -> list[Any]:
    cases: list[Any] = []

    def add(name: str, arguments: tuple[str, ...], code: int, *fragments: str) -> None:
        for database in ("no db", "existing db") if arguments[0] != "probe" else ("no db",):
            cases.append(
                pytest.param(arguments, code, fragments, database, id=f"{arguments[0]}: {name} ({database})")
            )

    for name, (extra, fragment) in PATCH_CASES.items():
        add(name, (*PROBE, *extra), 2, fragment.format(command="probe"))
        add(name, (*SUGGEST, *extra), 2, fragment.format(command="suggest"))
        if "12.5" not in extra:  # plan reads the patch as integers: click's own message
            add(name, (*PLAN, *extra), 2, fragment.format(command="plan"))
    add("patch not divisible", (*SUGGEST, "--patch", "100", "128", "128"), 2, "(nearest valid: 96 or 112)")
    add(
        "fractional patch size",
        (*PLAN, "--patch", "128", "12.5", "128"),
        2,
        "'12.5' is not a positive whole number",
        "(see `memprobe plan --help`)",
    )
    for batch in ("0", "-1", "abc", "1.5"):  # probe's --batch is read by the same click type as suggest's
        add(
            f"batch {batch}",
            (*PROBE, *PATCH, "--batch", batch),
            2,
            f"'{batch}' is not a positive whole number",
        )
    add("batch 0", (*SUGGEST, "--batch", "0"), 2, "'0' is not a positive whole number")
    add("batch abc", (*SUGGEST, "--batch", "abc"), 2, "'--batch': 'abc' is not a positive whole number")
    add("batch 0", (*PLAN, "--batch", "0"), 2, "'0' is not a positive whole number")
    for budget, fragment in BUDGET_CASES.items():
        add(f"budget {budget}", (*PROBE, *PATCH, "--gpu-mem", budget), 2, fragment)
        add(f"budget {budget}", (*CALIBRATE, "--gpu-mem", budget), 2, fragment)
        add(f"gpu-mem {budget}", ("suggest", *PATCH, "--gpu-mem", budget), 2, fragment)
        add(f"gpu-mem {budget}", ("plan", "--gpu-mem", budget), 2, fragment)
    for name, (extra, fragment) in STEP_CASES.items():
        add(name, (*PROBE, *PATCH, *extra), 2, fragment)
        add(name, (*CALIBRATE, *extra), 2, fragment)
        add(name, (*SUGGEST, *PATCH, *extra), 2, fragment)
    add("unknown precision", (*PLAN, "--precision", "fp8"), 2, STEP_CASES["unknown precision"][1])
    for name, (extra, fragment) in DEVICE_CASES.items():
        add(name, (*PROBE, *PATCH, *extra), 2, fragment)
        add(name, (*CALIBRATE, *extra), 2, fragment)
    for name, (arch, code, *fragments) in MODEL_CASES.items():
        add(name, (*_with_arch(PROBE, arch), *PATCH), code, *fragments)
        add(name, _with_arch(CALIBRATE, arch), code, *fragments)
    for base in (PROBE + PATCH, CALIBRATE, SUGGEST + PATCH, PLAN):
        add(
            "unknown architecture",
            _with_arch(base, "nonsense"),
            2,
            "unknown architecture 'nonsense': choose one of",
        )
    add(
        "no GPU and no --gpu-mem", ("suggest", *PATCH), 2, "give the memory to plan for, e.g. --gpu-mem 24GiB"
    )
    add("neither patch nor batch", SUGGEST, 2, "give --patch D H W")
    add(
        "unknown option",
        (*PROBE, *PATCH, "--gpu-memory", "24GiB"),
        2,
        "No such option",
        "(see `memprobe probe --help`)",
    )
    return cases


@pytest.fixture(autouse=True)
def _no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("memprobe.backends.cuda_available", lambda: False)


@pytest.fixture
def existing_db(tmp_path: Path) -> Path:
    """A memprobe database in WAL mode with a measurement in it."""
    from memprobe.core.config import StepConfig
    from memprobe.core.measurement import Environment, Measurement
    from memprobe.store.database import Database

    path = tmp_path / "existing.sqlite"
    with Database.open(path) as database:
        database.add_measurement(
            Measurement(
                StepConfig(arch=TINY, patch=(32, 32, 32), batch=1), Environment("trace", "trace"), 1000
            )
        )
    return path


@pytest.mark.parametrize(("arguments", "code", "fragments", "database"), _cases())
def test_bad_input_is_one_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    existing_db: Path,
    arguments: tuple[str, ...],
    code: int,
    fragments: tuple[str, ...],
    database: str,
) -> None:
    takes_db = arguments[0] != "probe"  # probe uses no database
    db = existing_db if database == "existing db" else tmp_path / "new" / "bench.sqlite"
    before = file_state(db)
    default_db = default_db_path()

    if takes_db:  # right after the command: the case's own arguments may be the malformed ones
        arguments = (arguments[0], "--db", str(db), *arguments[1:])
    result = invoke(capsys, *arguments)

    assert result.code == code, result.err
    assert len(result.error_lines) == 1, result.err
    assert result.err.splitlines()[-1] == result.error_lines[0]
    for fragment in fragments:
        assert fragment in result.error_lines[0]
    assert result.out == ""
    assert file_state(db) == before
    assert not default_db.exists()
    assert not (tmp_path / "new").exists()


def test_console_script_prints_no_traceback_without_debug() -> None:
    result = run_cli(*PROBE, *PATCH, "--precision", "fp8")
    assert result.code == 2
    assert len(result.err.splitlines()) == 1 and STEP_CASES["unknown precision"][1] in result.err


def test_console_script_shows_the_traceback_with_debug() -> None:
    result = run_cli("--debug", *PROBE, *PATCH, "--step", "nosuch")  # refused by the library, not by click
    assert result.code == 2  # --debug shows more, and keeps the exit code
    assert "Traceback" in result.err and "InvalidInputError" in result.err


def test_a_model_failure_exits_1_without_traceback(db_path: Path) -> None:
    result = run_cli(*_with_arch(CALIBRATE, "tests.tiny_models:raising_net"), "--db", str(db_path))
    assert result.code == 1
    assert "Traceback" not in result.err
    assert result.err.splitlines()[-1].endswith("RuntimeError: forward failed on purpose")
    assert not db_path.exists()


# The Python API ----------------------------------------------------------------------------

API_CASES: dict[str, tuple[Callable[[Path], object], type[MemprobeError], str]] = {
    "estimate: patch of 2 sizes": (
        lambda db: memprobe.estimate("mednext", (128, 128), 2, db=db),
        InvalidInputError,
        "a patch has 3 sizes",
    ),
    "estimate: patch size 0": (
        lambda db: memprobe.estimate("mednext", (128, 0, 128), 2, db=db),
        InvalidInputError,
        "positive whole number",
    ),
    "estimate: negative patch size": (
        lambda db: memprobe.estimate("mednext", (128, -128, 128), 2, db=db),
        InvalidInputError,
        "positive whole number",
    ),
    "estimate: fractional patch size": (
        lambda db: memprobe.estimate("mednext", (128, 12.5, 128), 2, db=db),
        InvalidInputError,
        "positive whole number",
    ),
    "estimate: patch of text": (
        lambda db: memprobe.estimate("mednext", ("a", "b", "c"), 2, db=db),
        InvalidInputError,
        "positive whole number",
    ),
    "estimate: patch of 10000^3": (
        lambda db: memprobe.estimate("mednext", (10000,) * 3, 2, db=db),
        InvalidInputError,
        "choose a smaller patch",
    ),
    "estimate: batch 0": (
        lambda db: memprobe.estimate("mednext", (128,) * 3, 0, db=db),
        InvalidInputError,
        "batch size must be a positive whole number",
    ),
    "estimate: batch -1": (
        lambda db: memprobe.estimate("mednext", (128,) * 3, -1, db=db),
        InvalidInputError,
        "batch size must be a positive whole number",
    ),
    "estimate: batch 1.5": (
        lambda db: memprobe.estimate("mednext", (128,) * 3, 1.5, db=db),  # type: ignore[arg-type]
        InvalidInputError,
        "batch size must be a positive whole number",
    ),
    "estimate: batch True": (
        lambda db: memprobe.estimate("mednext", (128,) * 3, True, db=db),
        InvalidInputError,
        "batch size must be a positive whole number",
    ),
    "estimate: unknown precision": (
        lambda db: memprobe.estimate("mednext", (128,) * 3, 2, "fp8", db=db),
        InvalidInputError,
        "choose one of fp32",
    ),
    "estimate: unknown optimizer": (
        lambda db: memprobe.estimate("mednext", (128,) * 3, 2, optimizer="lion", db=db),
        InvalidInputError,
        "choose one of adamw, sgd",
    ),
    "estimate: unknown architecture": (
        lambda db: memprobe.estimate("nonsense", (128,) * 3, 2, db=db),
        InvalidInputError,
        "unknown architecture",
    ),
    **{
        f"max_batch_size: gpu_mem {budget!r}": (
            lambda db, budget=budget: memprobe.max_batch_size("mednext", (128,) * 3, budget, db=db),
            InvalidInputError,
            "memory size",
        )
        for budget in (0, -1, "0", "-1", "abc", "24XB")
    },
    "probe: unknown device": (
        lambda db: memprobe.probe(TINY, (32,) * 3, 1, device="tpu"),
        InvalidInputError,
        "unknown device 'tpu'",
    ),
    "probe: cuda without a GPU": (
        lambda db: memprobe.probe(TINY, (32,) * 3, 1, device="cuda"),
        DeviceUnavailableError,
        "no CUDA GPU is available here",
    ),
    "probe: budget 24XB": (
        lambda db: memprobe.probe(TINY, (32,) * 3, 1, device="trace", gpu_mem="24XB"),
        InvalidInputError,
        "cannot read memory size",
    ),
    "probe: budget 0": (
        lambda db: memprobe.probe(TINY, (32,) * 3, 1, device="trace", gpu_mem=0),
        InvalidInputError,
        "must be greater than zero",
    ),
    **{
        f"probe: {name}": (
            lambda db, arch=arch: memprobe.probe(arch, (32,) * 3, 1, device="trace"),
            ModelError if code == 1 else InvalidInputError,
            fragment,
        )
        for name, (arch, code, fragment, _) in MODEL_CASES.items()
    },
    "calibrate: budget abc": (
        lambda db: memprobe.api.calibrate(TINY, device="trace", gpu_mem="abc", db=db),
        InvalidInputError,
        "cannot read memory size",
    ),
    "calibrate: unknown device": (
        lambda db: memprobe.api.calibrate(TINY, device="tpu", db=db),
        InvalidInputError,
        "unknown device",
    ),
    "calibrate: unknown precision": (
        lambda db: memprobe.api.calibrate(TINY, "fp8", device="trace", db=db),
        InvalidInputError,
        "unknown precision",
    ),
    **{
        f"calibrate: {name}": (
            lambda db, arch=arch: memprobe.api.calibrate(arch, device="trace", gpu_mem="1MiB", db=db),
            ModelError if code == 1 else InvalidInputError,
            fragment,
        )
        for name, (arch, code, fragment, _) in MODEL_CASES.items()
    },
}


@pytest.mark.parametrize("name", list(API_CASES))
def test_the_api_raises_one_line_memprobe_errors(name: str, tmp_path: Path) -> None:
    """Each call gets a database with a MedNeXt calibration: only the input is wrong."""
    call, error_type, fragment = API_CASES[name]
    db = make_calibrated_db(tmp_path / "calibrated.sqlite")
    before = file_state(db)
    with pytest.raises(MemprobeError) as raised:
        call(db)
    assert type(raised.value) is error_type
    assert raised.value.exit_code == (1 if error_type is ModelError else 2)
    assert fragment in str(raised.value) and "\n" not in str(raised.value)
    assert file_state(db) == before
    assert not default_db_path().exists()


def test_memprobe_calibrate_stays_the_api_function() -> None:
    """Importing the calibration machinery (as the CLI does) must not replace ``memprobe.calibrate``."""
    import memprobe.calibration_run

    assert memprobe.calibrate is memprobe.api.calibrate
    assert callable(memprobe.calibrate)
