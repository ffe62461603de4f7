"""The architecture catalogue: names, shape rules and nnU-Net topologies, without torch.

It sits in the bottom layer beside `core`: a configuration names an architecture, so checking
it needs the catalogue; building a network is `training.networks`.
"""

from memprobe.core.archs.registry import ArchSpec, get_arch, known_arch_names, resolve_arch

__all__ = ["ArchSpec", "get_arch", "known_arch_names", "resolve_arch"]
