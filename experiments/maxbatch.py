"""The largest batch each method fits in a given memory, by the model and by measurement.

Memory here is the cost model's and the profiler's definition: the allocator's peak
during one forward and backward of the loss, above its level at the step's start (the
inputs held before, their gradients and every operator's scratch counted). What the rest
of a training step holds (weights, activations) comes on top.

* :func:`predicted_max_batch` bisects the model's ``peak_memory_bytes`` over the local
  batch b, vectorised over W: exact to one example, 31 model calls for any number of W.
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


def predicted_max_batch(
    method: str,
    worlds: Sequence[int],
    dim: int,
    dtype: str,
    hardware,
    memory_bytes: float,
    **options,
) -> list[MaxBatch]:
    """Largest b per W whose predicted peak loss memory is at most ``memory_bytes``."""
    world = np.asarray(worlds, dtype=np.int64)
    fits = np.zeros_like(world)  # largest b known to fit (0: none yet)
    fails = np.full_like(world, LARGEST_BATCH + 1)  # smallest b known not to fit
    while np.any(fails - fits > 1):
        middle = (fits + fails) // 2
        model = backends.predict(method, world, middle, dim, dtype, hardware, **options)
        peak = np.broadcast_to(np.asarray(model.peak_memory_bytes, dtype=float), world.shape)
        ok = peak <= memory_bytes
        fits = np.where(ok, middle, fits)
        fails = np.where(ok, fails, middle)
    return [
        MaxBatch(method=method, world=int(w), batch=int(b), source="model")
        for w, b in zip(world, fits, strict=True)
    ]


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
