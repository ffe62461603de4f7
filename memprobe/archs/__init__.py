"""Architectures memprobe knows how to build and plan for."""

from memprobe.archs.registry import ArchSpec, get_arch, known_arch_names, resolve_arch

__all__ = ["ArchSpec", "get_arch", "known_arch_names", "resolve_arch"]
