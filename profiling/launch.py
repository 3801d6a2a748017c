"""Run one function on W ranks: local processes (spawn) here, ``torchrun`` on clusters.

torch.distributed is the engine; this module sets up and tears down the process group
and says what a failure was; ``profiling.workers`` starts the local processes.

* :func:`launch` (parent side): ``fn(rank, world, *args)`` on ``world`` fresh processes,
  one task on a :class:`profiling.workers.WorkerPool` of its own: each rank joins a
  process group (gloo on CPU; NCCL with one GPU per rank, ``torch.cuda.set_device(rank)``)
  on a free port found by binding port 0, runs ``fn`` and sends back its return value
  (which must pickle). The parent waits at most ``timeout_s``; on a timeout, or a few
  seconds after the first rank fails, it kills every rank's whole process group
  (SIGKILL), so a hung collective never hangs the caller. To run many tasks on the same
  ranks, use :class:`profiling.workers.Runner`.
* :func:`run_from_env` (rank side, under ``torchrun``): reads ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK`` and rendezvouses through ``env://`` (``MASTER_ADDR``/``MASTER_PORT``,
  which torchrun sets), then calls the same ``fn``. Inside it, :func:`node_placement`
  says which node each rank runs on (torchrun's ``GROUP_RANK``) and that node's host.
* :func:`init_process_group` / :func:`cleanup`: the one idempotent pair; every rank
  (spawned or under torchrun) destroys its group in ``finally``. The process-group
  timeout (``pg_timeout_s``) bounds a collective waiting on a dead or hung peer.
  :func:`prepare_rank` is what every rank does first: with gloo, a rank is one device:
  one thread (``torch.set_num_threads(1)``), at every W, so W = 1 runs what the cost
  model's one-thread calibration describes and step times do not swing with how many
  idle cores intra-op threads happen to find. Every rank also keeps its freed host
  memory (``profiling.host_allocator``), so a step's time does not depend on whether
  glibc happens to return large blocks to the kernel in that process.

A failure is classified by :func:`classify_failure` as ``oom`` (``torch.OutOfMemoryError``,
``MemoryError``, allocator "out of memory" / "can't allocate memory"), ``timeout`` (a
collective that timed out, or the parent's wall clock) or ``error``. Secondary failures
(a peer's "connection closed" after the first rank died) never hide the root cause.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

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


@dataclass(slots=True)
class LaunchOutcome:
    status: str
    """``ok``, ``oom``, ``error`` or ``timeout``."""
    message: str | None = None
    """One line: the root cause (``rank R: Type: text``), None when ok."""
    values: list[Any] = field(default_factory=list)
    """``fn``'s return value per rank, in rank order (only when every rank succeeded)."""
    wall_s: float = 0.0
    """Seconds from handing the task over to its last report (a fresh pool's start included)."""
    served: int = 1
    """Tasks the processes had run, this one included (1: fresh processes)."""


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


def prepare_rank(backend: str, threads: int | None = None) -> None:
    """What every rank does before its process group: a steady host allocator, and on
    gloo one intra-op thread unless ``threads`` says otherwise (module docstring)."""
    host_allocator.keep_freed_memory()
    if threads is not None or backend == "gloo":
        torch.set_num_threads(threads or 1)


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

    One task on a :class:`profiling.workers.WorkerPool` of its own, closed after it.
    ``fn`` must be importable by name (a module-level function) for ``spawn``;
    ``threads``: intra-op threads per rank (None: one on gloo, torch's default on NCCL).
    """
    from profiling.workers import WorkerPool  # workers imports this module's group pair

    with WorkerPool(world, backend, threads=threads, pg_timeout_s=pg_timeout_s) as pool:
        return pool.run(fn, args, timeout_s=timeout_s)


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
