"""User code and shared folders cannot take memprobe over (#15, round 3).

A sweep's result files are JSON that memprobe's own job function writes, never unpickled;
user code's stdout goes to stderr, so ``--json`` stays parseable; an exception that cannot be
printed, or a thread that never ends, still ends memprobe in one line with the right code;
every error line is short; and messages name what was really given.
"""

from __future__ import annotations

import json
import pickle
import sys
import textwrap
import time
from pathlib import Path

import pytest

from memprobe.core.errors import TerminatedError
from tests.helpers import SMALL_BUDGET, TINY, Result, invoke, make_calibrated_db, run_cli

HEADER = "import sys, threading, time\nfrom tests.tiny_models import TinyNet\nfrom tests.custom_steps import plain_step\n"
PROBE = ("probe", "--patch", "16", "16", "16", "--batch", "1", "--device", "trace")


def _user_module(folder: Path, name: str, source: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Write module ``name`` into ``folder`` and make it importable in this process and its children."""
    (folder / f"{name}.py").write_text(HEADER + textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", f"{folder}:{Path(__file__).resolve().parents[2]}")
    return name


def _one_error_line(result: Result) -> str:
    assert "Traceback" not in result.err, result.err
    assert len(result.error_lines) == 1, result.err
    return result.error_lines[0]


# --- 2. a sweep's result files cannot run code -------------------------------------------------


class _Planted:
    """Unpickling this creates ``marker``: what an attacker's result file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _planted_sweep(db: Path, job_id: str) -> Path:
    folder = Path(f"{db}.sweep")
    folder.mkdir()
    key = f"{TINY}/default/any"  # no --precision: the default rule on the node
    state = {"jobs": {key: job_id}, "executors": {key: "local"}}
    (folder / "sweep.json").write_text(json.dumps(state))
    return folder


def _status(capsys: pytest.CaptureFixture[str], db: Path) -> Result:
    return invoke(capsys, "sweep", "--arch", TINY, "--status", "--db", str(db), "--json")


def test_sweep_status_never_unpickles_a_planted_result(
    db_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("submitit")
    marker = tmp_path / "code-ran"
    folder = _planted_sweep(db_path, "planted")
    (folder / "planted_0_result.pkl").write_bytes(pickle.dumps(("success", _Planted(marker))))

    result = _status(capsys, db_path)

    assert not marker.exists(), "--status ran the code of a planted pickle"
    assert result.code == 0, result.err
    (job,) = json.loads(result.out)
    assert job["state"] == "failed" and job["detail"]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        pytest.param(
            '{"state": "done", "points": "many", "device": 3}', "not a memprobe job result", id="types"
        ),
        pytest.param("[1, 2, 3]", "not a memprobe job result", id="a list"),
        pytest.param('{"state": "exploded"}', "not a memprobe job result", id="state"),
        pytest.param("{not json", "unreadable", id="not JSON"),
        pytest.param("[" * 100_000 + "]" * 100_000, "unreadable", id="deeply nested"),
    ],
)
def test_a_result_of_the_wrong_shape_is_a_failed_job_with_its_reason(
    db_path: Path, capsys: pytest.CaptureFixture[str], content: str, says: str
) -> None:
    pytest.importorskip("submitit")
    folder = _planted_sweep(db_path, "planted")
    (folder / "planted_result.json").write_text(content)
    result = _status(capsys, db_path)
    assert result.code == 0, result.err
    (job,) = json.loads(result.out)
    assert job["state"] == "failed" and says in job["detail"], job


