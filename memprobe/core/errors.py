"""The MemprobeError family: every failure a user can act on, with its exit code."""

from __future__ import annotations


class MemprobeError(Exception):
    """A failure that is reported to the user as one line, with an exit code."""

    exit_code = 2


class InvalidInputError(MemprobeError, ValueError):
    """The user asked for something that cannot be done as asked (exit code 2)."""


class ModelError(MemprobeError):
    """The model itself failed: it could not be built or its training step raised (exit code 1)."""

    exit_code = 1


class DatabaseError(MemprobeError):
    """The benchmark database cannot be opened, read or written as asked."""


class NoCalibrationError(MemprobeError, LookupError):
    """No calibration answers the question; the message says what to run."""


class DeviceUnavailableError(MemprobeError):
    """The measuring device asked for is not present on this machine."""


class NothingFitsError(MemprobeError):
    """No configuration of the kind asked for fits the budget; the message gives the smallest need.

    Exit code 3, so scripts can tell "does not fit" from a mistake in the input (2).
    """

    exit_code = 3


class TerminatedError(BaseException):
    """SIGTERM, turned into an exception so the same clean exit as Ctrl-C runs.

    A BaseException, like KeyboardInterrupt, so no ``except Exception`` on the way (a backend
    turning step failures into ModelError) mistakes it for a failure of the model.
    """


class StandInCalibrationWarning(UserWarning):
    """A calibration of another device answered (trace for a GPU without its own).

    Library callers see it as a Python warning; the CLI prints it once, as the plan's own warning.
    """
