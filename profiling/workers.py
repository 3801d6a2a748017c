"""The one runner: W local ranks started once, in one process group, serving task after task.

Starting a rank costs seconds (a torch import, the rendezvous, the first collective's
connections); a point's steps often cost less. So ranks are spawned once per world size
and backend and kept:

* :class:`WorkerPool`: ``world`` processes (start method ``spawn``, each in its own
  process group so that it can be killed with whatever it started) join one process
  group (gloo on CPU, NCCL one GPU per rank) on a free port, then run ``fn(rank, world,
  *args)`` for each task :meth:`~WorkerPool.run` hands them, in order, and send back the
  return values (which must pickle). Each task is bounded by its own ``timeout_s``
  (spawning and the rendezvous count towards the first task's); a few seconds after the
  first rank fails, or at the timeout, every rank's process group is killed (SIGKILL) and
  the pool is spent: a fault never leaves a half-broken group behind for the next task.
* :class:`Runner`: keeps one pool alive at a time and reuses it while consecutive tasks
  ask for the same ``(world, backend, threads, pg_timeout_s)``; a task that fails ends
  its pool and the next task starts a fresh one; ``fresh=True`` (or ``reuse=False``)
  runs a task in processes of its own, as ``profiling.launch.launch`` does.

Each outcome is a :class:`profiling.launch.LaunchOutcome`; ``served`` says how many tasks
the processes had run, this one included (1: fresh processes). What a task measures must
not depend on what the processes did before: ``profiling.measure`` takes every memory
view from the step's own starting level and resets the resident-set high-water mark per
point (``measure.reset_rss_peak``). The process-group timeout (``pg_timeout_s``) bounds a
collective waiting on a dead or hung peer; failures are classified by
:func:`profiling.launch.classify_failure`, the root cause named before its echoes.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp

from profiling.launch import (
    ConfigError,
    LaunchOutcome,
    classify_failure,
    cleanup,
    find_free_port,
    init_process_group,
    prepare_rank,
    visible_gpus,
)

__all__ = ["FAILURE_GRACE_S", "Runner", "WorkerPool", "check_world"]

FAILURE_GRACE_S = 3.0
"""After the first rank fails, how long the parent waits for the others' reports."""
STARTUP = -1
"""Task number of a report from a rank whose process group could not be set up."""
PARENT_POLL_S = 5.0
"""An idle rank checks this often that its parent is still alive (else it exits)."""
_SECONDARY = ("closed by peer", "connection reset", "broken pipe", "connection refused")


def _one_line(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}"


