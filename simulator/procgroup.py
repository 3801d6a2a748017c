"""Run a function once on W local processes of one process group and collect the results.

Calibration starts one group per world size and loops over every benchmark inside it,
because spawning is the slow part. The group listens on a free port (bind to port 0),
each worker calls ``destroy_process_group`` in ``finally``, and a group that is not done
by ``timeout_s`` is killed and reported, never waited on.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank, world, port, backend, threads, timeout_s, fn, args, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(
            backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
        )
        queue.put((rank, True, fn(rank, world, *args)))
    except BaseException:
        queue.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_group(
    world: int,
    fn: Callable[..., Any],
    *args,
    backend: str = "gloo",
    threads: int = 1,
    timeout_s: float = 120.0,
) -> list[Any]:
    """``[fn(rank, world, *args) for rank in range(world)]``, each rank its own process.

    ``fn`` must be importable (a module-level function); each worker runs with
    ``torch.set_num_threads(threads)`` inside an initialised process group.
    """
    if world < 1:
        raise ValueError(f"world must be at least 1, got {world}")
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_worker,
            args=(rank, world, port, backend, threads, timeout_s, fn, args, queue),
            daemon=True,
        )
        for rank in range(world)
    ]
    for proc in procs:
        proc.start()
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(results) < world:
            missing = sorted(set(range(world)) - set(results))
            if time.monotonic() > deadline:
                raise TimeoutError(f"ranks {missing} of {world} not done after {timeout_s:g} s")
            if queue.empty():
                if not any(p.is_alive() for p in procs) and queue.empty():
                    raise RuntimeError(f"ranks {missing} of {world} died without a result")
                time.sleep(0.02)
                continue
            rank, ok, value = queue.get()
            if not ok:
                raise RuntimeError(f"rank {rank} of {world} failed:\n{value}")
            results[rank] = value
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
    return [results[rank] for rank in range(world)]
