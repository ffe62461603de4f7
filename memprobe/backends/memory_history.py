"""Recording the CUDA caching allocator's history: the slice of ``torch.cuda`` a snapshot needs."""

from __future__ import annotations

from typing import Protocol


class MemoryHistory(Protocol):
    """The slice of ``torch.cuda`` that records a snapshot; tests inject a fake."""

    def start(self, max_entries: int) -> None: ...
    def dump(self, path: str) -> None: ...
    def stop(self) -> None: ...
    def synchronize(self) -> None: ...


class TorchMemoryHistory:
    """``torch.cuda.memory._record_memory_history`` and ``_dump_snapshot`` on the current GPU."""

    def start(self, max_entries: int) -> None:
        import torch

        torch.cuda.memory._record_memory_history(max_entries=max_entries)

    def dump(self, path: str) -> None:
        import torch

        torch.cuda.memory._dump_snapshot(path)

    def stop(self) -> None:
        import torch

        torch.cuda.memory._record_memory_history(enabled=None)

    def synchronize(self) -> None:
        import torch

        torch.cuda.synchronize()
