"""Launch the ranks of a DDP or FSDP2 step for real: one process per GPU, the worst rank reported.

``torch.multiprocessing`` spawns ``world_size`` processes. Each joins the process group (NCCL
on CUDA, gloo on CPU), wraps the network as memprobe.backends.distributed does without its
no-op communication hook, and measures its own step through a :class:`CudaBackend` whose
runtime reads that rank's ``max_memory_allocated``/``max_memory_reserved``; it writes the
measurement to a file in a temporary folder that the parent reads. The runtime is injected,
so the launcher runs on CPU with gloo and a fake readout in the tests.

A rank that fails (out of memory, an error, or killed) exits non-zero, so the others, which
would wait for it in their next collective, are stopped at once.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from memprobe.backends.distributed import DistributedOptions, wrap
from memprobe.backends.rank_spec import LaunchSpec, worst_rank
from memprobe.core.config import StepConfig
from memprobe.core.measurement import Environment, Measurement

RESULT_FILE = "rank{rank}.json"
__all__ = ["LaunchSpec", "launch_ranks", "worst_rank"]


def launch_ranks(spec: LaunchSpec) -> list[Measurement]:
    """Run ``spec``'s step on every rank at once; return each rank's measurement, rank 0 first.

    The ranks are spawned, never forked: CUDA cannot start again in a forked child, and a fork
    of a process whose threads hold locks (gloo's, OpenMP's) can hang.

    A rank that ended without writing a result (killed, or stopped when another failed) is a
    measurement with ``error`` saying so.
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    spec = replace(spec, port=spec.port or _free_port())
    world_size = spec.config.world_size
    failure = None
    with tempfile.TemporaryDirectory(prefix="memprobe-ranks-") as folder:
        try:
            mp.start_processes(
                _run_rank, args=(spec, folder), nprocs=world_size, join=True, start_method="spawn"
            )
        except ProcessException as error:
            failure = _first_line(error)
        results = [_read_result(Path(folder), rank) for rank in range(world_size)]
    return [
        result
        or Measurement(
            spec.config,
            Environment(spec.device_type, spec.device_type),
            None,
            error=f"rank {rank} ended without a result ({failure or 'no reason given'})",
        )
        for rank, result in enumerate(results)
    ]


def _run_rank(rank: int, spec: LaunchSpec, folder: str) -> None:
    """One spawned rank: measure, write the measurement, and exit non-zero when it did not fit or failed."""
    measurement = _measure_rank(rank, spec)
    path = Path(folder) / RESULT_FILE.format(rank=rank)
    path.with_suffix(".tmp").write_text(json.dumps(measurement.to_dict()), encoding="utf-8")
    path.with_suffix(".tmp").replace(path)
    if not measurement.ok:
        sys.exit(1)


def _measure_rank(rank: int, spec: LaunchSpec) -> Measurement:
    import datetime

    import torch
    import torch.distributed as dist

    from memprobe.backends.cuda import CudaBackend, TorchCudaRuntime

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(spec.port))
    on_cuda = spec.device_type == "cuda"
    device = torch.device("cuda", rank) if on_cuda else torch.device("cpu")
    if on_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if on_cuda else "gloo",
        rank=rank,
        world_size=spec.config.world_size,
        timeout=datetime.timedelta(minutes=10),
    )
    try:
        backend = CudaBackend(
            spec.budget_bytes,
            runtime=spec.runtime or TorchCudaRuntime(),
            step_runner=_rank_step_runner(spec.options, device),
            in_rank=True,
        )
        try:
            return backend.measure(spec.config)
        except Exception as error:  # a failed rank is a result: the parent reports it
            return Measurement(spec.config, backend.environment(), None, error=_first_line(error))
    finally:
        dist.destroy_process_group()


def _rank_step_runner(options: DistributedOptions, device: Any) -> Callable[..., Any]:
    """``run_real_step`` with the network wrapped for this rank, on ``device``."""
    import time

    from memprobe.backends.cuda import StepRun, warm_up
    from memprobe.training.named_steps import load_step
    from memprobe.training.networks import build_for_config
    from memprobe.training.step import parameter_count, prepare_training

    def run(config: StepConfig, _: object, on_phase: Any, before_measured: Any) -> StepRun:
        step = load_step(config.step)
        network = build_for_config(config).to(device)
        parameters = parameter_count(network)
        model = wrap(network, options, device=device)
        state = prepare_training(config, model, device)
        warmup_steps = warm_up(state, lambda s: step(s, lambda name: None))
        before_measured()
        started = time.perf_counter()
        step(state, on_phase)
        return StepRun(time.perf_counter() - started, parameters, warmup_steps)

    return run


def _read_result(folder: Path, rank: int) -> Measurement | None:
    path = folder / RESULT_FILE.format(rank=rank)
    if not path.exists():
        return None
    return Measurement.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
