"""Ranks of DDP or FSDP2 started once and kept: each measures every configuration the parent sends.

A calibration measures some thirty configurations. Launching ``world_size`` processes for
each would start Python, CUDA contexts and the NCCL process group thirty times; a
:class:`RankPool` starts them on its first configuration and sends each later one down a pipe
to every rank. Each rank measures it through a :class:`CudaBackend` (its own device's
``max_memory_allocated``/``max_memory_reserved``) and answers with its measurement.

Why a point measured by a pooled rank reads what a freshly launched rank would read: the
network, optimizer and DDP reducer or FSDP state are built for each point and freed after it;
the backend collects garbage, empties the allocator's cache and resets its peak statistics
before the measured step, and sets the point's memory fraction and restores it after, as the
single-GPU path does for every point of its calibration in one process. After each point the
rank frees cuBLAS's workspaces and compares ``memory_allocated`` with what it held before its
first point, as PyTorch's own CUDA leak check does; a rank that still holds memory could add
it to the next peak, so the pool is stopped and the next point gets fresh ranks.
What is shared across points is what lives outside the caching allocator, as it does in a real
training job: the CUDA context, the NCCL communicators and cuDNN's algorithm cache. The peaks
do not see them; ``context_bytes`` counts the communicator from the first point on, as a fresh
rank does from DDP's first broadcast on; a cached algorithm spares only warm-up trials.

The pool is kept after a point only when every rank answered, measured or out of memory (an
OOM is recovered in the rank as on one GPU). A rank that died, raised, or is still running
``straggler_seconds`` after another answered (stuck in a collective its failed peer will never
join) fails the point with a one-line error, the ranks are stopped, and the next point starts
new ones. Closing the pool (``close()``, ``with``, its backend's ``close()``, interpreter exit,
or an exception such as KeyboardInterrupt during a point) stops every rank; ranks ignore
Ctrl-C, which is the parent's to handle, and end themselves if the parent dies.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.util import Finalize
from typing import Any

from memprobe.backends.cuda import CudaBackend
from memprobe.backends.distributed import DistributedOptions, wrap
from memprobe.backends.rank_spec import LaunchSpec
from memprobe.core.config import StepConfig
from memprobe.core.measurement import Environment, Measurement

STRAGGLER_SECONDS = 30.0  # ranks end within moments of each other: collectives keep them in step
IDLE_GRACE_SECONDS = 10.0  # for idle ranks to leave the process group before they are terminated
ORPHAN_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class _RankSetup:
    """What stays fixed while the ranks live: how many, on what device, read through which runtime."""

    world_size: int
    device_type: str
    runtime: Any
    port: int = field(default=0, compare=False)


class RankPool:
    """``world_size`` rank processes, started on the first configuration and kept for the next.

    Called as a rank launcher: ``pool(spec)`` returns each rank's measurement of ``spec``,
    rank 0 first. A configuration with another world size restarts the ranks.

    Args:
        device_type: fixes every rank's device, whatever the spec says ("cpu": gloo, for tests).
        runtime: fixes every rank's CudaRuntime (a fake readout, for tests).
        straggler_seconds: how long the other ranks may take after one answered.
    """

    def __init__(
        self,
        device_type: str | None = None,
        runtime: Any = None,
        straggler_seconds: float = STRAGGLER_SECONDS,
    ) -> None:
        self._device_type = device_type
        self._runtime = runtime
        self.straggler_seconds = straggler_seconds
        self.starts = 0  # how many times ranks were started
        self._ranks: _Ranks | None = None
        self._finalizer: Finalize | None = None

    def __call__(self, spec: LaunchSpec) -> list[Measurement]:
        setup = _RankSetup(
            spec.config.world_size,
            self._device_type or spec.device_type,
            self._runtime if self._runtime is not None else spec.runtime,
            spec.port,
        )
        ranks = self._running(setup)
        try:
            answers = ranks.measure(spec, self.straggler_seconds)
        except BaseException:  # an interrupt mid-point: stop the ranks at once, they may be mid-step
            self._stop(grace_seconds=0.0)
            raise
        if not all(answer.keeps_pool for answer in answers):
            self._stop(grace_seconds=0.0)
        return [answer.measurement for answer in answers]

    @property
    def process_ids(self) -> list[int]:
        """The running ranks' process ids, rank 0 first; empty when none run."""
        return [p.pid for p in self._ranks.processes if p.pid is not None] if self._ranks else []

    def close(self) -> None:
        """Stop every rank: idle ones leave the process group; any still running after a grace are terminated."""
        self._stop(IDLE_GRACE_SECONDS)

    def __enter__(self) -> RankPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _running(self, setup: _RankSetup) -> _Ranks:
        if self._ranks is not None and (self._ranks.setup != setup or not self._ranks.alive()):
            self._stop(IDLE_GRACE_SECONDS if self._ranks.alive() else 0.0)
        if self._ranks is None:
            self._ranks = _Ranks.start(setup)
            self.starts += 1
            # Also stops the ranks when the pool is collected, or before multiprocessing joins
            # its children at interpreter exit (which would wait on idle ranks for ever).
            self._finalizer = Finalize(self, self._ranks.stop, args=(IDLE_GRACE_SECONDS,), exitpriority=10)
        return self._ranks

    def _stop(self, grace_seconds: float) -> None:
        if self._ranks is not None:
            self._ranks.stop(grace_seconds)
        if self._finalizer is not None:
            self._finalizer.cancel()
        self._ranks = self._finalizer = None


