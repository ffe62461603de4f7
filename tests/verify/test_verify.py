"""Tests of `memprobe verify` without a GPU: fake CUDA collaborators, a CPU rehearsal, pure diffs.

The fake GPU's peak is linear in batch x voxels and it runs out of memory above the budget;
the fake trace backend over- or undercounts it by a set share, so every error is known.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from memprobe.cli.render.verify_tables import REHEARSAL_NOTE, build_report, write_outputs
from memprobe.core.config import StepConfig, make_step_config
from memprobe.core.enums import DeviceKind, Precision
from memprobe.core.errors import ModelError
from memprobe.core.measurement import Environment, Measurement
from memprobe.store.database import Database
from memprobe.verify import LOG_NAME, ResultLog, build_plan
from memprobe.verify.history import (
    LARGE_POOL_SLACK_BYTES,
    NO_FRAME,
    allocations_from_snapshot,
    trace_allocations,
    unseen_allocations,
)
from memprobe.verify.results import ContextSize, UnseenAllocation, VerifyRow
from memprobe.verify.run import VerifyTools, run_verify
from memprobe.verify.safety import check_suggestion, suggest_from_calibrations
from memprobe.verify.table import SafetyCase
from tests.conftest import REPO_ROOT, TINY
from tests.helpers import invoke, make_calibration

GIB = 2**30
MIB = 2**20
FIXED_BYTES = 1 * GIB
BYTES_PER_SAMPLE_VOXEL = 2_000  # 128^3 x 1 sample = 3.9 GiB
TRACE_BIAS = -0.02  # the fake trace undercounts by 2%


def true_peak(config: StepConfig) -> int:
    return FIXED_BYTES + BYTES_PER_SAMPLE_VOXEL * config.batch * config.voxels


def largest_fitting_batch(patch: tuple[int, int, int], budget: int) -> int:
    voxels = patch[0] * patch[1] * patch[2]
    return (budget - FIXED_BYTES) // (BYTES_PER_SAMPLE_VOXEL * voxels)


@dataclass
class FakeGpu:
    """Records each CUDA measurement, the cuDNN mode it ran in, and fails on command."""

    measured: list[tuple[StepConfig, int | None, bool]] = field(default_factory=list)
    cudnn_benchmark: bool = False
    failing_arch: str | None = None


class FakeCudaBackend:
    kind = DeviceKind.CUDA

    def __init__(self, gpu: FakeGpu, budget_bytes: int | None) -> None:
        self.gpu, self.budget_bytes = gpu, budget_bytes

    def environment(self) -> Environment:
        return Environment("cuda", "Fake GPU 80GB", total_memory_bytes=80 * GIB, cuda_version="12.4")

    def measure(self, config: StepConfig) -> Measurement:
        self.gpu.measured.append((config, self.budget_bytes, self.gpu.cudnn_benchmark))
        if config.arch == self.gpu.failing_arch:
            raise ModelError(f"the training step of {config.label()} failed: RuntimeError: broken")
        peak = true_peak(config)
        if self.budget_bytes is not None and peak > self.budget_bytes:
            return Measurement(config, self.environment(), None, oom=True, budget_bytes=self.budget_bytes)
        return Measurement(config, self.environment(), peak, peak_reserved_bytes=peak + 64 * MIB)


class FakeTraceBackend:
    kind = DeviceKind.TRACE

    def environment(self) -> Environment:
        return Environment("trace", "trace")

    def measure(self, config: StepConfig) -> Measurement:
        return Measurement(config, self.environment(), round(true_peak(config) * (1 + TRACE_BIAS)))


SNAPSHOT = {
    "segments": [],
    "device_traces": [
        [
            {"action": "segment_alloc", "size": 20 * MIB, "frames": []},
            {
                "action": "alloc",
                "size": 4 * MIB,
                "frames": [{"filename": "conv.py", "line": 1, "name": "conv"}],
            },
            {
                "action": "alloc",
                "size": 8 * MIB + 512,
                "frames": [{"filename": "??", "line": 0, "name": "cublas"}],
            },
            {"action": "free_requested", "size": 4 * MIB, "frames": []},
        ]
    ],
}


class FakeExtras:
    def __init__(self, gpu: FakeGpu) -> None:
        self.gpu = gpu
        self.context_calls = 0

    def available(self) -> bool:
        return True

    def context_size(self) -> ContextSize:
        self.context_calls += 1
        return ContextSize(80 * GIB, 1 * GIB, 1 * GIB + 520 * MIB, 2 * MIB)

    def record_history(self, run: Callable[[], object]) -> dict[str, Any]:
        run()
        return SNAPSHOT

    @contextlib.contextmanager
    def cudnn_benchmark(self, enabled: bool) -> Iterator[None]:
        before, self.gpu.cudnn_benchmark = self.gpu.cudnn_benchmark, enabled
        try:
            yield
        finally:
            self.gpu.cudnn_benchmark = before


def fake_tools(
    gpu: FakeGpu, suggest: Callable[[SafetyCase, int], tuple[int, str]] | None = None
) -> VerifyTools:
    def suggest_at_the_truth(case: SafetyCase, budget: int) -> tuple[int, str]:
        return largest_fitting_batch(case.patch, budget), "fake"

    return VerifyTools(
        device="Fake GPU 80GB",
        cuda_backend=lambda budget, three_steps: FakeCudaBackend(gpu, budget),
        trace_backend=FakeTraceBackend(),
        extras=FakeExtras(gpu),
        trace_allocations=lambda config: [(4 * MIB, "aten.convolution.default")],
        suggest=suggest or suggest_at_the_truth,
    )


def _plan() -> Any:
    return build_plan(["mednext", "basicunet"], ["fp32"], quick=True, budget_bytes=24 * GIB)


# --- without a GPU ---------------------------------------------------------------------------


def test_without_cuda_verify_is_one_line_exit_2_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No GPU: exit 2, one line saying what to run instead, and no output folder."""
    monkeypatch.setattr("memprobe.backends.cuda_available", lambda: False)
    out = tmp_path / "truth"
    result = invoke(capsys, "verify", "--quick", "--out", str(out))
    assert result.code == 2
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("memprobe: error: memprobe verify needs a CUDA GPU: ")
    assert "scripts/gpu_truth.sh" in lines[0] and "--device trace" in lines[0]
    assert not out.exists()


