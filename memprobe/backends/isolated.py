"""Run each probe (a training step or a sliding-window inference) in a child process, so a crash becomes a failed measurement.

A segfault, a CUDA error that poisons the context, or a kill by the OOM killer ends only the
child; the parent records what happened and goes on with the next probe. A model that raises
is not a crash: the child reports its MemprobeError and the parent raises the same error, as
a probe without isolation would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, overload

from memprobe.backends.base import Backend, InferenceBackend
from memprobe.core import errors
from memprobe.core.config import StepConfig
from memprobe.core.enums import DeviceKind
from memprobe.core.inference_config import InferenceConfig
from memprobe.core.inference_measurement import InferenceMeasurement
from memprobe.core.measurement import Environment, Measurement

CHILD_TIMEOUT_SECONDS = 3600
_ERROR_KEY = "memprobe_error"


def _describe_exit(returncode: int, stderr: str) -> str:
    if returncode < 0:
        name = (
            signal.Signals(-returncode).name
            if -returncode in signal.Signals._value2member_map_
            else str(-returncode)
        )
        return f"the probe's process was killed by {name}"
    last_line = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "")
    said = f": {last_line}" if last_line else ""
    return f"the probe's process exited with code {returncode}{said}"[:500]


def _last_json_line(stdout: str) -> dict[str, Any] | None:
    """The child's report: the last line of its output, if that is a JSON object."""
    last_line = next((line for line in reversed(stdout.splitlines()) if line.strip()), "")
    try:
        report = json.loads(last_line)
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def _error_class(name: object) -> type[errors.MemprobeError]:
    found = getattr(errors, str(name), None)
    return found if isinstance(found, type) and issubclass(found, errors.MemprobeError) else errors.ModelError


INFERENCE = "inference"  # the request's mode for a sliding-window inference


class IsolatedBackend:
    """Wrap a backend: each ``measure`` runs ``python -m memprobe.backends.worker`` once.

    The configuration's type says what the child measures: a ``StepConfig`` a training step, an
    ``InferenceConfig`` a sliding-window inference; either comes back as its measurement.
    """

    def __init__(self, inner: Backend | InferenceBackend, budget_bytes: int | None = None) -> None:
        self.inner = inner
        self.kind: DeviceKind = inner.kind
        self.budget_bytes = budget_bytes
        self._environment: Environment | None = None

    def environment(self) -> Environment:
        """Asked of a child too: on CUDA the parent must not hold a context on the measured GPU."""
        if self._environment is None:
            completed = subprocess.run(
                [sys.executable, "-m", "memprobe.backends.worker"],
                input=json.dumps(
                    {"device": self.kind.value, "budget_bytes": self.budget_bytes, "environment": True}
                ),
                capture_output=True,
                encoding="utf-8",
                errors="replace",
                timeout=600,
                check=False,
            )
            report = _last_json_line(completed.stdout)
            if completed.returncode != 0 or report is None:
                raise errors.DeviceUnavailableError(
                    f"cannot start an isolated probe: {_describe_exit(completed.returncode, completed.stderr)}"
                )
            self._environment = Environment(**report)
        return self._environment

    @overload
    def measure(self, config: StepConfig) -> Measurement: ...
    @overload
    def measure(self, config: InferenceConfig) -> InferenceMeasurement: ...
    def measure(self, config: StepConfig | InferenceConfig) -> Measurement | InferenceMeasurement:
        inference = isinstance(config, InferenceConfig)
        request = json.dumps(
            {
                "device": self.kind.value,
                "budget_bytes": self.budget_bytes,
                "config": config.to_dict(),
                "parent_pid": os.getpid(),
                **({"mode": INFERENCE} if inference else {}),
            }
        )
        try:
            completed = subprocess.run(
                [sys.executable, "-m", "memprobe.backends.worker"],
                input=request,
                capture_output=True,
                encoding="utf-8",
                errors="replace",
                timeout=CHILD_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return self._failed(
                config, f"the probe's process did not finish within {CHILD_TIMEOUT_SECONDS} s"
            )
        report = _last_json_line(completed.stdout)
        if report is not None and _ERROR_KEY in report:
            raise _error_class(report[_ERROR_KEY])(str(report.get("message", "")))
        if completed.returncode == 0 and report is not None:
            return InferenceMeasurement.from_dict(report) if inference else Measurement.from_dict(report)
        return self._failed(config, _describe_exit(completed.returncode, completed.stderr))

    def _failed(self, config: StepConfig | InferenceConfig, error: str) -> Measurement | InferenceMeasurement:
        if isinstance(config, InferenceConfig):
            return InferenceMeasurement(config, self.environment(), None, error=error)
        return Measurement(config, self.environment(), None, error=error, budget_bytes=self.budget_bytes)


def _report(data: dict[str, Any]) -> None:
    # On a line of its own: the model may have printed to stdout without a final newline.
    sys.stdout.write("\n" + json.dumps(data) + "\n")
    sys.stdout.flush()


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: object) -> None:
    """Have the kernel kill this process when the parent dies (Linux), so no probe runs on orphaned.

    Elsewhere, or if the parent is already gone, a thread polls the parent's pid instead.
    """
    if not isinstance(parent_pid, int):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        armed = False
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:
        threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


def run_child() -> int:
    """Measure the configuration read from stdin and print the measurement as JSON."""
    from memprobe.backends import get_backend, get_inference_backend

    # Ctrl-C reaches the whole process group: the parent stops, and ends this process itself,
    # so an interrupted probe is never recorded as a crashed one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    request: dict[str, Any] = json.loads(sys.stdin.read())
    _die_with_parent(request.get("parent_pid"))
    if request.get("environment"):
        _report(get_backend(request["device"], budget_bytes=request["budget_bytes"]).environment().to_dict())
        return 0
    try:
        measurement: Measurement | InferenceMeasurement
        if request.get("mode") == INFERENCE:
            inference = InferenceConfig.from_dict(request["config"])
            measurement = get_inference_backend(request["device"]).measure(inference)
        else:
            config = StepConfig.from_dict(request["config"])
            measurement = get_backend(request["device"], budget_bytes=request["budget_bytes"]).measure(config)
    except errors.MemprobeError as error:
        _report({_ERROR_KEY: type(error).__name__, "message": str(error)})
        return error.exit_code
    _report(measurement.to_dict())
    return 0
