"""The largest batch each method fits in a given memory, by the model and by measurement.

Memory here is the cost model's and the profiler's definition: the allocator's peak
during one forward and backward of the loss, above its level at the step's start (the
inputs held before, their gradients and every operator's scratch counted). "Fits" means
fits: the model adds the hardware profile's reserve (CUDA context, NCCL's buffers,
allocator fragmentation: ``Hardware.memory_reserve``, each part with its source) and
what the rest of the training step holds (``other_bytes``: weights, optimizer state,
activations), since the loss gets what is left.

* :func:`predicted_max_batch` searches the model's peak over the local batch b per W
  (:func:`max_local_batch`, exact to one example, a few vectorised model calls each);
  ``sigsim recommend`` uses the same search.
* :func:`measured_max_batch` reads measured points (emulated ranks at large W, or real
  ones) and returns, per (method, W), the largest measured b whose allocator peak fits
  (the live-tensor peak for records without one, and ``source`` says so). It is a lower
  bound set by the batch ladder that was measured, not a search.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from experiments import backends
from experiments.records import Row

LARGEST_BATCH = 2**30
"""Upper end of the search, in examples per rank."""
_GRID = 2048
"""Batches priced per model call while narrowing the search."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MaxBatch:
    method: str
    world: int
    batch: int
    """Largest local batch b that fits (examples per rank); 0: not even b = 1."""
    source: str
    """"model", "measured" (allocator peaks) or "measured, live tensors" (records
    without an allocator peak)."""

    @property
    def global_batch(self) -> int:
        return self.batch * self.world


def needed_bytes(method, world, batch, dim, dtype, hardware, options) -> np.ndarray:
    """What must fit besides the reserve: the predicted peak, times ``1 +`` the profile's
    allocator fragmentation (``Hardware.memory_reserve``)."""
    p = backends.predict(method, world, batch, dim, dtype, hardware, **options)
    peak = np.broadcast_to(np.asarray(p.peak_memory_bytes, dtype=float), np.shape(batch))
    return peak * (1 + hardware.memory_reserve.fragmentation_fraction)


def max_local_batch(method, world, dim, dtype, hardware, budget_bytes, **options) -> int:
    """Largest b with :func:`needed_bytes` ≤ ``budget_bytes`` (0 if none), exact, assuming
    the peak grows with b: a grid of up to 2048 batches per model call, narrowed until the
    fitting and the failing batch are neighbours."""
    hardware = backends.hardware_for(hardware)
    lo, hi = 0, LARGEST_BATCH + 1  # lo fits (0: trivially), hi does not
    while hi - lo > 1:
        grid = np.unique(np.geomspace(lo + 1, hi - 1, num=_GRID).astype(np.int64))
        grid = grid[(grid > lo) & (grid < hi)]
        if grid.size == 0:
            grid = np.arange(lo + 1, hi, dtype=np.int64)
        ok = needed_bytes(method, world, grid, dim, dtype, hardware, options) <= budget_bytes
        if ok.any():
            last = int(np.flatnonzero(ok)[-1])
            lo = int(grid[last])
            hi = int(grid[last + 1]) if last + 1 < grid.size else hi
        else:
            hi = int(grid[0])
    return lo


def loss_budget_bytes(hardware, world, memory_bytes: float, other_bytes: float = 0.0):
    """What one device leaves the loss: ``memory − reserve(W) − other``."""
    return memory_bytes - hardware.memory_reserve.reserve_bytes(world) - other_bytes


def predicted_max_batch(
    method: str,
    worlds: Sequence[int],
    dim: int,
    dtype: str,
    hardware,
    memory_bytes: float,
    other_bytes: float = 0.0,
    **options,
) -> list[MaxBatch]:
    """Largest b per W with ``peak·(1 + fragmentation) + reserve(W) + other_bytes`` at
    most ``memory_bytes`` (one device's memory)."""
    hardware = backends.hardware_for(hardware)
    out = []
    for world in worlds:
        budget = float(loss_budget_bytes(hardware, world, memory_bytes, other_bytes))
        b = max_local_batch(method, [world], dim, dtype, hardware, budget, **options)
        out.append(MaxBatch(method=method, world=int(world), batch=b, source="model"))
    return out


def measured_max_batch(table: Sequence[Row], memory_bytes: float) -> list[MaxBatch]:
    """Largest measured b per (method, W) whose measured peak is at most ``memory_bytes``."""
    best: dict[tuple[str, int], int] = {}
    live_only: set[tuple[str, int]] = set()
    for row in table:
        if row.overlap and not row.tile:
            key = (row.method, row.world)
            peak = row.peak_alloc_bytes
            if peak is None:
                peak = row.peak_live_bytes
                live_only.add(key)
            fitting = row.batch if peak <= memory_bytes else 0
            best[key] = max(best.get(key, 0), fitting)
    return [
        MaxBatch(
            method=method,
            world=world,
            batch=batch,
            source="measured, live tensors" if (method, world) in live_only else "measured",
        )
        for (method, world), batch in sorted(best.items())
    ]