# --- the fixed table -------------------------------------------------------------------------


def test_full_table_covers_every_architecture_in_two_sizes() -> None:
    """fp32 and bf16-mixed for every architecture, two sizes each; fp16-mixed only for MedNeXt and BasicUNet."""
    from memprobe.core.archs.registry import ARCHS

    plan = build_plan()
    for arch in ARCHS:
        configs = [c for c in plan.configs if c.arch == arch]
        precisions = {c.precision for c in configs}
        fp16 = arch in ("mednext", "basicunet")
        assert precisions == {Precision.FP32, Precision.BF16_MIXED} | (
            {Precision.FP16_MIXED} if fp16 else set()
        )
        assert len({(c.patch, c.batch) for c in configs}) == 2
    assert [c.arch for c in plan.history] == ["mednext", "swinunetr"]
    assert [(c.arch, c.patch, c.precision) for c in plan.cudnn_configs] == [
        ("mednext", (128, 128, 128), Precision.FP32)
    ]
    assert len(plan.safety) == 6


def test_quick_table_is_a_subset_without_the_large_mednexts() -> None:
    full, quick = build_plan(), build_plan(quick=True)
    assert set(quick.configs) < set(full.configs) and set(quick.safety) < set(full.safety)
    assert not {c.arch for c in quick.configs} & {"mednext-b", "mednext-m", "mednext-l"}
    assert len([c for c in quick.configs if c.arch == "mednext"]) == 6  # both sizes, three precisions
    assert quick.cudnn_configs and quick.history == full.history