@dataclass(frozen=True)
class _Answer:
    """One rank's answer to a point: its measurement, and whether it may measure the next point."""

    measurement: Measurement
    keeps_pool: bool


class _Ranks:
    """The processes of one start of the pool, and the parent's end of each one's pipe."""

    def __init__(self, setup: _RankSetup, processes: list[Any], connections: list[Connection]) -> None:
        self.setup = setup
        self.processes = processes
        self.connections = connections

    @classmethod
    def start(cls, setup: _RankSetup) -> _Ranks:
        """Spawn, never fork: CUDA cannot start again in a forked child, and a fork of a process
        whose threads hold locks (gloo's, OpenMP's) can hang."""
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        setup = _RankSetup(setup.world_size, setup.device_type, setup.runtime, setup.port or _free_port())
        ranks = cls(setup, [], [])
        try:
            for rank in range(setup.world_size):
                parent_end, rank_end = context.Pipe()
                ranks.connections.append(parent_end)
                process = context.Process(
                    target=_serve, args=(rank, setup, os.getpid(), rank_end), name=f"memprobe-rank-{rank}"
                )
                process.start()
                ranks.processes.append(process)
                rank_end.close()  # only the rank holds its end: the parent reads EOF when it dies
        except BaseException:  # those started would wait for the others in the process group
            ranks.stop(grace_seconds=0.0)
            raise
        return ranks

    def alive(self) -> bool:
        return all(process.is_alive() for process in self.processes)

    def measure(self, spec: LaunchSpec, straggler_seconds: float) -> list[_Answer]:
        """Send ``spec`` to every rank; each one's answer, or why it has none."""
        for connection in self.connections:
            with suppress(OSError):  # a rank that died since: its sentinel says so below
                connection.send(spec)
        received = self._collect(straggler_seconds)
        return [self._answer(rank, spec.config, received[rank]) for rank in range(self.setup.world_size)]

    def _collect(self, straggler_seconds: float) -> dict[int, Any]:
        """Each rank's message, or a string saying why there is none, until all answered or one died."""
        received: dict[int, Any] = {}
        deadline: float | None = None
        while len(received) < self.setup.world_size:
            pending = {
                waitable: rank
                for rank in range(self.setup.world_size)
                if rank not in received
                for waitable in (self.connections[rank], self.processes[rank].sentinel)
            }
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = {pending[waitable] for waitable in wait(list(pending), timeout)}
            if not ready:
                first = min(received)
                late = f"stopped: still running {straggler_seconds:g} s after rank {first} answered"
                return received | {rank: late for rank in set(pending.values())}
            for rank in sorted(ready):
                received[rank] = self._receive(rank)
            gone = [rank for rank in sorted(ready) if not _measured(received[rank])]
            if gone:  # the others wait for it in their next collective: take what they sent, stop them
                stopped = f"stopped when rank {gone[0]} failed: {_reason(received[gone[0]])}"
                return received | {
                    rank: self._receive(rank) if self.connections[rank].poll() else stopped
                    for rank in set(pending.values()) - set(received)
                }
            deadline = deadline or time.monotonic() + straggler_seconds
        return received

    def _receive(self, rank: int) -> Any:
        try:
            return self.connections[rank].recv()
        except (EOFError, OSError):
            process = self.processes[rank]
            process.join(timeout=5)
            return _describe_exit(process.exitcode)

    def _answer(self, rank: int, config: StepConfig, message: Any) -> _Answer:
        if _measured(message):
            _, data, held_bytes = message
            measurement = Measurement.from_dict(data)
            return _Answer(measurement, (measurement.ok or measurement.oom) and held_bytes <= 0)
        environment = Environment(self.setup.device_type, self.setup.device_type)
        if isinstance(message, tuple):  # ("failed", why): a real error, ranked above a missing result
            return _Answer(Measurement(config, environment, None, error=f"rank {rank} {message[1]}"), False)
        error = f"rank {rank} ended without a result ({message})"
        return _Answer(Measurement(config, environment, None, error=error), False)

    def stop(self, grace_seconds: float) -> None:
        """Ask each rank to leave; terminate, then kill, those still running after ``grace_seconds``."""
        for connection in self.connections:
            with suppress(OSError):
                connection.send(None)
        deadline = time.monotonic() + grace_seconds
        for process in self.processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
        for connection in self.connections:
            connection.close()


