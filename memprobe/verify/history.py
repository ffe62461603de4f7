"""Which allocations CUDA made that the trace backend did not see (cuDNN and cuBLAS workspaces...).

The diff is a pure function over two lists of ``(size_bytes, op)``; reading PyTorch's memory
snapshot and recording the trace backend's allocations are the two small adapters around it.
"""

from __future__ import annotations

import bisect
import copy
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeCopyMode, FakeTensorMode

from memprobe.backends.allocation_tracker import AllocationTracker, cuda_block_size
from memprobe.backends.caching_allocator import FREE
from memprobe.core.config import StepConfig
from memprobe.training.networks import build_for_config
from memprobe.training.step import prepare_training, train_step
from memprobe.verify.results import UnseenAllocation

Allocation = tuple[int, str]  # (bytes, op that made it)
# A large-pool block keeps an unsplit tail of up to 1 MiB (FINDINGS.md), so a CUDA block may
# exceed the trace's 512-byte-rounded size by that much and still be the same tensor.
LARGE_POOL_SLACK_BYTES = 2**20
_SMALL_POOL_LIMIT = 2**20


def unseen_allocations(cuda: Sequence[Allocation], trace: Sequence[Allocation]) -> list[UnseenAllocation]:
    """CUDA allocations without a trace counterpart, grouped by size and op, largest total first.

    Matching is by size multiset: first exact sizes, then a large-pool block matches the largest
    unmatched trace size at most ``LARGE_POOL_SLACK_BYTES`` below it.
    """
    remaining = sorted(size for size, _ in trace)
    leftover: list[Allocation] = []
    exact = Counter(remaining)
    for size, op in cuda:
        if exact[size]:
            exact[size] -= 1
        else:
            leftover.append((size, op))
    remaining = sorted(exact.elements())
    unmatched: list[Allocation] = []
    for size, op in sorted(leftover):
        index = bisect.bisect_right(remaining, size) - 1
        slack = LARGE_POOL_SLACK_BYTES if size > _SMALL_POOL_LIMIT else 0
        if index >= 0 and size - remaining[index] <= slack:
            remaining.pop(index)
        else:
            unmatched.append((size, op))
    groups = Counter(unmatched)
    unseen = [UnseenAllocation(size, op, count) for (size, op), count in groups.items()]
    return sorted(unseen, key=lambda u: (-u.size_bytes * u.count, -u.size_bytes, u.op))


_LIBRARIES = ("cudnn", "cublas", "cufft", "nccl")
_ALLOCATOR_FRAMES = ("c10::", "at::empty", "at::detail::empty", "at::native::empty", "torch::unwind")
NO_FRAME = "(no Python frame: autograd's thread or C++)"


def _op_of(frames: Sequence[dict[str, Any]]) -> str:
    """What made an allocation, from its frames (innermost first).

    A cuDNN or cuBLAS frame names a workspace (C++ frames exist with ``stacks="all"``); else the
    innermost Python frame; else the innermost C++ frame outside the allocator.
    """
    names = [str(frame.get("name", "")) for frame in frames]
    library = next((n for n in names if any(lib in n.lower() for lib in _LIBRARIES)), None)
    if library:
        return library[:120]
    for frame in frames:
        filename = str(frame.get("filename", ""))
        if filename.endswith(".py"):
            return f"{frame.get('name', '?')} ({filename.rsplit('/', 1)[-1]}:{frame.get('line', '?')})"
    native = next((n for n in names if n and not n.startswith(_ALLOCATOR_FRAMES)), None)
    return native[:120] if native else NO_FRAME


def allocations_from_snapshot(snapshot: dict[str, Any], device: int = 0) -> list[Allocation]:
    """The ``alloc`` events of ``torch.cuda.memory._snapshot()``'s trace for ``device``."""
    traces = snapshot.get("device_traces") or []
    if device >= len(traces):
        return []
    return [
        (int(event["size"]), _op_of(event.get("frames") or []))
        for event in traces[device]
        if event.get("action") == "alloc"
    ]


def trace_allocations(config: StepConfig) -> list[Allocation]:
    """Every storage the trace backend charges over a warm-up and a measured step, with its aten op."""
    model = build_for_config(config)
    fake_mode = FakeTensorMode()
    with FakeCopyMode(fake_mode):
        model = copy.deepcopy(model)
    tracker = AllocationTracker()
    with fake_mode, tracker:
        tracker.track_module(model)
        state = prepare_training(config, model, torch.device("cpu"))
        train_step(state)
        train_step(state)
    return [(cuda_block_size(nbytes), op) for _, nbytes, op in tracker.events if nbytes != FREE]