def test_a_custom_model_gets_small_sizes_and_every_check() -> None:
    plan = build_plan([TINY], ["fp32"], budget_bytes=16 * MIB)
    assert [(c.patch, c.batch) for c in plan.configs] == [((16, 16, 16), 1), ((32, 32, 32), 2)]
    assert plan.safety == (SafetyCase(TINY, (32, 32, 32), Precision.FP32),)
    assert len(plan.history) == 1 and len(plan.cudnn_configs) == 1


# --- the runner on fakes ---------------------------------------------------------------------


def test_trace_and_cuda_are_compared_on_every_configuration(tmp_path: Path) -> None:
    """Each row holds both peaks and their error; only the cuDNN row runs with benchmark on."""
    gpu = FakeGpu()
    plan = _plan()
    result = run_verify(plan, fake_tools(gpu), ResultLog(None, "Fake GPU 80GB"))
    assert len(result.rows) == len(plan.configs) + 1 and result.complete
    for row in result.rows:
        assert row.allocated_error == pytest.approx(TRACE_BIAS, abs=1e-6)
        assert row.cuda_reserved_bytes == row.cuda_allocated_bytes + 64 * MIB  # type: ignore[operator]
        assert row.simulated_reserved_bytes is None and row.reserved_error is None
    assert [r.cudnn_benchmark for r in result.rows].count(True) == 1
    on = [config.label() for config, budget, cudnn in gpu.measured if cudnn]
    assert on == [plan.cudnn_configs[0].label()]
    assert result.context is not None and result.context.context_bytes == 518 * MIB
    assert result.environment["device_name"] == "Fake GPU 80GB"


def test_suggestions_are_run_under_the_budget_and_must_fit() -> None:
    """Safety runs at the emulated budget; a suggestion at the true largest fits and batch + 1 does not."""
    gpu = FakeGpu()
    result = run_verify(_plan(), fake_tools(gpu), ResultLog(None, "Fake GPU 80GB"))
    assert [s.arch for s in result.safety] == ["mednext", "basicunet"]
    for row in result.safety:
        assert row.safe and row.fits_suggested and not row.fits_next
        assert row.true_largest_batch == row.suggested_batch == largest_fitting_batch(row.patch, 24 * GIB)
    assert {budget for _, budget, _ in gpu.measured} == {None, 24 * GIB}
    assert not result.unsafe


def test_an_unsafe_suggestion_is_reported() -> None:
    """A suggestion two above the truth does not fit: the row says so and finds the true largest."""

    def too_big(case: SafetyCase, budget: int) -> tuple[int, str]:
        return largest_fitting_batch(case.patch, budget) + 2, "too big"

    result = run_verify(_plan(), fake_tools(FakeGpu(), too_big), ResultLog(None, "Fake GPU 80GB"))
    assert len(result.unsafe) == 2
    for row in result.unsafe:
        assert not row.fits_suggested and not row.fits_next and row.batches_left_unused == -2
    assert any("UNSAFE" in note for note in build_report(result).notes)


def test_unseen_cuda_allocations_are_listed_per_recorded_step() -> None:
    result = run_verify(_plan(), fake_tools(FakeGpu()), ResultLog(None, "Fake GPU 80GB"))
    assert [h.label for h in result.history] == ["mednext 64x64x64 b1 fp32"]
    (history,) = result.history
    assert history.cuda_allocations == 2 and history.trace_allocations == 1
    assert history.unseen == (UnseenAllocation(8 * MIB + 512, "cublas", 1),)


