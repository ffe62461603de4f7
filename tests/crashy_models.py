"""User models for the robustness tests: slow ones to interrupt, and ones that crash on purpose.

Each builds on tests.tiny_models.TinyNet, so whatever does not crash is as fast as tiny_net.
"""

from __future__ import annotations

import os
import signal
import time

from torch import nn

from tests.tiny_models import TinyNet

# Seconds slow_net sleeps in each forward pass; a test that interrupts a calibration sets it.
FORWARD_SECONDS_VARIABLE = "MEMPROBE_TEST_FORWARD_SECONDS"
LARGEST_SAFE_BATCH = 2


class _Slow(TinyNet):
    def forward(self, x):  # type: ignore[no-untyped-def]
        time.sleep(float(os.environ.get(FORWARD_SECONDS_VARIABLE, "0")))
        return super().forward(x)


def slow_net(in_channels: int, out_channels: int) -> nn.Module:
    """tiny_net, sleeping $MEMPROBE_TEST_FORWARD_SECONDS in every forward pass."""
    return _Slow(in_channels, out_channels)


class _SegfaultsAboveBatch(TinyNet):
    def forward(self, x):  # type: ignore[no-untyped-def]
        if x.shape[0] > LARGEST_SAFE_BATCH:
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().forward(x)


def segfaults_above_batch_2(in_channels: int, out_channels: int) -> nn.Module:
    """tiny_net that kills its process with SIGSEGV at batch 3 and above."""
    return _SegfaultsAboveBatch(in_channels, out_channels)


class _Killed(TinyNet):
    def forward(self, x):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
        return super().forward(x)


def killed_net(in_channels: int, out_channels: int) -> nn.Module:
    return _Killed(in_channels, out_channels)


class _Exits(TinyNet):
    def forward(self, x):  # type: ignore[no-untyped-def]
        os._exit(3)  # a native library ending the process without a Python traceback


def exiting_net(in_channels: int, out_channels: int) -> nn.Module:
    return _Exits(in_channels, out_channels)


class _Chatty(TinyNet):
    def forward(self, x):  # type: ignore[no-untyped-def]
        print("a model that talks on stdout, without a newline", end="", flush=True)
        return super().forward(x)


def chatty_net(in_channels: int, out_channels: int) -> nn.Module:
    """tiny_net that prints to stdout, where an isolated probe's child reports its result."""
    return _Chatty(in_channels, out_channels)


class _Hangs(TinyNet):
    def forward(self, x):  # type: ignore[no-untyped-def]
        time.sleep(3600)
        return super().forward(x)


def hanging_net(in_channels: int, out_channels: int) -> nn.Module:
    return _Hangs(in_channels, out_channels)
