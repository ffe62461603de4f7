"""Count live tensor storage the way the CUDA caching allocator counts ``allocated`` bytes.

Every tensor an op returns is looked at once; a storage not seen before is charged its size,
rounded up to the allocator's 512-byte block, and credited back when Python finalizes it.
This works the same on fake tensors (nothing is allocated) and on real CPU tensors.

Every allocation and free is also kept, in order, as an event (serial, requested bytes, op),
so the caching allocator's reserve can be replayed afterwards (``caching_allocator.py``).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from memprobe.backends.caching_allocator import FREE, Event

CUDA_BLOCK_BYTES = 512


def cuda_block_size(nbytes: int) -> int:
    """Round a request up the way the CUDA caching allocator does (0 stays 0)."""
    if nbytes <= 0:
        return 0
    return -(-nbytes // CUDA_BLOCK_BYTES) * CUDA_BLOCK_BYTES


# Dropouts that ATen's C++ (``_dropout_impl``) returns the input from, unallocated, when p is 0
# or not training; PyTorch's Python decomposition, which fake tensors run, clones it instead, so
# a traced eval-mode network with nn.Dropout (BasicUNet in inference) would count a copy no GPU makes.
_IDENTITY_DROPOUTS = (
    torch.ops.aten.dropout.default,
    torch.ops.aten.feature_dropout.default,
    torch.ops.aten.alpha_dropout.default,
    torch.ops.aten.feature_alpha_dropout.default,
)


def _dropout_is_identity(args: Any, kwargs: dict[str, Any]) -> bool:
    probability = args[1] if len(args) > 1 else kwargs.get("p", 0.0)
    train = args[2] if len(args) > 2 else kwargs.get("train", True)
    return not train or probability == 0


class AllocationTracker(TorchDispatchMode):
    """Track current and peak live storage bytes, overall and per named phase."""

    def __init__(self, snapshot_peak: bool = False) -> None:
        super().__init__()
        self.current_bytes = 0
        self.peak_bytes = 0
        self.phase_peaks_bytes: dict[str, int] = {}
        self._phase: str | None = None
        self._phase_peak = 0
        self._live: dict[int, tuple[int, int]] = {}  # storage address -> (charged bytes, serial)
        self._serial = 0
        # With snapshot_peak, the storages live at the peak are kept (serial -> bytes), so the
        # peak can be broken down by what each storage holds. Off by default: it costs time.
        self.snapshot_peak = snapshot_peak
        self.peak_storages: dict[int, int] = {}
        # Segments: each phase split into windows of equal op counts, learned on a warm-up step.
        self.phase_op_counts: dict[str, int] = {}
        self._windows_per_phase: dict[str, int] = {}
        self._ops_in_phase = 0
        self._window_size = 0
        self._window_peak = 0
        # The allocation history: events in order, where the measured step begins, and where
        # each of its phases begins (event index, phase name).
        self.events: list[Event] = []
        self.measured_from = 0
        self.phase_starts: list[tuple[int, str]] = []
        self._op = "parameter"
        # With record_modules(), the module each allocation was made in (serial -> module path).
        self.module_of: dict[int, str] = {}
        self._module_stack: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _IDENTITY_DROPOUTS and _dropout_is_identity(args, kwargs or {}):
            return args[0]  # as ATen's _dropout_impl: the input itself, nothing allocated
        out = func(*args, **(kwargs or {}))
        self._op = str(func)
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf)
        self._ops_in_phase += 1
        if self._window_size and self._ops_in_phase % self._window_size == 0:
            self._close_window()
        return out

    def track(self, tensor: torch.Tensor) -> None:
        """Charge the tensor's storage if it is new; views of a known storage cost nothing."""
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._live:
            return
        charged = cuda_block_size(storage.nbytes())
        self._serial += 1
        self._live[key] = (charged, self._serial)
        self.events.append((self._serial, storage.nbytes(), self._op))
        if self._module_stack:
            self.module_of[self._serial] = self._module_stack[-1]
        weakref.finalize(storage, self._release, key)
        self.current_bytes += charged
        self._phase_peak = max(self._phase_peak, self.current_bytes)
        self._window_peak = max(self._window_peak, self.current_bytes)
        if self.current_bytes > self.peak_bytes:
            self.peak_bytes = self.current_bytes
            if self.snapshot_peak:
                self.peak_storages = {serial: size for size, serial in self._live.values()}

    def record_modules(self, model: torch.nn.Module) -> Any:
        """Note which of ``model``'s modules each allocation is made in; returns the hooks' handles."""
        names = {module: name or type(model).__name__ for name, module in model.named_modules()}

        def enter(module: torch.nn.Module, args: Any) -> None:
            if module in names:
                self._module_stack.append(names[module])

        def leave(module: torch.nn.Module, args: Any, output: Any) -> None:
            if module in names and self._module_stack:
                self._module_stack.pop()

        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        return (register_module_forward_pre_hook(enter), register_module_forward_hook(leave))

    def serial_of(self, tensor: torch.Tensor) -> int | None:
        """The tracking serial of a tensor's storage (stable, unlike its address), if tracked."""
        entry = self._live.get(tensor.untyped_storage()._cdata)
        return entry[1] if entry else None

    def track_module(self, module: torch.nn.Module) -> None:
        """Charge a module's parameters and buffers (made before tracking started)."""
        for tensor in [*module.parameters(), *module.buffers()]:
            self.track(tensor)

    def _release(self, key: int) -> None:
        charged, serial = self._live.pop(key, (0, 0))
        self.current_bytes -= charged
        if serial:
            self.events.append((serial, FREE, ""))

    def reset_peak(self) -> None:
        """Start counting the peak afresh from what is live now (the measured step begins)."""
        self.measured_from = len(self.events)
        self.phase_starts.clear()
        self.peak_bytes = self.current_bytes
        self._phase_peak = self.current_bytes
        if self.snapshot_peak:
            self.peak_storages = {serial: size for size, serial in self._live.values()}

    def start_phase(self, name: str | None) -> None:
        """Close the current phase (recording its peak and op count) and start ``name``."""
        if self._phase is not None:
            if self._window_size and self._ops_in_phase % self._window_size:
                self._close_window()  # the last window is partial; a full one closed with its last op
            self.phase_peaks_bytes[self._phase] = self._phase_peak
            self.phase_op_counts[self._phase] = self._ops_in_phase
        self._phase = name
        if name is not None:
            self.phase_starts.append((len(self.events), name))
        self._phase_peak = self._window_peak = self.current_bytes
        self._ops_in_phase = 0
        windows = self._windows_per_phase.get(name or "", 0)
        ops = self.phase_op_counts.get(name or "", 0)
        self._window_size = -(-ops // windows) if windows and ops else 0

    def split_phases(self, windows_per_phase: dict[str, int]) -> None:
        """From now on, also record the peak of each window of every phase.

        A phase's op sequence does not depend on the sizes, so window ``k`` covers the same
        ops at every batch and patch, and its peak is linear in them: the formula fits each
        window, where a whole phase's peak would bend (its argmax moves between ops).
        Call after a step has run, so each phase's op count is known.
        """
        self._windows_per_phase = dict(windows_per_phase)

    def _close_window(self) -> None:
        index = (self._ops_in_phase - 1) // self._window_size
        self.phase_peaks_bytes[f"{self._phase}.{index:02d}"] = self._window_peak
        self._window_peak = self.current_bytes