def test_every_result_is_written_at_once_and_a_rerun_measures_nothing_again(tmp_path: Path) -> None:
    log_path = tmp_path / LOG_NAME
    first = run_verify(_plan(), fake_tools(FakeGpu()), ResultLog(log_path, "Fake GPU 80GB"))
    lines = log_path.read_text().splitlines()
    assert len(lines) == _items(_plan())  # one line per item, written as it was taken
    again_gpu = FakeGpu()
    tools = fake_tools(again_gpu)
    log = ResultLog(log_path, "Fake GPU 80GB")
    second = run_verify(_plan(), tools, log)
    assert again_gpu.measured == [] and tools.extras.context_calls == 0  # type: ignore[attr-defined]
    assert second == first and log.reused == len(lines)


def _items(plan: Any) -> int:
    return 1 + len(plan.configs) + len(plan.cudnn_configs) + len(plan.safety) + len(plan.history)


def test_time_limit_leaves_the_rest_pending_and_a_rerun_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the limit no new item starts; the same run again finishes what is left, nothing twice."""
    clock = iter(range(0, 10_000, 10))
    monkeypatch.setattr("memprobe.verify.run.time.monotonic", lambda: next(clock))
    log_path = tmp_path / LOG_NAME
    gpu = FakeGpu()
    cut = run_verify(_plan(), fake_tools(gpu), ResultLog(log_path, "x"), time_limit_seconds=25)
    assert not cut.complete and cut.pending and len(cut.rows) < len(_plan().configs)
    taken_before = len(log_path.read_text().splitlines())
    finished = run_verify(_plan(), fake_tools(FakeGpu()), ResultLog(log_path, "x"))
    assert finished.complete and len(finished.rows) == len(_plan().configs) + 1
    keys = [json.loads(line)["key"] for line in log_path.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == _items(_plan()) > taken_before  # nothing measured twice


def test_a_failing_configuration_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    gpu = FakeGpu(failing_arch="basicunet")
    result = run_verify(_plan(), fake_tools(gpu), ResultLog(tmp_path / LOG_NAME, "x"))
    assert {r.arch for r in result.rows} == {"mednext"} and result.complete
    assert result.failures and all("basicunet" in f and "broken" in f for f in result.failures)
    assert any(note.startswith("failed: ") for note in build_report(result).notes)


def test_a_line_cut_off_mid_write_is_dropped_and_the_log_goes_on(tmp_path: Path) -> None:
    path = tmp_path / LOG_NAME
    log = ResultLog(path, "x")
    log.add("row", "a", {"value": 1})
    with path.open("a") as file:
        file.write('{"kind": "row", "key": "b", "dev')  # killed mid-write
    reopened = ResultLog(path, "x")
    assert reopened.get("a") == {"value": 1} and reopened.get("b") is None
    reopened.add("row", "b", {"value": 2})
    assert ResultLog(path, "x").get("b") == {"value": 2}


def test_results_from_another_device_are_refused(tmp_path: Path) -> None:
    from memprobe.core.errors import InvalidInputError

    path = tmp_path / LOG_NAME
    ResultLog(path, "NVIDIA H100").add("row", "a", {})
    with pytest.raises(InvalidInputError, match="choose another --out"):
        ResultLog(path, "NVIDIA H200")


def test_outputs_hold_the_environment_and_every_table(tmp_path: Path) -> None:
    result = run_verify(_plan(), fake_tools(FakeGpu()), ResultLog(None, "x"))
    write_outputs(result, tmp_path)
    data = json.loads((tmp_path / "verify.json").read_text())
    assert data["environment"]["cuda_version"] == "12.4" and data["complete"] is True
    assert data["rows"][0]["allocated_error"] == pytest.approx(TRACE_BIAS, abs=1e-6)
    markdown = (tmp_path / "gpu_truth.md").read_text()
    for title in ("Trace vs CUDA", "Suggestion safety", "CUDA context", "did not see"):
        assert title in markdown
    assert REHEARSAL_NOTE not in markdown


# --- the suggestion check, as a pure function -------------------------------------------------


CASE = SafetyCase("mednext", (128, 128, 128), Precision.FP32)


@pytest.mark.parametrize(
    ("suggested", "truth", "fits_suggested", "fits_next"),
    [(3, 3, True, False), (1, 6, True, True), (5, 3, False, False), (0, 2, True, True), (1, 0, False, False)],
)
def test_check_finds_the_true_largest_batch(
    suggested: int, truth: int, fits_suggested: bool, fits_next: bool
) -> None:
    probed: list[int] = []

    def fits(batch: int) -> bool:
        probed.append(batch)
        return batch <= truth

    row = check_suggestion(CASE, 24 * GIB, (suggested, "test"), fits)
    assert (row.fits_suggested, row.fits_next, row.true_largest_batch) == (fits_suggested, fits_next, truth)
    assert row.safe == (suggested <= truth) and row.batches_left_unused == truth - suggested
    assert len(probed) == len(set(probed)) and 0 not in probed


def test_check_stops_at_its_bound_and_says_so() -> None:
    row = check_suggestion(CASE, 24 * GIB, (2, "test"), lambda batch: True)
    assert row.capped and row.true_largest_batch == 4 * 2 + 8


def test_suggestions_come_from_the_trace_calibration(db_path: Path) -> None:
    """The check runs what `suggest --device trace` answers from the database given."""
    from memprobe.api import max_batch_size

    with Database.open(db_path) as db:
        db.add_calibration(make_calibration())
    batch, source = suggest_from_calibrations(CASE, 24 * GIB, db_path)
    assert (
        batch
        == max_batch_size("mednext", (128, 128, 128), 24 * GIB, "fp32", device="trace", db=db_path).batch
    )
    assert batch > 0 and "trace calibration" in source


# --- the memory-history diff -----------------------------------------------------------------


def test_diff_matches_by_size_and_lists_what_trace_did_not_see() -> None:
    cuda = [(512, "a"), (512, "a"), (4 * MIB, "conv"), (8 * MIB, "cublas"), (8 * MIB, "cublas"), (1024, "b")]
    trace = [(512, "x"), (4 * MIB, "y"), (8 * MIB, "z")]
    assert unseen_allocations(cuda, trace) == [
        UnseenAllocation(8 * MIB, "cublas", 1),
        UnseenAllocation(1024, "b", 1),
        UnseenAllocation(512, "a", 1),
    ]


def test_a_large_block_may_carry_an_unsplit_tail_but_a_small_one_may_not() -> None:
    """A large-pool block up to 1 MiB above the traced size is the same tensor; small-pool sizes match exactly."""
    large = 11 * MIB
    assert unseen_allocations([(12 * MIB, "conv")], [(large, "t")]) == []
    assert unseen_allocations([(large + LARGE_POOL_SLACK_BYTES + 512, "conv")], [(large, "t")]) != []
    assert unseen_allocations([(1024, "add")], [(512, "t")]) == [UnseenAllocation(1024, "add", 1)]
    assert unseen_allocations([], [(512, "t")]) == []


def test_snapshot_alloc_events_are_read_with_their_innermost_python_frame() -> None:
    snapshot = {
        "segments": [],
        "device_traces": [
            [
                {"action": "segment_alloc", "addr": 0, "size": 2 * MIB, "stream": 0, "frames": []},
                {
                    "action": "alloc",
                    "addr": 0,
                    "size": 1536,
                    "stream": 0,
                    "frames": [
                        {"filename": "??", "line": 0, "name": "c10::cuda::CUDACachingAllocator::malloc"},
                        {"filename": "/site/torch/nn/modules/conv.py", "line": 720, "name": "_conv_forward"},
                        {"filename": "/site/monai/mednext.py", "line": 10, "name": "forward"},
                    ],
                },
                {"action": "free_requested", "addr": 0, "size": 1536, "stream": 0, "frames": []},
                {"action": "free_completed", "addr": 0, "size": 1536, "stream": 0, "frames": []},
                {"action": "alloc", "addr": 4096, "size": 512, "stream": 0, "frames": []},
            ]
        ],
    }
    assert allocations_from_snapshot(snapshot) == [(1536, "_conv_forward (conv.py:720)"), (512, NO_FRAME)]
    assert allocations_from_snapshot(snapshot, device=1) == []
    assert allocations_from_snapshot({"segments": []}) == []


def test_a_workspace_is_named_by_its_library_frame_else_by_native_code() -> None:
    """With C++ stacks, a cuDNN or cuBLAS frame names the allocation; allocator frames never do."""
    cudnn = [
        {"filename": "??", "line": 0, "name": "c10::cuda::CUDACachingAllocator::malloc"},
        {"filename": "??", "line": 0, "name": "at::native::cudnn_convolution_backward_weight"},
        {"filename": "/site/torch/autograd/graph.py", "line": 1, "name": "_engine_run_backward"},
    ]
    native = [
        {"filename": "??", "line": 0, "name": "c10::cuda::CUDACachingAllocator::malloc"},
        {"filename": "??", "line": 0, "name": "at::native::add_out"},
    ]
    snapshot = {"device_traces": [[{"action": "alloc", "size": 512, "frames": f} for f in (cudnn, native)]]}
    assert [op for _, op in allocations_from_snapshot(snapshot)] == [
        "at::native::cudnn_convolution_backward_weight",
        "at::native::add_out",
    ]


def test_trace_allocations_cover_the_traced_peak() -> None:
    """Every storage the trace backend charges is listed, parameters and aten ops alike."""
    from memprobe.backends.trace_backend import TraceBackend

    config = make_step_config(TINY, (16, 16, 16), 2)
    allocations = trace_allocations(config)
    peak = TraceBackend().measure(config).peak_allocated_bytes
    assert sum(size for size, _ in allocations) >= peak  # type: ignore[operator]
    ops = {op for _, op in allocations}
    assert "parameter" in ops and any(op.startswith("aten.convolution") for op in ops)
    assert all(size % 512 == 0 and size > 0 for size, _ in allocations)


def test_report_rows_say_oom_and_percent() -> None:
    row = VerifyRow("m", "mednext", (64, 64, 64), 1, "fp32", 100, None, None, None, cuda_oom=True)
    assert row.allocated_error is None
    assert build_report_row_values(row)["CUDA allocated"] == "OOM"


def build_report_row_values(row: VerifyRow) -> dict[str, Any]:
    from memprobe.verify.results import VerifyResult

    result = VerifyResult({}, False, GIB, (row,), (), None, (), (), ())
    return build_report(result).tables[0][1][0]  # type: ignore[no-any-return]


# --- the whole GPU run, rehearsed on the CPU ---------------------------------------------------


@pytest.mark.slow
def test_gpu_truth_script_rehearsal_writes_everything_and_resumes(tmp_path: Path) -> None:
    """scripts/gpu_truth.sh end to end on the CPU; a rerun after a cut keeps what was measured."""
    out = tmp_path / "truth"
    env = {**os.environ, "MEMPROBE_VERIFY_REHEARSAL": "1", "PYTHON": sys.executable}
    run = lambda: subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "gpu_truth.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    first = run()
    assert first.returncode == 0, first.stdout + first.stderr
    for name in ("environment.txt", "verify.log", "calibrations.sqlite", "calibrations.json"):
        assert (out / name).exists(), name
    data = json.loads((out / "verify" / "verify.json").read_text())
    assert data["rehearsal"] is True and data["complete"] and data["rows"] and data["safety"]
    assert all(row["safe"] for row in data["safety"])
    assert "REHEARSAL" in (out / "verify" / "gpu_truth.md").read_text()
    log = out / "verify" / LOG_NAME
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:2]) + '\n{"kind": "row", "ke')  # cut off during the third item
    second = run()
    assert second.returncode == 0, second.stdout + second.stderr
    verify_output = second.stdout.split("== verify:", 1)[1].split("\n== ", 1)[0]
    assert verify_output.count("(stored)") == 2  # the calibrations after it may reuse steps too
    again = json.loads((out / "verify" / "verify.json").read_text())
    assert [r["traced_allocated_bytes"] for r in again["rows"]] == [
        r["traced_allocated_bytes"] for r in data["rows"]
    ]
    assert len(log.read_text().splitlines()) == len(lines) + 1  # the cut line stays, ignored


# --- the real pieces that run without a GPU ----------------------------------------------------


def test_safety_through_the_cuda_backend_caps_memory_and_restores_it() -> None:
    """With CudaBackend on a fake runtime, the check sees real OOMs under budget/total and leaves 1.0 after."""
    from memprobe.backends.cuda import CudaBackend
    from tests.backends.test_cuda_backend import FakeRuntime, _threshold_batch, fake_step_runner

    runtime = FakeRuntime(total_bytes=80 * GIB)
    budget = 11 * GIB
    truth = _threshold_batch(budget)
    tools = fake_tools(FakeGpu(), lambda case, b: (truth, "at the truth"))
    tools.cuda_backend = lambda b, three: CudaBackend(
        b, runtime=runtime, step_runner=fake_step_runner(runtime)
    )
    plan = build_plan(["mednext"], ["fp32"], quick=True, budget_bytes=budget)
    (row,) = run_verify(plan, tools, ResultLog(None, "x")).safety
    assert row.fits_suggested and not row.fits_next and row.true_largest_batch == truth
    assert ("fraction", pytest.approx(budget / (80 * GIB))) in runtime.calls and runtime.fraction == 1.0


def test_three_step_runner_measures_three_steps_as_one_phase() -> None:
    import torch

    from memprobe.verify.safety import SAFETY_STEPS, run_consecutive_steps

    calls: list[str | None] = []
    steps: list[int] = []
    original = torch.optim.AdamW.step

    def counting_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        steps.append(1)
        return original(self, *args, **kwargs)

    config = make_step_config(TINY, (16, 16, 16), 2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.AdamW, "step", counting_step)
        seconds, parameters = run_consecutive_steps(
            config, torch.device("cpu"), calls.append, lambda: calls.append("reset")
        )
    assert calls == ["reset", "steps", None] and len(steps) == SAFETY_STEPS
    assert seconds > 0 and parameters > 0


def test_cudnn_benchmark_is_set_inside_the_block_and_restored() -> None:
    import torch

    from memprobe.verify.extras import TorchCudaExtras

    before = torch.backends.cudnn.benchmark
    with TorchCudaExtras().cudnn_benchmark(not before):
        assert torch.backends.cudnn.benchmark is (not before)
    assert torch.backends.cudnn.benchmark is before


def test_an_unexpected_error_is_reported_not_stored_and_retried_on_rerun(tmp_path: Path) -> None:
    """A bug in one item (here the memory history) costs that item only; a rerun tries it again."""

    class BrokenHistory(FakeExtras):
        def record_history(self, run: Callable[[], object]) -> dict[str, Any]:
            raise KeyError("device_traces")

    gpu = FakeGpu()
    tools = fake_tools(gpu)
    tools.extras = BrokenHistory(gpu)
    log_path = tmp_path / LOG_NAME
    result = run_verify(_plan(), tools, ResultLog(log_path, "x"))
    assert result.history == () and result.rows and result.safety
    assert (
        len(result.failures) == 1 and "KeyError" in result.failures[0] and "not stored" in result.failures[0]
    )
    assert len(log_path.read_text().splitlines()) == _items(_plan()) - 1
    again = run_verify(_plan(), fake_tools(FakeGpu()), ResultLog(log_path, "x"))
    assert len(again.history) == 1 and not again.failures