def _measured(message: Any) -> bool:
    return isinstance(message, tuple) and message[0] == "measured"


def _reason(message: Any) -> str:
    """Why a rank has no measurement: its process ended, or ("failed", why) it could not start."""
    return message if isinstance(message, str) else str(message[1])


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        names = signal.Signals._value2member_map_
        return f"its process was killed by {names[-exitcode].name if -exitcode in names else -exitcode}"
    return f"its process exited with code {exitcode}"


# What each rank runs, in its spawned process.


def _serve(rank: int, setup: _RankSetup, parent_pid: int, parent: Connection) -> None:
    """Join the process group once, then measure each LaunchSpec the parent sends until it sends None."""
    import torch.distributed as dist

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches every process; the parent handles it
    _end_when_orphaned(parent_pid)
    try:
        device, runtime = _join(rank, setup)
    except Exception as error:
        parent.send(("failed", f"could not join the process group: {_first_line(error)}"))
        return
    try:
        held_before = runtime.memory_allocated()
        while (spec := _next_spec(parent)) is not None:
            measurement = _measure_point(spec, device, runtime)
            _release_library_workspaces(device)
            parent.send(("measured", measurement.to_dict(), runtime.memory_allocated() - held_before))
    finally:
        dist.destroy_process_group()


def _end_when_orphaned(parent_pid: int) -> None:
    """End this rank when its parent is gone, even while it waits in a collective for a dead peer."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(ORPHAN_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="memprobe-orphan-watch", daemon=True).start()


def _join(rank: int, setup: _RankSetup) -> tuple[Any, Any]:
    """This rank's device and runtime, in the process group (NCCL on CUDA, gloo on CPU)."""
    import datetime

    import torch
    import torch.distributed as dist

    from memprobe.backends.cuda import TorchCudaRuntime

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(setup.port))
    on_cuda = setup.device_type == "cuda"
    device = torch.device("cuda", rank) if on_cuda else torch.device("cpu")
    if on_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if on_cuda else "gloo",
        rank=rank,
        world_size=setup.world_size,
        timeout=datetime.timedelta(minutes=10),
    )
    return device, setup.runtime or TorchCudaRuntime()


def _next_spec(parent: Connection) -> LaunchSpec | None:
    try:
        spec: LaunchSpec | None = parent.recv()
    except EOFError:  # the parent is gone
        return None
    return spec


def _measure_point(spec: LaunchSpec, device: Any, runtime: Any) -> Measurement:
    """Measure ``spec`` on this rank; a failure is a result, which the parent reports."""
    backend = CudaBackend(
        spec.budget_bytes,
        runtime=runtime,
        step_runner=_rank_step_runner(spec.options, device),
        in_rank=True,
    )
    try:
        return backend.measure(spec.config)
    except Exception as error:
        return Measurement(spec.config, backend.environment(), None, error=_first_line(error))


def _release_library_workspaces(device: Any) -> None:
    """Free cuBLAS's workspaces, which outlive a step in the allocator: the next point's warm-up makes its own."""
    if device.type == "cuda":
        import torch

        clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear is not None:
            clear()


def _rank_step_runner(options: DistributedOptions, device: Any) -> Callable[..., Any]:
    """``run_real_step`` with the network wrapped for this rank, on ``device``."""
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
