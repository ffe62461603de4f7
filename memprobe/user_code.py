"""The user's model (its import, factory and forward) must not end memprobe its own way.

``sys.exit``, ``KeyboardInterrupt`` and any other BaseException raised by user code become a
ModelError, "the model exited ...", exit code 1. The rule that tells a ``KeyboardInterrupt``
raised by the model from a real Ctrl-C: the CLI installs :func:`note_interrupt` as the SIGINT
handler, which records the signal before raising; a KeyboardInterrupt with no recorded signal
came from user code. Where memprobe's handler is not installed (memprobe used as a library),
every KeyboardInterrupt is taken as a real Ctrl-C; where SIGINT is ignored (an isolated
probe's child), none is. ``os._exit`` cannot be caught in-process: with ``--isolate`` it ends
only the child, and the probe fails with exit code 1.
"""

from __future__ import annotations

import signal
from types import FrameType

from memprobe.errors import MemprobeError, ModelError, TerminatedError

_received: list[int] = []  # SIGINTs delivered to this process (a signal is process-wide state)


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


def model_exited(error: BaseException, what: str) -> ModelError:
    """The one-line error for user code that raised a BaseException while ``what``."""
    if isinstance(error, SystemExit):
        detail = f"called sys.exit({error.code!r})"
    elif isinstance(error, KeyboardInterrupt):
        detail = "raised KeyboardInterrupt (no Ctrl-C was pressed)"
    else:
        detail = f"raised {type(error).__name__}: {error}"
    return ModelError(f"the model exited while {what}: it {detail}")
