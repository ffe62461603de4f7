"""Run each probe in a child process, so a crash becomes a failed measurement.

A segfault, a CUDA error that poisons the context, or a kill by the OOM killer ends only the
child; the parent records what happened and goes on with the next probe.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

from memprobe.backends.base import Backend
from memprobe.config import StepConfig
from memprobe.enums import DeviceKind
from memprobe.measurement import Environment, Measurement

CHILD_TIMEOUT_SECONDS = 3600


def _describe_exit(returncode: int, stderr: str) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.Signals._value2member_map_ else str(-returncode)
        return f"the probe's process was killed by {name}"
    last_line = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "")
    return f"the probe's process exited with code {returncode}: {last_line}"[:500]


class IsolatedBackend:
    """Wrap a backend: each ``measure`` runs ``python -m memprobe.backends.worker`` once."""

    def __init__(self, inner: Backend, budget_bytes: int | None = None) -> None:
        self.inner = inner
        self.kind: DeviceKind = inner.kind
        self.budget_bytes = budget_bytes

    def environment(self) -> Environment:
        return self.inner.environment()

    def measure(self, config: StepConfig) -> Measurement:
        request = json.dumps({"device": self.kind.value, "budget_bytes": self.budget_bytes, "config": config.to_dict()})
        completed = subprocess.run(
            [sys.executable, "-m", "memprobe.backends.worker"], input=request, capture_output=True, text=True,
            timeout=CHILD_TIMEOUT_SECONDS, check=False,
        )
        if completed.returncode == 0:
            return Measurement.from_dict(json.loads(completed.stdout.strip().splitlines()[-1]))
        return Measurement(config, self.environment(), None, error=_describe_exit(completed.returncode, completed.stderr),
                           budget_bytes=self.budget_bytes)


def _child_main() -> int:
    """Measure the configuration read from stdin and print the measurement as JSON."""
    from memprobe.backends.base import get_backend
    from memprobe.enums import OptimizerName, Precision

    request: dict[str, Any] = json.loads(sys.stdin.read())
    data = request["config"]
    config = StepConfig(data["arch"], tuple(data["patch"]), data["batch"], Precision(data["precision"]),  # type: ignore[arg-type]
                        OptimizerName(data["optimizer"]), data["in_channels"], data["out_channels"],
                        data["deep_supervision"])
    measurement = get_backend(request["device"], budget_bytes=request["budget_bytes"]).measure(config)
    print(json.dumps(measurement.to_dict()))
    return 0
