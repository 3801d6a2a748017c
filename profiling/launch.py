"""Run one function on W ranks: local processes (spawn) here, ``torchrun`` on clusters.

torch.distributed is the engine; this module only starts processes, sets up and tears
down the process group, and turns whatever happens into one :class:`LaunchOutcome`.

* :func:`launch` (parent side): spawns ``W`` processes with ``torch.multiprocessing``
  (start method ``spawn``), each of which joins a process group (gloo on CPU; NCCL with
  one GPU per rank, ``torch.cuda.set_device(rank)``) on a free port found by binding
  port 0, calls ``fn(rank, world, *args)`` and sends back its return value (which must
  pickle). The parent waits at most ``timeout_s``; on a timeout, or a few seconds after
  the first rank fails, it kills every rank's whole process group (SIGKILL), so a hung
  collective never hangs the caller.
* :func:`run_from_env` (rank side, under ``torchrun``): reads ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK`` and rendezvouses through ``env://`` (``MASTER_ADDR``/``MASTER_PORT``,
  which torchrun sets), then calls the same ``fn``. Inside it, :func:`node_placement`
  says which node each rank runs on (torchrun's ``GROUP_RANK``) and that node's host.
* :func:`init_process_group` / :func:`cleanup`: the one idempotent pair; every path
  through :func:`launch` and :func:`run_from_env` destroys the group in ``finally``.
  The process-group timeout (``pg_timeout_s``) bounds a collective waiting on a dead or
  hung peer. With gloo, a rank is one device: one thread (``torch.set_num_threads(1)``),
  at every W, so W = 1 runs what the cost model's one-thread calibration describes and
  step times do not swing with how many idle cores intra-op threads happen to find.
  Every rank also keeps its freed host memory (``profiling.host_allocator``), so a
  step's time does not depend on whether glibc happens to return large blocks to the
  kernel in that process.

A failure is classified by :func:`classify_failure` as ``oom`` (``torch.OutOfMemoryError``,
``MemoryError``, allocator "out of memory" / "can't allocate memory"), ``timeout`` (a
collective that timed out, or the parent's wall clock) or ``error``. Secondary failures
(a peer's "connection closed" after the first rank died) never hide the root cause.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import queue
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from profiling import host_allocator
from profiling.point import ConfigError

__all__ = [
    "ConfigError",
    "LaunchOutcome",
    "classify_failure",
    "cleanup",
    "find_free_port",
    "init_process_group",
    "launch",
    "launch_or_raise",
    "node_placement",
    "prepare_rank",
    "run_from_env",
    "visible_gpus",
]

FAILURE_GRACE_S = 3.0
"""After the first rank fails, how long the parent waits for the others' reports."""
_SECONDARY = ("closed by peer", "connection reset", "broken pipe", "connection refused")


@dataclass(slots=True)
class LaunchOutcome:
    status: str
    """``ok``, ``oom``, ``error`` or ``timeout``."""
    message: str | None = None
    """One line: the root cause (``rank R: Type: text``), None when ok."""
    values: list[Any] = field(default_factory=list)
    """``fn``'s return value per rank, in rank order (only when every rank succeeded)."""
    wall_s: float = 0.0


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def find_free_port() -> int:
    """A TCP port the OS reports free (bind port 0); never hard-coded."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_process_group(
    backend: str,
    *,
    rank: int,
    world: int,
    init_method: str = "env://",
    pg_timeout_s: float = 120.0,
    local_rank: int | None = None,
) -> None:
    """Join the default process group once; a second call with the same shape is a no-op."""
    if dist.is_initialized():
        if dist.get_backend() != backend or dist.get_world_size() != world:
            raise RuntimeError(
                f"a process group already exists ({dist.get_backend()}, world "
                f"{dist.get_world_size()}); asked for ({backend}, world {world})"
            )
        return
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        device = torch.device("cuda", rank if local_rank is None else local_rank)
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=pg_timeout_s),
        **kwargs,
    )


def cleanup() -> None:
    """Destroy the default process group if there is one (idempotent)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def classify_failure(exc: BaseException) -> str:
    """``oom``, ``timeout`` or ``error`` for an exception raised on a rank."""
    text = str(exc).lower()
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return "oom"
    if isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    ):
        return "oom"
    if isinstance(exc, TimeoutError) or "timed out" in text or "timeout" in text:
        return "timeout"
    return "error"


def _one_line(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}"


def prepare_rank(backend: str, threads: int | None = None) -> None:
    """What every rank does before its process group: a steady host allocator, and on
    gloo one intra-op thread unless ``threads`` says otherwise (module docstring)."""
    host_allocator.keep_freed_memory()
    if threads is not None or backend == "gloo":
        torch.set_num_threads(threads or 1)