def test_a_result_written_by_the_job_function_is_read(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("submitit")
    folder = _planted_sweep(db_path, "planted")
    (folder / "planted_result.json").write_text('{"state": "done", "points": 12, "device": "trace"}')
    (job,) = json.loads(_status(capsys, db_path).out)
    assert (job["state"], job["detail"]) == ("done", "12 points on trace")


def test_a_sweep_job_leaves_json_and_its_status_reads_no_pickle(
    db_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("submitit")
    arguments = (
        "sweep",
        "--arch",
        TINY,
        "--device",
        "trace",
        "--gpu-mem",
        SMALL_BUDGET,
        "--db",
        str(db_path),
    )
    first = invoke(capsys, *arguments, "--json")
    assert first.code == 0, first.err
    (job,) = json.loads(first.out)
    assert job["state"] == "done"
    assert (
        json.loads((Path(f"{db_path}.sweep") / f"{job['job_id']}_result.json").read_text())["state"] == "done"
    )

    def refuse(*args: object, **kwargs: object) -> object:
        raise AssertionError("memprobe unpickled a file it did not write")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    (again,) = json.loads(_status(capsys, db_path).out)
    assert again["state"] == "done"


# --- 9. user code's stdout goes to stderr ---------------------------------------------------

TALKATIVE = """\
print("the import talks")
class Net(TinyNet):
    def forward(self, x):
        print("the forward pass talks")
        return super().forward(x)
def make(i, o):
    print("the factory talks")
    return Net(i, o)
def step(model, optimizer, inputs, labels, scaler):
    print("the step talks")
    plain_step(model, optimizer, inputs, labels, scaler)
"""


def test_user_code_printing_leaves_json_output_parseable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _user_module(tmp_path, "talkative_model", TALKATIVE, monkeypatch)
    result = invoke(capsys, *PROBE, "--arch", f"{module}:make", "--step", f"{module}:step", "--json")
    assert result.code == 0, result.err
    json.loads(result.out)
    for said in ("the import talks", "the factory talks", "the step talks", "the forward pass talks"):
        assert said in result.err and said not in result.out


def test_a_talkative_model_keeps_its_own_step_json_parseable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _user_module(tmp_path, "talkative_net", TALKATIVE, monkeypatch)
    result = invoke(capsys, *PROBE, "--arch", f"{module}:make", "--json")  # memprobe's own step
    assert result.code == 0, result.err
    json.loads(result.out)
    assert "the forward pass talks" in result.err


# --- 10. user code that misbehaves in odd ways -----------------------------------------------

UNPRINTABLE = """\
class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no text for you")
class UnprintableBase(BaseException):
    def __str__(self):
        raise RuntimeError("no text for you")
def factory_raises(i, o):
    raise Unprintable()
def factory_raises_base(i, o):
    raise UnprintableBase()
def make(i, o):
    return TinyNet(i, o)
def step_raises(model, optimizer, inputs, labels, scaler):
    raise Unprintable()
class RaisingNet(TinyNet):
    def forward(self, x):
        raise Unprintable()
def forward_raises(i, o):
    return RaisingNet(i, o)
"""


@pytest.mark.parametrize(
    ("arch", "step", "code"),
    [
        ("factory_raises", "memprobe", 1),
        ("factory_raises_base", "memprobe", 1),
        ("make", "step_raises", 1),
        ("forward_raises", "memprobe", 1),
    ],
)
def test_an_exception_that_cannot_be_printed_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    arch: str,
    step: str,
    code: int,
) -> None:
    module = _user_module(tmp_path, f"unprintable_{arch}_{step}", UNPRINTABLE, monkeypatch)
    chosen = step if step == "memprobe" else f"{module}:{step}"
    result = invoke(capsys, *PROBE, "--arch", f"{module}:{arch}", "--step", chosen)
    assert result.code == code, result.err
    assert "Unprintable" in _one_error_line(result)


def test_an_import_raising_an_unprintable_exception_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = UNPRINTABLE + "raise Unprintable()\n"
    module = _user_module(tmp_path, "unprintable_import", source, monkeypatch)
    result = invoke(capsys, *PROBE, "--arch", f"{module}:make")
    assert result.code == 2, result.err
    assert "Unprintable" in _one_error_line(result)


THREADED = """\
def make(i, o):
    threading.Thread(target=time.sleep, args=(3600,), name="forever").start()  # not a daemon
    return TinyNet(i, o)
def make_then_fail(i, o):
    threading.Thread(target=time.sleep, args=(3600,), name="forever").start()
    raise ValueError("built nothing")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="a real process, ended by its own threads")
@pytest.mark.parametrize(("factory", "code"), [("make", 0), ("make_then_fail", 1)])
def test_a_thread_left_running_by_user_code_does_not_keep_memprobe_alive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, factory: str, code: int
) -> None:
    module = _user_module(tmp_path, "threaded_model", THREADED, monkeypatch)
    result = run_cli(*PROBE, "--arch", f"{module}:{factory}", "--json", cwd=tmp_path, timeout=120)
    assert result.code == code, result.err
    assert "Traceback" not in result.err
    if code == 0:
        json.loads(result.out)
    else:
        assert "built nothing" in _one_error_line(result)


# --- 4. echoed inputs are cut short --------------------------------------------------------


@pytest.mark.parametrize("command", ["suggest", "plan", "probe"])
def test_a_huge_arch_is_not_echoed_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    db = make_calibrated_db(tmp_path / "calib.sqlite")
    huge = "x" * 5_000_000
    extra = ("--gpu-mem", "24GiB", "--db", str(db)) if command != "probe" else ("--device", "trace")
    result = invoke(capsys, command, "--arch", huge, "--patch", "64", "64", "64", *extra)
    assert result.code == 2, result.err[:300]
    line = _one_error_line(result)
    assert len(line) <= 600 and "unknown architecture" in line, line[:300]


def test_every_error_line_is_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    result = invoke(
        capsys, "suggest", "--patch", "64", "64", "64", "--gpu-mem", "24GiB", "--precision", "p" * 100_000
    )
    assert result.code == 2
    assert len(_one_error_line(result)) <= 600


# --- 15. messages that mislead -------------------------------------------------------------


def test_suggest_options_without_patch_does_not_blame_all_archs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = make_calibrated_db(tmp_path / "calib.sqlite")
    result = invoke(capsys, "suggest", "--batch", "2", "--gpu-mem", "24GiB", "--options", "--db", str(db))
    assert result.code == 2
    line = _one_error_line(result)
    assert "--all-archs" not in line and "--patch" in line
    both = invoke(
        capsys, "suggest", "--patch", "64", "64", "64", "--gpu-mem", "24GiB", "--options", "--all-archs",
        "--db", str(db),
    )  # fmt: skip
    assert both.code == 2 and "--all-archs" in _one_error_line(both)


@pytest.mark.parametrize("raised", [KeyboardInterrupt, TerminatedError], ids=["SIGINT", "SIGTERM"])
def test_interrupting_a_command_that_measures_nothing_claims_no_saved_measurements(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, raised: type
) -> None:
    import memprobe.api
    from memprobe.core.user_code import note_interrupt

    db = make_calibrated_db(tmp_path / "calib.sqlite")

    def interrupted(*args: object, **kwargs: object) -> object:
        if raised is KeyboardInterrupt:
            note_interrupt(2, None)  # as a real Ctrl-C does
        raise raised

    monkeypatch.setattr(memprobe.api, "max_batch_size", interrupted)
    result = invoke(capsys, "suggest", "--patch", "64", "64", "64", "--gpu-mem", "24GiB", "--db", str(db))
    assert result.code == 130
    line = _one_error_line(result)
    assert line.startswith("memprobe: error: interrupted") and "measurement" not in line


def test_interrupting_a_measuring_command_says_its_measurements_are_saved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import memprobe.backends

    def interrupted(*args: object, **kwargs: object) -> object:
        raise TerminatedError

    monkeypatch.setattr(memprobe.backends, "get_backend", interrupted)
    result = invoke(capsys, *PROBE, "--arch", TINY)
    assert result.code == 130
    assert "every measurement taken so far is saved" in _one_error_line(result)


def test_a_huge_count_option_names_its_real_range(capsys: pytest.CaptureFixture[str]) -> None:
    result = invoke(capsys, "sweep", "--arch", TINY, "--status", "--slurm-time", str(2**63 - 1))
    assert result.code == 2
    line = _one_error_line(result)
    assert "--slurm-time" in line and "at most 525600" in line, line


def test_a_count_from_0_names_its_range() -> None:
    import click

    from memprobe.cli.options import INDEX

    with pytest.raises(click.BadParameter, match="from 0 to 4611686018427387904"):
        INDEX.convert(str(2**63 - 1), None, None)
    assert INDEX.convert("0", None, None) == 0


def test_an_isolated_probe_ends_when_its_result_is_reported_despite_a_lingering_thread(
    tmp_path: Path,
) -> None:
    """The child of --isolate exits once it printed its measurement (a thread user code left is no hang)."""
    module = tmp_path / "lingering_child_model.py"
    module.write_text(
        textwrap.dedent(
            """
            import threading, time
            import torch

            def make(in_channels, out_channels):
                threading.Thread(target=time.sleep, args=(3600,)).start()
                return torch.nn.Conv3d(in_channels, out_channels, 1)
            """
        )
    )
    started = time.perf_counter()
    result = run_cli("probe", "--arch", "lingering_child_model:make", "--patch", "8", "8", "8", "--batch", "1",
                     "--device", "trace", "--isolate", "--json", timeout=240, cwd=tmp_path)  # fmt: skip
    assert result.code == 0, result.err
    assert json.loads(result.out)["peak_allocated_bytes"] > 0 and time.perf_counter() - started < 200
