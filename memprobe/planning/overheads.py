"""What a GPU needs besides the step's tensors, and how much margin a calibration has earned.

A training process runs out of memory when the CUDA context, the caching allocator's reserve
and the cuBLAS/cuDNN workspaces together exceed the card, not when its tensors do. Each
overhead here is named with where its size comes from: measured with a CUDA calibration, or a
documented default or derived evidence until one exists. No number here is tuned to make a plan look better.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

from memprobe.core.gpus import GpuInfo
from memprobe.core.units import GIB
from memprobe.formula.calibration import Calibration

# The CUDA context (driver state, loaded kernels of CUDA, cuBLAS and cuDNN) is outside
# PyTorch's allocator. Ampere: nnU-Net ResEnc L on an A100 showed 23.5 GB in nvidia-smi
# against 22.6 GB reserved (MIC-DKFZ/nnUNet issue 2996): 0.9 GB outside the allocator.
# No public figure of that kind was found for other families: 1 GiB, above the Ampere one,
# until a CUDA calibration of the card measures it (`memprobe calibrate --device cuda`).
CONTEXT_DEFAULTS: dict[str, tuple[int, str]] = {
    "ampere": (900 * 1000**2, "default for Ampere: A100 nvidia-smi minus reserved, MIC-DKFZ/nnUNet#2996"),
    "unknown": (GIB, "default (no measured figure for this GPU family yet)"),
}
# cuBLAS workspace per (handle, stream), allocated through PyTorch's allocator:
# aten/src/ATen/cuda/CublasHandlePool.cpp, parseChosenWorkspaceSize: ":4096:2:16:8"
# (8 MiB + 128 KiB) by default, 32 MiB on compute capability 9.0. A training step runs on one
# stream, so one workspace is charged; the larger one when the GPU is not known.
CUBLAS_WORKSPACE_BYTES = 4096 * 1024 * 2 + 16 * 1024 * 8
CUBLAS_WORKSPACE_SM90_BYTES = 4096 * 8 * 1024
# What a trace cannot see, charged from evidence (memprobe/data/gpu_evidence.json, derived by
# `python -m benchmarks.published_runs --write-evidence` from published real-GPU runs):
# - cuDNN's convolution workspaces and other CUDA-only buffers go through the allocator during
#   the step (FINDINGS: seen in real snapshots' frames); the largest allocated gap between a
#   published run and its trace is charged as a fixed term until a CUDA calibration, whose
#   measured peaks include them, answers instead;
# - the real reserve exceeded the simulated one by more than that gap (the allocator model
#   itself reproduces real traces exactly: benchmarks/results/snapshot_replay.md); the largest
#   such excess, as a share of the predicted reserve, is charged in the margin.
EVIDENCE_FILE = "gpu_evidence.json"
# A calibration from before memprobe fitted the reserve: the gap reserved - allocated in the
# nnU-Net A100 case above was 5% (22.6 / 21.5 GB); twice that is charged, and named.
UNCALIBRATED_RESERVE_ALLOWANCE = 0.10
MIN_FIT_MARGIN = 0.01  # a fit is never trusted below 1%, however well it matched
CUDA_ONLY_TERM = "cuDNN workspaces and CUDA-only buffers"


@dataclass(frozen=True)
class Overhead:
    """A fixed overhead of a plan, with where its size comes from."""

    name: str
    bytes: int
    source: str


@dataclass(frozen=True)
class TraceEvidence:
    """What published real-GPU runs say a trace prediction misses (see EVIDENCE_FILE)."""

    cuda_only_allocation_bytes: int
    reserved_underprediction: float
    runs: int
    gpus: tuple[str, ...]
    source: str


@lru_cache(maxsize=1)
def trace_evidence() -> TraceEvidence:
    """The evidence shipped in ``memprobe/data``: read once, it never changes while running."""
    from importlib.resources import files

    document = json.loads(files("memprobe.data").joinpath(EVIDENCE_FILE).read_text())
    published = document["trace_vs_published_gpu_runs"]
    return TraceEvidence(
        int(published["cuda_only_allocation_bytes"]),
        float(published["reserved_underprediction"]),
        len(published["runs"]),
        tuple(published["gpus"]),
        str(published["source"]),
    )


def _evidence_words(evidence: TraceEvidence) -> str:
    return f"{evidence.runs} published runs on {', '.join(evidence.gpus)}; {evidence.source}"


def gpu_family(gpu: GpuInfo | None) -> str:
    """hopper, ampere, ..., or unknown: from the compute capability, else from the name."""
    if gpu is None:
        return "unknown"
    if gpu.compute_capability:
        major = gpu.compute_capability[0]
        return {7: "volta-turing", 8: "ampere-ada", 9: "hopper", 10: "blackwell"}.get(major, "unknown")
    name = gpu.name.upper()
    for pattern, family in ((r"\bH1\d\d|\bH200|GH200", "hopper"), (r"\bA\d{2,3}\b|RTX (30|A)", "ampere-ada")):
        if re.search(pattern, name):
            return family
    return "unknown"


def context_overhead(calibration: Calibration, gpu: GpuInfo | None) -> Overhead:
    """The CUDA context: measured with a CUDA calibration, else the family's documented default."""
    if calibration.measured_on_gpu and calibration.context_bytes is not None:
        return Overhead(
            "CUDA context",
            calibration.context_bytes,
            f"measured on {calibration.device} with the calibration",
        )
    family = gpu_family(gpu)
    size, source = CONTEXT_DEFAULTS["ampere" if family == "ampere-ada" else "unknown"]
    return Overhead("CUDA context", size, source)


