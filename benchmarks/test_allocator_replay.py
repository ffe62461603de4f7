"""The caching allocator's reserve on trace: traced allocated, replayed allocated and reserved.

For every architecture at two sizes, one fp32 training step is traced and its allocations are
replayed through the model of PyTorch's caching allocator (``backends/caching_allocator.py``).
The replay must cost under 20% of the probe it is part of.
"""

from __future__ import annotations

from benchmarks.harness import (
    ResultTable,
    SessionMeasurements,
    gib,
    patch_text,
    percent,
    selected_archs,
    write_results,
)
from memprobe.core.config import make_step_config

SIZES = ((64, 64, 64), (128, 128, 128))
REPLAY_SHARE_LIMIT = 0.20  # the replay may add at most this share to a trace probe


def test_allocator_replay_table(measurements: SessionMeasurements) -> None:
    rows, records, shares = [], [], []
    for arch in selected_archs():
        for patch in SIZES:
            config = make_step_config(arch, patch, 1)
            timed = measurements.timed(config)
            replay_seconds = measurements.backend.last_replay_seconds
            m = timed.measurement
            assert m.ok and m.reserved_source == "simulated"
            traced, simulated, reserved = (
                m.peak_allocated_bytes,
                m.simulated_allocated_bytes,
                m.peak_reserved_bytes,
            )
            assert traced is not None and simulated is not None and reserved is not None
            assert traced <= simulated <= reserved, config.label()
            share = replay_seconds / timed.wall_seconds
            shares.append(share)
            rows.append(
                {
                    "arch": arch,
                    "patch": patch_text(patch),
                    "traced allocated GiB": gib(traced),
                    "replayed allocated GiB": gib(simulated),
                    "replayed reserved GiB": gib(reserved),
                    "reserved / traced": percent(reserved / traced - 1),
                    "replay s": f"{replay_seconds:.3f}",
                    "replay / probe": f"{share:.1%}",
                }
            )
            records.append(
                {
                    "arch": arch,
                    "patch": patch_text(patch),
                    "batch": 1,
                    "precision": "fp32",
                    "traced_allocated_bytes": traced,
                    "simulated_allocated_bytes": simulated,
                    "simulated_reserved_bytes": reserved,
                    "replay_seconds": round(replay_seconds, 4),
                    "probe_seconds": round(timed.wall_seconds, 3),
                }
            )
    notes = (
        "One fp32 training step at batch 1 (AdamW, Dice+CE), traced on fake tensors: traced allocated = live "
        "tensor storage rounded to 512 B; replayed = the same allocations and frees, in order, through a model "
        "of PyTorch's CUDA caching allocator (allocated counts blocks after splitting, so unsplit tails count; "
        "reserved counts segments). The warm-up step's cache is kept, as on a GPU.",
        "These are simulated figures, not GPU measurements: `memprobe verify` on a GPU compares them with "
        "max_memory_allocated / max_memory_reserved.",
        f"replay / probe: the replay's share of the whole trace probe; the target is under {REPLAY_SHARE_LIMIT:.0%} "
        f"(worst here {max(shares):.1%}).",
    )
    write_results(
        ResultTable("allocator_replay", "Allocator replay: traced and simulated peaks", rows, records, notes)
    )
    assert max(shares) < REPLAY_SHARE_LIMIT
