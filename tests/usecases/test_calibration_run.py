"""calibration_run's limit searches follow suggest's rule: the whole need within the budget."""

from __future__ import annotations

from memprobe.backends.recorder import MeasurementLog
from memprobe.calibration_run import search_largest_batch
from memprobe.core.archs.registry import resolve_arch
from memprobe.core.config import StepConfig
from memprobe.core.enums import DeviceKind
from memprobe.core.measurement import Environment, Measurement
from memprobe.planning.need import need_from_peaks
from memprobe.planning.size_search import plan_batch
from tests.helpers import make_calibration

GIB = 2**30
PER_SAMPLE = 300 * 2**20


class _LinearBackend:
    """Every step's allocated peak is 300 MiB a sample; its reserve 10% more."""

    kind = DeviceKind.TRACE

    def environment(self) -> Environment:
        return Environment("trace", "trace")

    def measure(self, config: StepConfig) -> Measurement:
        allocated = PER_SAMPLE * config.batch
        return Measurement(config, self.environment(), allocated, peak_reserved_bytes=round(1.1 * allocated))


def test_the_batch_search_judges_measured_steps_by_their_whole_need() -> None:
    calibration = make_calibration()
    budget = 24 * GIB
    log = MeasurementLog(_LinearBackend(), None, budget)
    config = StepConfig(arch="mednext", patch=(64, 64, 64), batch=1)
    found = search_largest_batch(log, config, budget, calibration, resolve_arch("mednext")).largest
    need = lambda b: need_from_peaks(calibration, PER_SAMPLE * b, 1.1 * PER_SAMPLE * b).total_bytes
    assert need(found) <= budget < need(found + 1)
    assert found < budget // PER_SAMPLE  # the allocated peak alone would allow more
    # the rule plan_batch (suggest) follows: the same overheads and margin around the peaks
    assert plan_batch(calibration, resolve_arch("mednext"), (64, 64, 64), budget).need.fixed_bytes == (
        need_from_peaks(calibration, 0, 0).fixed_bytes
    )
