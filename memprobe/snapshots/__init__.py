"""PyTorch memory snapshots: memprobe's meeting point with real GPUs.

A snapshot (``torch.cuda.memory._dump_snapshot``) holds the CUDA caching allocator's own trace
of a run. memprobe reads them without running code (``reader``), rebuilds the allocator's state
at the first recorded event (``start_state``), replays the trace through its allocator model and
compares every decision with the GPU's (``check``), writes its own traced steps in the same
format for PyTorch's viewer (``export``), and turns a user's real run into a CUDA measurement
(``measure``, ``record``).
"""