def _rank_main(rank, world, backend, threads, init_method, pg_timeout_s, fn, args, results) -> None:
    """Entry of each spawned rank: own process group, init, run, report, clean up."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # so the parent can kill this rank and anything it starts
    prepare_rank(backend, threads)
    try:
        init_process_group(
            backend, rank=rank, world=world, init_method=init_method, pg_timeout_s=pg_timeout_s
        )
        value = fn(rank, world, *args)
        # Plain pickle: torch's queue reductions share tensors through file descriptors,
        # which die with this process; bytes do not.
        results.put((rank, "ok", pickle.dumps(value)))
    except BaseException as exc:
        traceback.print_exc()
        results.put((rank, classify_failure(exc), _one_line(exc)))
    finally:
        with contextlib.suppress(Exception):
            cleanup()
    # Leave without the interpreter's teardown once the report is flushed: torch.profiler
    # (kineto) can leave a joinable thread that aborts a normal exit ("terminate called
    # without an active exception", signal 6) after the work is done; the torchrun entry
    # (profiling.verbs) leaves the same way.
    results.close()
    results.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _kill(process) -> None:
    if not process.is_alive():
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


def _summarise(reports: dict[int, tuple[str, Any]], world: int, timed_out_after: float | None):
    failures = {r: rep for r, rep in reports.items() if rep[0] != "ok"}
    if timed_out_after is None and not failures:
        return "ok", None
    if timed_out_after is not None:
        pending = sorted(set(range(world)) - set(reports))
        head = f"no result after {timed_out_after:g} s from ranks {pending}"
        causes = [f"rank {r}: {msg}" for r, (_, msg) in sorted(failures.items())]
        return "timeout", "; ".join([head, *causes])[:600]

    def rank_of(item):  # root causes first, then OOM over timeouts over errors
        rank, (status, msg) = item
        secondary = any(s in msg.lower() for s in _SECONDARY)
        return (secondary, {"oom": 0, "timeout": 1}.get(status, 2), rank)

    rank, (status, msg) = min(failures.items(), key=rank_of)
    return status, f"rank {rank}: {msg}"


def launch(
    fn: Callable[..., Any],
    args: tuple = (),
    *,
    world: int,
    backend: str = "gloo",
    timeout_s: float = 600.0,
    pg_timeout_s: float = 120.0,
    threads: int | None = None,
) -> LaunchOutcome:
    """Run ``fn(rank, world, *args)`` on ``world`` fresh local processes; never hangs.

    ``fn`` must be importable by name (a module-level function) for ``spawn``;
    ``threads``: intra-op threads per rank (None: one on gloo, torch's default on NCCL).
    """
    if world < 1:
        raise ConfigError(f"world size must be at least 1, got {world}")
    if backend == "nccl" and world > visible_gpus():
        raise ConfigError(
            f"NCCL runs one GPU per rank: world {world} exceeds the {visible_gpus()} visible GPUs"
        )
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    init_method = f"tcp://127.0.0.1:{find_free_port()}"
    start = time.perf_counter()
    processes = [
        ctx.Process(
            target=_rank_main,
            args=(rank, world, backend, threads, init_method, pg_timeout_s, fn, args, results),
            daemon=True,
        )
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    reports: dict[int, tuple[str, Any]] = {}
    dead_since: dict[int, float] = {}
    first_failure: float | None = None
    timed_out_after: float | None = None
    try:
        while len(reports) < world:
            now = time.perf_counter()
            if now - start > timeout_s:
                timed_out_after = timeout_s
                break
            if first_failure is not None and now - first_failure > FAILURE_GRACE_S:
                break
            try:
                rank, status, payload = results.get(timeout=0.1)
            except queue.Empty:
                for rank, process in enumerate(processes):
                    if rank in reports or process.is_alive():
                        continue
                    # Died without a report (killed, segfault): give the queue a second.
                    if now - dead_since.setdefault(rank, now) > 1.0:
                        code = process.exitcode
                        how = f"signal {-code}" if code and code < 0 else f"exit code {code}"
                        hint = " (SIGKILL: the kernel's OOM killer or an outside kill)"
                        reports[rank] = ("error", f"died with {how}{hint if code == -9 else ''}")
                        first_failure = first_failure or now
                continue
            reports[rank] = (status, payload)
            if status != "ok" and first_failure is None:
                first_failure = time.perf_counter()
    finally:
        for process in processes:
            _kill(process)
        for process in processes:
            process.join(timeout=10)
        results.close()
        results.join_thread()
    status, message = _summarise(reports, world, timed_out_after)
    values = [pickle.loads(reports[r][1]) for r in range(world)] if status == "ok" else []
    return LaunchOutcome(status, message, values, time.perf_counter() - start)


def launch_or_raise(fn: Callable[..., Any], args: tuple = (), **kwargs) -> list[Any]:
    """:func:`launch`, returning ``fn``'s values in rank order, or raising ``RuntimeError``
    with the root cause when any rank failed or timed out (calibration's way in)."""
    outcome = launch(fn, args, **kwargs)
    if outcome.status != "ok":
        world = kwargs.get("world")
        raise RuntimeError(f"process group of {world} failed ({outcome.status}): {outcome.message}")
    return outcome.values


def run_from_env(
    fn: Callable[..., Any], args: tuple = (), *, backend: str | None = None, pg_timeout_s=120.0
):
    """Under ``torchrun``: join the env:// process group, run ``fn(rank, world, *args)``."""
    missing = [
        k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if missing:
        raise RuntimeError(f"run_from_env needs torchrun's environment; missing {missing}")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    prepare_rank(backend)
    try:
        init_process_group(
            backend, rank=rank, world=world, pg_timeout_s=pg_timeout_s, local_rank=local_rank
        )
        return fn(rank, world, *args)
    finally:
        cleanup()


def node_placement() -> list[tuple[int, str]]:
    """Inside a process group: ``(node, host)`` of every rank, in rank order.

    ``node`` is torchrun's ``GROUP_RANK`` (the rank of the rank's node in the rendezvous;
    0 without torchrun, i.e. every rank on this host); ``host`` is ``socket.gethostname()``
    there. Nodes are told apart by ``GROUP_RANK``, not by host name: two torchrun agents
    on one host (network namespaces, containers) are two nodes. One all-gather of small
    objects over the default group.
    """
    mine = (int(os.environ.get("GROUP_RANK", "0")), socket.gethostname())
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return [(int(node), str(host)) for node, host in every]