def workspace_overheads(calibration: Calibration, gpu: GpuInfo | None) -> tuple[Overhead, ...]:
    """cuBLAS and cuDNN workspaces: inside a CUDA calibration's measured peaks, else charged here."""
    if calibration.measured_on_gpu:
        included = f"included in the peaks measured on {calibration.device}"
        return (Overhead("cuBLAS workspace", 0, included), Overhead(CUDA_ONLY_TERM, 0, included))
    hopper_or_unknown = gpu is None or gpu.compute_capability in (None, (9, 0))
    cublas = CUBLAS_WORKSPACE_SM90_BYTES if hopper_or_unknown else CUBLAS_WORKSPACE_BYTES
    return (
        Overhead(
            "cuBLAS workspace", cublas, "PyTorch's default per handle and stream (CublasHandlePool.cpp)"
        ),
        cuda_only_overhead(),
    )


def cuda_only_overhead() -> Overhead:
    """cuDNN workspaces and other CUDA-only allocations a trace cannot see, from the evidence."""
    evidence = trace_evidence()
    return Overhead(
        CUDA_ONLY_TERM,
        evidence.cuda_only_allocation_bytes,
        f"largest allocated gap of trace vs real GPUs ({_evidence_words(evidence)}); a CUDA calibration replaces it",
    )


def margin_fraction(calibration: Calibration) -> tuple[float, str]:
    """The share of the predicted reserve a plan keeps free, and why that much.

    The calibration's worst held-out error (of its allocated and reserved fits), plus the
    trace allowance while the calibration has not met a GPU.
    """
    errors = [
        quality.heldout_max_relative_error
        if quality.heldout_max_relative_error is not None
        else quality.max_relative_error
        for quality in (calibration.quality, calibration.reserved_quality)
        if quality is not None
    ]
    worst = max(errors, default=0.0)
    fit = max(MIN_FIT_MARGIN, worst)
    reason = f"worst held-out error of {calibration.device}'s fit {100 * worst:.2f}%"
    if fit > worst:
        reason += f", charged at least {100 * MIN_FIT_MARGIN:.0f}%"
    if calibration.measured_on_gpu:
        return fit, reason
    gap, source = trace_gap_allowance()
    if calibration.trace_gap is not None:
        gap, source = calibration.trace_gap, calibration.trace_gap_source or "imported snapshots"
    return fit + gap, f"{reason} + {100 * gap:.1f}% ({source})"


def trace_gap_allowance() -> tuple[float, str]:
    """The share of a trace prediction's reserve charged for what real GPUs reserved beyond it."""
    evidence = trace_evidence()
    return (
        evidence.reserved_underprediction,
        f"trace vs real GPUs: the largest reserve under-prediction of {_evidence_words(evidence)}",
    )
