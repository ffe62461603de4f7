"""Measuring backends: run a training step and report its peak memory."""

from memprobe.backends.base import Backend, get_backend

__all__ = ["Backend", "get_backend"]