def _rank_main(rank, world, backend, threads, init_method, pg_timeout_s, tasks, results):
    """Entry of each spawned rank: join the group once, then run tasks until told to stop."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # so the parent can kill this rank and anything it starts
    parent = os.getppid()
    prepare_rank(backend, threads)
    try:
        init_process_group(
            backend, rank=rank, world=world, init_method=init_method, pg_timeout_s=pg_timeout_s
        )
        while True:
            try:
                task = tasks.get(timeout=PARENT_POLL_S)
            except queue.Empty:
                if os.getppid() != parent:  # the parent died without closing the pool
                    break
                continue
            if task is None:
                break
            number, fn, args = task
            try:
                value = fn(rank, world, *args)
                # Plain pickle: torch's queue reductions share tensors through file
                # descriptors, which die with this process; bytes do not.
                results.put((number, rank, "ok", pickle.dumps(value)))
            except BaseException as exc:  # reported; the parent then ends the pool
                traceback.print_exc()
                results.put((number, rank, classify_failure(exc), _one_line(exc)))
    except BaseException as exc:  # the process group itself could not be set up
        traceback.print_exc()
        results.put((STARTUP, rank, classify_failure(exc), _one_line(exc)))
    finally:
        with contextlib.suppress(Exception):
            cleanup()
    # Leave without the interpreter's teardown once the reports are flushed: torch.profiler
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


def check_world(world: int, backend: str) -> None:
    """Refuse, with one line, a world that cannot start here."""
    if world < 1:
        raise ConfigError(f"world size must be at least 1, got {world}")
    if backend == "nccl" and world > visible_gpus():
        raise ConfigError(
            f"NCCL runs one GPU per rank: world {world} exceeds the {visible_gpus()} visible GPUs"
        )


class WorkerPool:
    """``world`` ranks in one process group, started on the first task, serving tasks in turn.

    ``threads``: intra-op threads per rank (None: one on gloo, torch's default on NCCL).
    A pool whose task failed or timed out is closed (:attr:`spent`); start another.
    """

    def __init__(
        self,
        world: int,
        backend: str = "gloo",
        *,
        threads: int | None = None,
        pg_timeout_s: float = 120.0,
    ) -> None:
        check_world(world, backend)
        self.world, self.backend = world, backend
        self.threads, self.pg_timeout_s = threads, pg_timeout_s
        self.served = 0
        """Tasks handed to these processes so far."""
        self.spent = False
        """True once closed (after a fault, or by :meth:`close`): it runs nothing more."""
        self._processes: list = []
        self._tasks: list = []
        self._results = None

    @property
    def key(self) -> tuple:
        return (self.world, self.backend, self.threads, self.pg_timeout_s)

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self._results = ctx.Queue()
        self._tasks = [ctx.Queue() for _ in range(self.world)]
        init_method = f"tcp://127.0.0.1:{find_free_port()}"
        self._processes = [
            ctx.Process(
                target=_rank_main,
                args=(
                    rank,
                    self.world,
                    self.backend,
                    self.threads,
                    init_method,
                    self.pg_timeout_s,
                    self._tasks[rank],
                    self._results,
                ),
                daemon=True,
            )
            for rank in range(self.world)
        ]
        for process in self._processes:
            process.start()

    def run(self, fn: Callable[..., Any], args: tuple = (), *, timeout_s: float = 600.0):
        """``fn(rank, world, *args)`` on every rank; never hangs longer than ``timeout_s``.

        ``fn`` must be importable by name (a module-level function) for ``spawn``.
        """
        if self.spent:
            raise RuntimeError("this worker pool is closed (a task failed); start another")
        start = time.perf_counter()
        if not self._processes:
            self._start()
        self.served += 1
        for tasks in self._tasks:
            tasks.put((self.served, fn, args))
        reports, timed_out_after = self._collect(self.served, start, timeout_s)
        status, message = _summarise(reports, self.world, timed_out_after)
        values = []
        if status == "ok":
            values = [pickle.loads(reports[r][1]) for r in range(self.world)]
        else:
            self.close()
        return LaunchOutcome(status, message, values, time.perf_counter() - start, self.served)

    def _collect(self, number: int, start: float, timeout_s: float):
        """Every rank's report of task ``number``, or as many as came before a fault's
        grace period or the timeout ran out (then the time waited)."""
        reports: dict[int, tuple[str, Any]] = {}
        dead_since: dict[int, float] = {}
        first_failure: float | None = None
        while len(reports) < self.world:
            now = time.perf_counter()
            if now - start > timeout_s:
                return reports, timeout_s
            if first_failure is not None and now - first_failure > FAILURE_GRACE_S:
                break
            try:
                task, rank, status, payload = self._results.get(timeout=0.1)
            except queue.Empty:
                for rank, process in enumerate(self._processes):
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
            if task not in (number, STARTUP):
                continue  # cannot happen: a pool ends at its first fault
            reports[rank] = (status, payload)
            if status != "ok" and first_failure is None:
                first_failure = time.perf_counter()
        return reports, None

    def close(self) -> None:
        """Kill every rank (and what it started) and release the queues; idempotent."""
        self.spent = True
        for process in self._processes:
            _kill(process)
        for process in self._processes:
            if process.pid is not None:  # started (a failed start leaves the rest unstarted)
                process.join(timeout=10)
        for channel in [*self._tasks, self._results]:
            if channel is not None:
                channel.close()
                channel.join_thread()
        self._processes, self._tasks, self._results = [], [], None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Runner:
    """Tasks on local ranks, one pool alive at a time, reused while the shape repeats.

    ``reuse`` False: every task in fresh processes (the measurements' old way, kept to
    compare against). Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, *, reuse: bool = True) -> None:
        self.reuse = reuse
        self._pool: WorkerPool | None = None

    def run(
        self,
        fn: Callable[..., Any],
        args: tuple = (),
        *,
        world: int,
        backend: str = "gloo",
        timeout_s: float = 600.0,
        pg_timeout_s: float = 120.0,
        threads: int | None = None,
        fresh: bool = False,
    ) -> LaunchOutcome:
        """``fn(rank, world, *args)`` on ``world`` ranks: the kept pool if it has this
        shape, else a new one (``fresh``: processes of its own, closed after)."""
        check_world(world, backend)
        if fresh or not self.reuse:
            with WorkerPool(world, backend, threads=threads, pg_timeout_s=pg_timeout_s) as pool:
                return pool.run(fn, args, timeout_s=timeout_s)
        key = (world, backend, threads, pg_timeout_s)
        if self._pool is not None and (self._pool.spent or self._pool.key != key):
            self.close()
        if self._pool is None:
            self._pool = WorkerPool(world, backend, threads=threads, pg_timeout_s=pg_timeout_s)
        outcome = self._pool.run(fn, args, timeout_s=timeout_s)
        if self._pool.spent:  # a fault ended it: the next task starts afresh
            self._pool = None
        return outcome

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
