"""The ``memprobe`` command: parses, calls the library, hands the result to a reporter.

Every MemprobeError becomes one line on stderr and its exit code here, and nowhere else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from typing import Any

import click

from memprobe.__version__ import __version__
from memprobe.cli.commands import LazyGroup
from memprobe.core.errors import MemprobeError, StandInCalibrationWarning, TerminatedError
from memprobe.core.input_files import shown
from memprobe.core.user_code import note_interrupt

INTERRUPTED_EXIT_CODE = 130
_INTERRUPTED = "interrupted"
_MEASUREMENTS_KEPT = "interrupted: every measurement taken so far is saved; run the same command to resume"
MEASURING_COMMANDS = frozenset({"calibrate", "sweep", "report", "probe", "verify"})
MAX_ERROR_CHARS = 500  # an echoed value (a 5 MB --arch) is cut, so the error stays one short line


def _raise_terminated(signum: int, frame: Any) -> None:
    raise TerminatedError


@click.group(
    cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="memprobe")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.pass_context
def cli(context: click.Context, debug: bool) -> None:
    """Measured GPU-memory planning for 3D segmentation training.

    \b
    memprobe probe --arch mednext --patch 128 128 128 --batch 2
    memprobe calibrate --arch mednext
    memprobe suggest --patch 128 128 128 --gpu-mem 24GiB
    """
    context.obj = {"debug": debug}


def _fail(message: str, code: int) -> None:
    click.echo(f"memprobe: error: {shown(message, MAX_ERROR_CHARS)}", err=True)
    sys.exit(code)


def _interrupted(arguments: list[str]) -> str:
    """What an interrupt leaves: only a measuring command has measurements to keep."""
    command = next((argument for argument in arguments if not argument.startswith("-")), None)
    return _MEASUREMENTS_KEPT if command in MEASURING_COMMANDS else _INTERRUPTED


def _command_path(error: click.UsageError, arguments: list[str]) -> str:
    """The command whose --help answers a usage error (the parser does not always say)."""
    if error.ctx is not None:
        return error.ctx.command_path
    command = next((argument for argument in arguments if argument in cli.commands), None)
    return f"memprobe {command}" if command else "memprobe"


class _WarningLine(logging.Handler):
    """The library's warnings (a skipped database row), one clean line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"memprobe: warning: {record.getMessage()}", err=True)


def _show_library_warnings() -> None:
    logger = logging.getLogger("memprobe")
    if not any(isinstance(handler, _WarningLine) for handler in logger.handlers):
        logger.addHandler(_WarningLine(logging.WARNING))
    logger.propagate = False


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every error is one line and an exit code (``--debug`` shows tracebacks)."""
    arguments = sys.argv[1:] if argv is None else argv
    debug = "--debug" in arguments
    if not [argument for argument in arguments if argument != "--debug"]:
        arguments = ["--help"]  # bare `memprobe` shows the help, exit 0
    # A stand-in calibration's warning reaches the user once, as the plan's own warning line.
    warnings.filterwarnings("ignore", category=StandInCalibrationWarning)
    _show_library_warnings()
    signal.signal(signal.SIGTERM, _raise_terminated)
    previous_sigint = signal.signal(signal.SIGINT, note_interrupt)  # a real Ctrl-C, told from user code's
    try:
        _run(arguments, debug)
    except SystemExit as done:
        if argv is None:  # memprobe is the program, not a library caller's function
            _exit_past_lingering_threads(done.code)
        raise
    else:
        if argv is None:
            _exit_past_lingering_threads(0)
    finally:
        signal.signal(signal.SIGINT, previous_sigint)


def _exit_past_lingering_threads(code: object) -> None:
    """End the process now when user code left a non-daemon thread running: Python would wait for it."""
    main_thread = threading.main_thread()
    if not any(t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()):
        return
    status = code if isinstance(code, int) else 0 if code is None else 1
    if not isinstance(code, (int, type(None))):
        click.echo(str(code), err=True)  # as sys.exit("text") would print it
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more reaches the reader
            stream.flush()
    os._exit(status)


def _run(arguments: list[str], debug: bool) -> None:
    try:
        code = cli.main(args=arguments, prog_name="memprobe", standalone_mode=False)
        if isinstance(code, int) and code:  # a command's context.exit(code), e.g. `db check` finding bad rows
            sys.exit(code)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.Abort as abort:  # click turns Ctrl-C into Abort
        interrupted = isinstance(abort.__cause__, KeyboardInterrupt)
        _fail(_interrupted(arguments) if interrupted else "aborted", INTERRUPTED_EXIT_CODE)
    except click.UsageError as error:
        _fail(f"{error.format_message()} (see `{_command_path(error, arguments)} --help`)", error.exit_code)
    except MemprobeError as error:
        if debug:  # the traceback, then the same line and exit code as without --debug
            traceback.print_exc()
        _fail(str(error).splitlines()[0] if str(error) else type(error).__name__, error.exit_code)
    except (KeyboardInterrupt, TerminatedError):
        _fail(_interrupted(arguments), INTERRUPTED_EXIT_CODE)
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    main()
