"""Small user models for tests: fast on every backend, and some that fail on purpose."""

from __future__ import annotations

import os
import signal

import torch
from torch import nn


class TinyNet(nn.Module):
    """A two-level 3D encoder-decoder: divisible by 2, a few milliseconds a step."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv3d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 16, 2, stride=2)
        )
        self.up = nn.Sequential(
            nn.ConvTranspose3d(16, 8, 2, stride=2), nn.ReLU(), nn.Conv3d(8, out_channels, 1)
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.up(self.down(x))


def tiny_net(in_channels: int, out_channels: int) -> nn.Module:
    return TinyNet(in_channels, out_channels)


def not_a_module(in_channels: int, out_channels: int) -> str:
    return "not a network"


class _Raises(TinyNet):
    def forward(self, x):  # type: ignore[no-untyped-def]
        raise RuntimeError("forward failed on purpose")


def raising_net(in_channels: int, out_channels: int) -> nn.Module:
    return _Raises(in_channels, out_channels)


class _Segfaults(TinyNet):
    def forward(self, x):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGSEGV)
        return super().forward(x)


def segfaulting_net(in_channels: int, out_channels: int) -> nn.Module:
    return _Segfaults(in_channels, out_channels)


NOT_CALLABLE = 42


class _ScalarScale(TinyNet):
    """A TinyNet with a 0-dimensional parameter, which FSDP cannot shard."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels)
        self.gain = nn.Module()
        self.gain.weight = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return super().forward(x) * self.gain.weight


def scalar_scale_net(in_channels: int, out_channels: int) -> nn.Module:
    return _ScalarScale(in_channels, out_channels)


class _ExitsOnRank1(TinyNet):
    """A TinyNet whose process ends abruptly on rank 1 of a launched process group."""

    def forward(self, x):  # type: ignore[no-untyped-def]
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_rank() == 1:
            os._exit(3)
        return super().forward(x)


def exits_on_rank_1_net(in_channels: int, out_channels: int) -> nn.Module:
    return _ExitsOnRank1(in_channels, out_channels)


class RankRuntime:
    """A stand-in for ``torch.cuda``'s counters in a launched CPU rank: rank r peaks at (r + 1) MiB.

    Pickled into each spawned rank, so it lives here, importable by the children.
    """

    def _rank(self) -> int:
        import torch.distributed as dist

        return dist.get_rank()

    def reset_peak_memory_stats(self) -> None:
        pass

    def max_memory_allocated(self) -> int:
        return (self._rank() + 1) * 2**20

    def max_memory_reserved(self) -> int:
        return (self._rank() + 1) * 2**21

    def memory_allocated(self) -> int:
        return 0

    def synchronize(self) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def set_per_process_memory_fraction(self, fraction: float) -> None:
        pass

    def total_memory_bytes(self) -> int:
        return 80 * 2**30

    def device_name(self) -> str:
        return "Fake GPU"

    def context_bytes(self) -> int | None:
        return None

    def versions(self) -> dict[str, str]:
        return {}


def exits_when_built(in_channels: int, out_channels: int) -> nn.Module:
    """A factory whose process ends abruptly, as one killed for host memory would (no traceback)."""
    os._exit(3)


class _ExitsInForward(TinyNet):
    def forward(self, x):  # type: ignore[no-untyped-def]
        raise SystemExit(0)  # what a script's sys.exit(0) raises


def exits_in_forward(in_channels: int, out_channels: int) -> nn.Module:
    """tiny_net whose forward ends the process as sys.exit would, were memprobe not in the way."""
    return _ExitsInForward(in_channels, out_channels)
