"""What `memprobe verify` finds: frozen results, each turned to and from a JSON-ready dict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

R = TypeVar("R")


def _relative_error(estimate: int | None, truth: int | None) -> float | None:
    if estimate is None or not truth:
        return None
    return (estimate - truth) / truth


@dataclass(frozen=True)
class VerifyRow:
    """One configuration measured by trace and by CUDA: traced against true allocated and reserved."""

    label: str
    arch: str
    patch: tuple[int, int, int]
    batch: int
    precision: str
    traced_allocated_bytes: int | None
    simulated_reserved_bytes: int | None  # the trace backend's allocator replay, where it exists
    cuda_allocated_bytes: int | None  # torch.cuda.max_memory_allocated; None if the step ran out
    cuda_reserved_bytes: int | None  # torch.cuda.max_memory_reserved
    cudnn_benchmark: bool = False
    cuda_oom: bool = False

    @property
    def allocated_error(self) -> float | None:
        """(traced - CUDA) / CUDA allocated: negative when trace undercounts."""
        return _relative_error(self.traced_allocated_bytes, self.cuda_allocated_bytes)

    @property
    def reserved_error(self) -> float | None:
        return _relative_error(self.simulated_reserved_bytes, self.cuda_reserved_bytes)


@dataclass(frozen=True)
class SafetyRow:
    """A `suggest` answer put to the test: three steps at the batch and at batch + 1 under the budget."""

    arch: str
    patch: tuple[int, int, int]
    precision: str
    budget_bytes: int
    suggested_batch: int
    suggestion_source: str
    fits_suggested: bool  # three consecutive steps ran without running out of memory
    fits_next: bool
    true_largest_batch: int
    capped: bool = False  # the search stopped at its bound while still fitting: the truth is larger

    @property
    def safe(self) -> bool:
        """A suggestion of 0 (nothing fits) is safe; any other must run."""
        return self.suggested_batch == 0 or self.fits_suggested

    @property
    def batches_left_unused(self) -> int:
        """How far below the true largest batch the suggestion is (negative: it does not fit)."""
        return self.true_largest_batch - self.suggested_batch


@dataclass(frozen=True)
class ContextSize:
    """Device memory the CUDA context takes, from the device's used memory before and after it exists."""

    total_bytes: int
    used_before_bytes: int | None  # NVML, before this process touched the GPU; None without NVML
    used_after_init_bytes: int  # total - free (mem_get_info) after torch.cuda.init and a tiny tensor
    reserved_after_init_bytes: int  # what PyTorch's allocator holds of that

    @property
    def context_bytes(self) -> int | None:
        if self.used_before_bytes is None:
            return None
        return self.used_after_init_bytes - self.used_before_bytes - self.reserved_after_init_bytes


@dataclass(frozen=True)
class UnseenAllocation:
    """CUDA allocations of one size and op that the trace backend did not see."""

    size_bytes: int
    op: str
    count: int


@dataclass(frozen=True)
class HistoryDiff:
    """One step's allocations on CUDA (memory history) against the trace backend's."""

    label: str
    cuda_allocations: int
    trace_allocations: int
    unseen: tuple[UnseenAllocation, ...]

    @property
    def unseen_bytes(self) -> int:
        return sum(u.size_bytes * u.count for u in self.unseen)


def to_record(result: Any) -> dict[str, Any]:
    """A result as a JSON-ready dict (tuples become lists)."""
    return asdict(result)  # type: ignore[no-any-return]


def from_record(cls: type[R], data: dict[str, Any]) -> R:
    """Inverse of :func:`to_record` for the result types above."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in data.items() if k in names}
    if "patch" in values:
        values["patch"] = tuple(values["patch"])
    if "unseen" in values:
        values["unseen"] = tuple(UnseenAllocation(**u) for u in values["unseen"])
    return cls(**values)


@dataclass(frozen=True)
class VerifyResult:
    """Everything one `memprobe verify` run found (so far: ``complete`` is False when it was cut short)."""

    environment: dict[str, Any]
    rehearsal: bool
    budget_bytes: int
    rows: tuple[VerifyRow, ...]
    safety: tuple[SafetyRow, ...]
    context: ContextSize | None
    history: tuple[HistoryDiff, ...]
    failures: tuple[str, ...]  # items whose step failed other than by running out of memory
    pending: tuple[str, ...]  # items not reached before the time limit

    @property
    def complete(self) -> bool:
        return not self.pending

    @property
    def unsafe(self) -> tuple[SafetyRow, ...]:
        return tuple(row for row in self.safety if not row.safe)

    def to_dict(self) -> dict[str, Any]:
        def with_errors(row: VerifyRow) -> dict[str, Any]:
            return {
                **to_record(row),
                "allocated_error": row.allocated_error,
                "reserved_error": row.reserved_error,
            }

        return {
            "environment": self.environment,
            "rehearsal": self.rehearsal,
            "budget_bytes": self.budget_bytes,
            "complete": self.complete,
            "rows": [with_errors(row) for row in self.rows],
            "safety": [
                {**to_record(row), "safe": row.safe, "batches_left_unused": row.batches_left_unused}
                for row in self.safety
            ],
            "context": {**to_record(self.context), "context_bytes": self.context.context_bytes}
            if self.context
            else None,
            "history": [{**to_record(h), "unseen_bytes": h.unseen_bytes} for h in self.history],
            "failures": list(self.failures),
            "pending": list(self.pending),
        }
