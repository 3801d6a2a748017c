"""``sigsim recommend``: which loss to run, from the model alone.

For every method of ours (ring methods at each tile of :data:`TILES`) and every
incumbent (``simulator.incumbents``) of the chosen kinds, on one hardware profile at one
world size ``W`` and width ``d``:

* the largest global batch ``N = b·W`` whose predicted peak loss memory per rank (times
  ``1 +`` the profile's fragmentation) fits in ``memory − reserve − other`` (``memory``:
  the profile's device memory unless given; ``reserve``: the profile's per-device reserve,
  where it has one; ``other``: what the rest of the training step holds), found exactly
  by ``maxbatch.max_local_batch`` (the search ``sigsim maxbatch`` uses);
* at one global batch (``batch``; default: the largest that the baseline fits, the batch
  the user can run today) the bytes each rank sends, the peak memory and the step time.

The baseline, per kind, is open_clip's best: the open_clip incumbent with the largest
batch that fits (ties: the faster). The recommendation, per kind, is ours: the (method,
tile) with the shortest step at that batch among those that fit there (ties: the larger
largest batch), and the trade-off against the baseline is stated as ratios.

Entries the model cannot price (a cost description that refuses the configuration with a
``ValueError``; since every incumbent describes autocast, none does today) are listed with
the reason instead of numbers. Nothing is measured: each (method, tile)
costs three vectorised model calls.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from experiments import backends
from experiments.maxbatch import loss_budget_bytes, max_local_batch, needed_bytes

TILES: tuple[int | None, ...] = (None, 512, 1024, 2048, 4096, 8192)
"""Tiles tried for ring methods of ours (None: the method's default tile)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Entry:
    """One (method, tile) of the table."""

    method: str
    kind: str
    side: str
    """"ours" or the incumbent's package ("open_clip", "inf-cl")."""
    tile: int | None
    max_global_batch: int | None
    """Largest N = b·W that fits (0: not even b = 1; None: not priced, see ``note``)."""
    global_batch: int | None
    """N at which the columns below are priced."""
    bytes_sent_per_rank: float | None
    peak_memory_bytes: float | None
    step_time_s: float | None
    fits: bool | None
    note: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Choice:
    """Per kind: the baseline, the recommendation and the trade-off."""

    kind: str
    baseline: str | None
    recommended: str | None
    tile: int | None
    max_batch_ratio: float | None
    """Recommended's largest global batch / the baseline's."""
    step_time_ratio: float | None
    """Recommended's step time / the baseline's, at the chosen batch."""
    bytes_ratio: float | None


def reserve_bytes(hardware, world: int) -> float:
    """Per-device memory outside the loss (CUDA context, NCCL buffers)."""
    return float(np.asarray(hardware.memory_reserve.reserve_bytes(np.asarray([world])))[0])


def _step_s(name, world, priced, dim, dtype, hardware) -> float:
    """Step time at the largest batch that fits (the baselines' tie-break)."""
    b = max(priced["max_local"], 1)
    p = backends.predict(name, world, b, dim, dtype, hardware, **priced["options"])
    return float(p.step_time_s)


def _side(name: str) -> str:
    spec = backends._method(name)
    if spec.runnable:
        return "ours"
    return spec.describes.split(" ")[0]


def candidates(kinds) -> list[tuple[str, int | None]]:
    """(method, tile) pairs of the chosen kinds: ours (ring methods at every tile), then
    the incumbents."""
    from simulator.incumbents import INCUMBENTS

    out = []
    for name in (*backends.method_names(), *INCUMBENTS):
        spec = backends._method(name)
        if spec.kind not in kinds:
            continue
        ours_ring = spec.ring and spec.runnable
        out += [(name, tile) for tile in (TILES if ours_ring else (None,))]
    return out


def _price(name, tile, *, world, dim, dtype, hardware, budget, autocast) -> dict:
    options = {"autocast": autocast} if autocast else {}
    if tile is not None:
        options["tile"] = tile
    b = max_local_batch(name, [world], dim, dtype, hardware, budget, **options)
    return {"max_local": b, "options": options}


def recommend(
    *,
    hardware,
    world: int,
    dim: int,
    dtype: str,
    autocast: str | None = None,
    memory_bytes: float | None = None,
    other_bytes: float = 0.0,
    global_batch: int | None = None,
    kinds=("softmax", "sigmoid"),
) -> tuple[list[Entry], list[Choice], dict]:
    """The table, the per-kind choices, and the settings used (module docstring)."""
    if world < 1 or dim < 1:
        raise ValueError("world and dim must be at least 1")
    hardware = backends.hardware_for(hardware)
    memory = backends.device_memory_bytes(hardware) if memory_bytes is None else memory_bytes
    reserve = reserve_bytes(hardware, world)
    budget = float(loss_budget_bytes(hardware, world, memory, other_bytes))
    if budget <= 0:
        raise ValueError(
            f"--other-GiB and the profile's reserve leave no memory for the loss "
            f"({budget / 2**30:.3g} GiB)"
        )
    priced, notes = {}, {}
    for name, tile in candidates(kinds):
        try:
            priced[(name, tile)] = _price(
                name,
                tile,
                world=world,
                dim=dim,
                dtype=dtype,
                hardware=hardware,
                budget=budget,
                autocast=autocast,
            )
        except ValueError as exc:
            notes[(name, tile)] = str(exc)
    baselines = {}
    for kind in kinds:
        theirs = [
            (v["max_local"], -_step_s(k[0], world, v, dim, dtype, hardware), k[0])
            for k, v in priced.items()
            if backends._method(k[0]).kind == kind and _side(k[0]) == "open_clip"
        ]
        baselines[kind] = max(theirs)[2] if theirs else None
    if global_batch is None:
        fitted = [priced[(b, None)]["max_local"] for b in baselines.values() if b]
        global_batch = max(1, min(fitted, default=1)) * world
    if global_batch % world:
        raise ValueError(f"--batch {global_batch} is not a multiple of --world {world}")
    local = global_batch // world
    entries = []
    for name, tile in candidates(kinds):
        spec = backends._method(name)
        if (name, tile) in notes:
            entries.append(
                Entry(
                    method=name,
                    kind=spec.kind,
                    side=_side(name),
                    tile=tile,
                    max_global_batch=None,
                    global_batch=None,
                    bytes_sent_per_rank=None,
                    peak_memory_bytes=None,
                    step_time_s=None,
                    fits=None,
                    note=notes[(name, tile)],
                )
            )
            continue
        v = priced[(name, tile)]
        p = backends.predict(name, world, local, dim, dtype, hardware, **v["options"])
        entries.append(
            Entry(
                method=name,
                kind=spec.kind,
                side=_side(name),
                tile=tile,
                max_global_batch=v["max_local"] * world,
                global_batch=global_batch,
                bytes_sent_per_rank=float(p.bytes_sent),
                peak_memory_bytes=float(p.peak_memory_bytes),
                step_time_s=float(p.step_time_s),
                fits=bool(
                    needed_bytes(name, world, local, dim, dtype, hardware, v["options"]) <= budget
                ),
            )
        )
    choices = [_choose(kind, baselines[kind], entries) for kind in kinds]
    settings = {
        "hardware": backends.hardware_label(hardware),
        "world": world,
        "dim": dim,
        "dtype": dtype,
        "autocast": autocast,
        "memory_bytes": memory,
        "reserve_bytes": reserve,
        "other_bytes": other_bytes,
        "global_batch": global_batch,
    }
    return entries, choices, settings


def _choose(kind: str, baseline: str | None, entries: list[Entry]) -> Choice:
    ours = [e for e in entries if e.kind == kind and e.side == "ours" and e.fits]
    base = next((e for e in entries if e.method == baseline and e.tile is None), None)
    if not ours:
        return Choice(
            kind=kind,
            baseline=baseline,
            recommended=None,
            tile=None,
            max_batch_ratio=None,
            step_time_ratio=None,
            bytes_ratio=None,
        )
    best = min(ours, key=lambda e: (e.step_time_s, -e.max_global_batch))

    def ratio(a, b):
        return None if base is None or not b else a / b

    return Choice(
        kind=kind,
        baseline=baseline,
        recommended=best.method,
        tile=best.tile,
        max_batch_ratio=ratio(best.max_global_batch, base and base.max_global_batch),
        step_time_ratio=ratio(best.step_time_s, base and base.step_time_s)
        if base and base.fits
        else None,
        bytes_ratio=ratio(best.bytes_sent_per_rank, base and base.bytes_sent_per_rank),
    )


def as_json(entries, choices, settings) -> dict:
    return {
        "settings": settings,
        "entries": [asdict(e) for e in entries],
        "recommendations": [asdict(c) for c in choices],
    }
