"""Which of a snapshot's ``allocator_settings`` the allocator model follows.

A replay under settings the model does not follow would be a silent approximation; each such
setting is named in the check's result instead. Followed: ``expandable_segments``,
``max_split_size`` and ``roundup_power2_divisions``. Not followed: the garbage-collection
threshold (it acts only under ``set_per_process_memory_fraction``, which a snapshot does not
record) and the ``cudaMallocAsync`` backend (not the caching allocator at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_DIVISION_KEYS = tuple(str(1 << power) for power in range(16))  # MiB: one entry per power-of-two interval


@dataclass(frozen=True)
class FollowedSettings:
    expandable_segments: bool = False
    max_split_size: int | None = None
    roundup_power2_divisions: tuple[int, ...] = ()
    not_followed: tuple[str, ...] = ()


def followed_settings(settings: Any) -> FollowedSettings:
    """Read ``allocator_settings``: what the model applies, and what it cannot."""
    settings = settings if isinstance(settings, dict) else {}
    not_followed: list[str] = []
    max_split = settings.get("max_split_size", -1)
    max_split_size = max_split if isinstance(max_split, int) and 0 < max_split < 2**62 else None
    divisions = _divisions(settings.get("roundup_power2_divisions"))
    threshold = settings.get("garbage_collection_threshold", 0.0)
    if isinstance(threshold, (int, float)) and threshold > 0:
        not_followed.append(f"garbage_collection_threshold={threshold}")
    conf = str(settings.get("PYTORCH_CUDA_ALLOC_CONF") or "")
    if "cudaMallocAsync" in conf:
        not_followed.append("backend:cudaMallocAsync (not the caching allocator)")
    return FollowedSettings(
        bool(settings.get("expandable_segments")), max_split_size, divisions, tuple(not_followed)
    )


def _divisions(raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, dict):
        return ()
    values = tuple(int(raw.get(key) or 0) for key in _DIVISION_KEYS)
    return values if any(values) else ()
