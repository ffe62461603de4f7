"""The user's model cannot hijack memprobe (#15): BaseExceptions end in "the model exited ...", exit 1.

Each case writes a real model module, then probes it as a real process, with and without
--isolate: one error line, exit code 1, no traceback, no usage message that looks like memprobe's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import MEMPROBE, run_cli, wait_for

HEADER = "import os, sys\nfrom tests.tiny_models import TinyNet\n"

MODELS = {
    "factory calls sys.exit(0)": "def make(i, o):\n    sys.exit(0)\n",
    "factory calls sys.exit with text": "def make(i, o):\n    sys.exit('bye')\n",
    "factory raises KeyboardInterrupt": "def make(i, o):\n    raise KeyboardInterrupt\n",
    "factory raises GeneratorExit": "def make(i, o):\n    raise GeneratorExit('odd')\n",
    "import calls sys.exit": "sys.exit(0)\ndef make(i, o):\n    return TinyNet(i, o)\n",
    "import parses arguments": textwrap.dedent(
        """\
        import argparse
        parser = argparse.ArgumentParser()
        parser.add_argument('--data', required=True)
        parser.parse_args()
        def make(i, o):
            return TinyNet(i, o)
        """
    ),
    "forward calls sys.exit": textwrap.dedent(
        """\
        class Net(TinyNet):
            def forward(self, x):
                sys.exit(0)
        def make(i, o):
            return Net(i, o)
        """
    ),
    "forward raises KeyboardInterrupt": textwrap.dedent(
        """\
        class Net(TinyNet):
            def forward(self, x):
                raise KeyboardInterrupt
        def make(i, o):
            return Net(i, o)
        """
    ),
    "forward raises a BaseException": textwrap.dedent(
        """\
        class Stop(BaseException):
            pass
        class Net(TinyNet):
            def forward(self, x):
                raise Stop('mine')
        def make(i, o):
            return Net(i, o)
        """
    ),
}


def _write_model(folder: Path, source: str) -> str:
    (folder / "user_model.py").write_text(HEADER + source)
    return "user_model:make"


def _probe(folder: Path, arch: str, *extra: str) -> object:
    return run_cli(
        "probe",
        "--arch",
        arch,
        "--patch",
        "16",
        "16",
        "16",
        "--batch",
        "1",
        "--device",
        "trace",
        *extra,
        cwd=folder,
        timeout=300,
    )


ISOLATED = ("factory calls sys.exit(0)", "import parses arguments", "forward raises KeyboardInterrupt")
CASES = [(case, False) for case in MODELS] + [(case, True) for case in ISOLATED]


@pytest.mark.parametrize(("case", "isolate"), CASES)
def test_user_code_that_exits_ends_in_one_line_and_exit_1(tmp_path: Path, case: str, isolate: bool) -> None:
    arch = _write_model(tmp_path, MODELS[case])
    result = _probe(tmp_path, arch, *(["--isolate"] if isolate else []))
    assert result.code == 1, (result.code, result.err)  # type: ignore[attr-defined]
    assert len(result.error_lines) == 1 and "the model exited" in result.error_lines[0]  # type: ignore[attr-defined]
    assert "Traceback" not in result.err and "usage: memprobe" not in result.err  # type: ignore[attr-defined]


def test_os_exit_in_an_isolated_probe_exits_1(tmp_path: Path) -> None:
    result = _probe(tmp_path, "tests.crashy_models:exiting_net", "--isolate")
    assert result.code == 1 and "the model exited" in result.error_lines[0]  # type: ignore[attr-defined]
    assert "exited with code 3" in result.error_lines[0]  # type: ignore[attr-defined]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_isolated_worker_dies_with_its_parent(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [
            *MEMPROBE,
            "probe",
            "--arch",
            "tests.crashy_models:hanging_net",
            "--patch",
            "16",
            "16",
            "16",
            "--batch",
            "1",
            "--device",
            "trace",
            "--isolate",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    try:
        children: list[int] = []

        def worker_started() -> bool:
            children[:] = _children(parent.pid)
            return bool(children)

        wait_for(worker_started, 120, "the isolated worker")
        time.sleep(1.0)  # past the worker's start, into the model
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        wait_for(lambda: not any(_alive(child) for child in children), 30, "the orphaned worker to die")
    finally:
        if parent.poll() is None:
            parent.kill()
        for child in _children(parent.pid):
            os.kill(child, signal.SIGKILL)
