"""Test helper: run a function on W local gloo processes once and collect each rank's result.

Spawning costs seconds, so a test module calls :func:`run_world` once (a module-scoped
fixture) and loops over its cases inside the workers. It is ``profiling.launch`` (the
profiler's own launcher: free port, bounded by a timeout, every rank killed on failure)
turned into an exception for tests; each failing rank's traceback is on stderr.
"""

from __future__ import annotations

from profiling.launch import launch


def run_world(world: int, fn, *args, timeout_s: float = 600):
    """``[fn(rank, world, *args) for rank in range(world)]``, each in its own process."""
    outcome = launch(fn, args, world=world, backend="gloo", timeout_s=timeout_s)
    if outcome.status != "ok":
        raise RuntimeError(f"{world} ranks: {outcome.status}: {outcome.message}")
    return outcome.values
