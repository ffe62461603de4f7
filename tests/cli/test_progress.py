"""Progress of long commands: a bar on a terminal, a line per step in a log; the CLI calls the library."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from memprobe.cli.progress import Progress
from tests.helpers import SMALL_BUDGET, TINY, invoke


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_each_step_is_one_line() -> None:
    stream = io.StringIO()
    with Progress("calibrating mednext", 2, stream) as progress:
        progress.advance("mednext 64x64x64 b1 fp32")
        progress.advance("running now", 0)
        progress.advance("mednext 64x64x64 b2 fp32")
        progress.advance("mednext 96x96x96 b1 fp32")  # more steps than expected: the length grows
    assert stream.getvalue().splitlines() == [
        "[1/2] calibrating mednext: mednext 64x64x64 b1 fp32",
        "[2/2] calibrating mednext: mednext 64x64x64 b2 fp32",
        "[3/3] calibrating mednext: mednext 96x96x96 b1 fp32",
    ]


def test_on_a_terminal_a_bar_is_drawn() -> None:
    stream = _Terminal()
    with Progress("calibrating mednext", 4, stream) as progress:
        progress.advance("mednext 64x64x64 b1 fp32")
    drawn = stream.getvalue()
    assert "calibrating mednext" in drawn and "[1/" not in drawn and "1/4" in drawn


def test_calibrate_runs_the_library_function_with_a_callback(
    monkeypatch: pytest.MonkeyPatch, db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``memprobe calibrate`` is a view over ``memprobe.calibrate``; its progress comes from the callback."""
    import memprobe.api

    calls: list[dict[str, Any]] = []
    library = memprobe.api.calibrate

    def recording(*arguments: Any, **options: Any) -> Any:
        calls.append(options)
        return library(*arguments, **options)

    monkeypatch.setattr(memprobe.api, "calibrate", recording)
    result = invoke(capsys, "calibrate", "--arch", TINY, "--device", "trace", "--gpu-mem", SMALL_BUDGET,
                    "--db", str(db_path))  # fmt: skip
    assert result.code == 0, result.err
    assert len(calls) == 1 and callable(calls[0]["on_measurement"])
    lines = [line for line in result.err.splitlines() if line.startswith("[")]
    assert lines[0].startswith("[1/20] calibrating tests.tiny_models:tiny_net (bf16-mixed) on trace: ")
    assert len(lines) >= 14  # ten design points and four held out, each on its own line


def test_nothing_is_drawn_before_the_first_step() -> None:
    """Input refused before anything runs leaves only its one error line on the terminal."""
    stream = _Terminal()
    with pytest.raises(ValueError), Progress("calibrating mednext", 4, stream):
        raise ValueError("refused")
    assert stream.getvalue() == ""
