"""The user's code (its model module, factory, forward and training step) runs inside one wrapper.

:func:`running_user_code` is that wrapper; every place memprobe imports or calls user code enters it:

- its stdout goes to stderr, so a ``print`` cannot corrupt ``--json`` output;
- ``sys.argv`` is its own (``[name]``), so an argument parser it runs never reads memprobe's;
- ``sys.exit``, ``KeyboardInterrupt`` and any other BaseException it raises become a
  ModelError, "the model exited ...", exit code 1.

An exception is described with :func:`describe`, which works even when its ``__str__`` raises.
A non-daemon thread it leaves running cannot keep memprobe alive: ``memprobe.cli.main.main`` ends
the process once its work is done.

The rule that tells a ``KeyboardInterrupt`` raised by the model from a real Ctrl-C: the CLI
installs :func:`note_interrupt` as the SIGINT handler, which records the signal before raising;
a KeyboardInterrupt with no recorded signal came from user code. Where memprobe's handler is
not installed (memprobe used as a library), every KeyboardInterrupt is taken as a real Ctrl-C;
where SIGINT is ignored (an isolated probe's child), none is. ``os._exit`` cannot be caught
in-process: with ``--isolate`` it ends only the child, and the probe fails with exit code 1.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from types import FrameType

from memprobe.core.errors import MemprobeError, ModelError, TerminatedError

_received: list[int] = []  # SIGINTs delivered to this process (a signal is process-wide state)
_UNREADABLE = "(its message cannot be read: its __str__ raised)"


def note_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT handler: remember that Ctrl-C was really pressed, then interrupt as Python does."""
    _received.append(signum)
    raise KeyboardInterrupt


def _real_interrupt() -> bool:
    handler = signal.getsignal(signal.SIGINT)
    if handler is signal.SIG_IGN:
        return False
    if handler is not note_interrupt:
        return True
    return bool(_received)


def raised_by_user_code(error: BaseException) -> bool:
    """Whether ``error`` (not an ordinary Exception) is user code ending memprobe, not a signal."""
    if isinstance(error, (MemprobeError, TerminatedError)):
        return False
    if isinstance(error, KeyboardInterrupt):
        return not _real_interrupt()
    return True


def message(error: BaseException) -> str | None:
    """The first line of ``error``'s message ("" for none); None when its ``__str__`` raises."""
    try:
        text = str(error)
    except Exception:  # user code's __str__ can fail in any way
        return None
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def describe(error: BaseException) -> str:
    """``Type: first line of its message``, for any exception, even one whose ``__str__`` raises."""
    text = message(error)
    name = type(error).__name__
    if text is None:
        return f"{name} {_UNREADABLE}"
    return f"{name}: {text}" if text else name


def model_exited(error: BaseException, what: str) -> ModelError:
    """The one-line error for user code that raised a BaseException while ``what``."""
    if isinstance(error, SystemExit):
        detail = f"called sys.exit({_code_text(error.code)})"
    elif isinstance(error, KeyboardInterrupt):
        detail = "raised KeyboardInterrupt (no Ctrl-C was pressed)"
    else:
        detail = f"raised {describe(error)}"
    return ModelError(f"the model exited while {what}: it {detail}")


def _code_text(code: object) -> str:
    try:
        return repr(code)
    except Exception:  # an object whose __repr__ raises
        return type(code).__name__


@contextlib.contextmanager
def running_user_code(what: str, argv: str | None = None) -> Iterator[None]:
    """Run the user's code of the ``with`` block: ``what`` says what it does ("building unet").

    Its stdout goes to stderr; with ``argv``, ``sys.argv`` is ``[argv]``; a BaseException it
    raises (not a real Ctrl-C or SIGTERM) becomes a ModelError. Exceptions pass unchanged:
    the caller says what failed, with :func:`describe`.
    """
    saved_argv = sys.argv
    if argv is not None:
        sys.argv = [argv]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except Exception:
        raise
    except BaseException as error:
        if not raised_by_user_code(error):
            raise
        raise model_exited(error, what) from None
    finally:
        sys.argv = saved_argv
