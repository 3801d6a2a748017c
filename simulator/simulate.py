"""``simulator.simulate``: the step-time distribution of one point, from the event engine.

Where :func:`simulator.predict` gives the typical step in closed form, ``simulate`` runs
every rank's timeline (:mod:`simulator.events`) for ``steps`` steps with the given
variability (:mod:`simulator.variability`) and returns the per-step samples, their
median and p90, and, on request, step 0's timeline for a Chrome trace
(:mod:`simulator.trace`). Durations come from the closed form's pricing
(:mod:`simulator.program`), so with no jitter, no stragglers and ranks within the cores,
the simulated step is the closed form's on the GPU profiles: equal for the all-gathers
and for the one-way rings whose accumulator transfer is exposed (``hide_accumulator``
False), within one round per ring pass for the overlapped bidirectional ring (fill and
drain) and for a ring that hides its accumulator (the first and last transfers), and
without overlap larger for the bidirectional ring by one payload and one accumulator
exchange per two-way round (``tests/test_simulate.py`` pins each; docs/simulator.md,
"Agreement with the closed form", says where else they part). On shared-core profiles
the profile's preemption (``Hardware.preemption``) adds stalls where ranks fill the
cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from profiling.losses.registry import Method
from simulator import program as step_program
from simulator.events import Engine, RingPass, Slice
from simulator.hardware import Hardware, resolve_hardware
from simulator.model import OPTIONS, predict, resolve_method
from simulator.variability import Jitter, Preemption, Variability

EXACT_RANK_ROUNDS = 2 * 10**8
"""Up to this many rank-rounds (``W·rounds·steps``) :func:`simulate` runs every ring round
(its cost per rank-round on the development VM: ``docs/simulator.md``, "At scale")."""

COARSE_RANK_ROUNDS = 2 * 10**8
"""Beyond :data:`EXACT_RANK_ROUNDS`, ring rounds merge until ``W·(rounds/g)·steps`` engine
rank-rounds are at most this many (docs/simulator.md, "At scale")."""

CHUNK_RANK_STEPS = 2**16
"""Coarse runs simulate ``CHUNK_RANK_STEPS // W`` steps at a time (arrays of 512 KiB)."""

MAX_COARSE_FRACTION = 32
"""The automatic ``coarse`` stays at most ``W/32``: the largest ratio whose error
docs/simulator.md ("At scale") measures."""

MAX_TRACE_SLICES = 2_000_000
"""Refuse a timeline with more rank-events than this (a trace nobody could open)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Simulation:
    """What :func:`simulate` returns."""

    method: str
    hardware: str
    world: int
    batch: int
    dim: int
    dtype: str
    options: dict[str, Any]
    variability: Variability
    seed: int | None
    step_time_s: np.ndarray
    """One sample per simulated step, shape ``(steps,)``: the slowest rank's step."""
    predicted_s: float
    """The closed form's step time at the same point (:func:`simulator.predict`)."""
    timeline: tuple[Slice, ...] | None
    """Step 0, every rank, when asked for (``trace=True``)."""
    coarse: int = 1
    """Ring rounds per engine round: 1 exact, ``g > 1`` the coarse rounds of
    :mod:`simulator.events` (an approximation, docs/simulator.md "At scale")."""

    @property
    def median_s(self) -> float:
        return float(np.median(self.step_time_s))

    @property
    def p90_s(self) -> float:
        return float(np.percentile(self.step_time_s, 90))

    def summary(self) -> dict[str, Any]:
        """Plain numbers, seconds (the CLI's ``--json``)."""
        s = self.step_time_s
        return {
            "method": self.method,
            "hardware": self.hardware,
            "world": self.world,
            "batch": self.batch,
            "dim": self.dim,
            "dtype": self.dtype,
            "options": self.options,
            "steps": int(s.size),
            "seed": self.seed,
            "min_s": float(s.min()),
            "p10_s": float(np.percentile(s, 10)),
            "median_s": self.median_s,
            "mean_s": float(s.mean()),
            "p90_s": self.p90_s,
            "max_s": float(s.max()),
            "predicted_s": self.predicted_s,
            "coarse": self.coarse,
        }


def simulate(
    method: Method | str,
    world: int,
    batch: int,
    dim: int,
    dtype: str = "fp32",
    hardware: Hardware | str | None = None,
    *,
    steps: int = 100,
    seed: int | None = 0,
    jitter: dict[str, Jitter] | Jitter | None = None,
    stragglers: dict[int, float] | None = None,
    slow_node: tuple[int, float] | None = None,
    slow_link: tuple[int, float] | None = None,
    preemption: Preemption | None = None,
    trace: bool = False,
    coarse: int | None = None,
    **options,
) -> Simulation:
    """Simulate ``steps`` steps of ``method`` at one point ``(world, batch, dim)``.

    ``jitter``: a :class:`Jitter` for every event kind, or kind → Jitter (kinds:
    compute, p2p, collective), None the profile's fitted one (``Hardware.jitter``,
    calibration; none on datasheet profiles), ``{}`` none; ``stragglers``: rank →
    compute slowdown; ``slow_node``:
    (node, slowdown); ``slow_link``: (rank, slowdown of its link to rank + 1);
    ``preemption``: stalls where ranks fill a node's cores, None the profile's fitted
    one (``Hardware.preemption``; ``Preemption()`` for none);
    ``coarse``: ring rounds merged into one engine round (1: exact; None: 1 while the
    rings' rank-rounds ``W·rounds·steps`` stay within :data:`EXACT_RANK_ROUNDS`, else
    the smallest ``g`` that brings ``W·(rounds/g)·steps`` within
    :data:`COARSE_RANK_ROUNDS`, at most ``W /`` :data:`MAX_COARSE_FRACTION`,
    :func:`coarse_for`); ``options``: those of
    :func:`simulator.predict` (``overlap``, ``tile``, ...).
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}; known options: {', '.join(OPTIONS)}")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"steps must be a whole number ≥ 1, got {steps!r}")
    if coarse is not None and (
        isinstance(coarse, bool) or not isinstance(coarse, int | np.integer) or coarse < 1
    ):
        raise ValueError(f"coarse must be a whole number ≥ 1 or None, got {coarse!r}")
    spec = resolve_method(method)
    hw = resolve_hardware(hardware)
    if jitter is None:  # the profile's fitted jitter (none on datasheet profiles)
        jitter = hw.jitter
    if isinstance(jitter, Jitter):
        jitter = dict.fromkeys(("compute", "p2p", "collective"), jitter)
    variability = Variability(
        jitter=dict(jitter or {}),
        stragglers=dict(stragglers or {}),
        slow_node=slow_node,
        slow_link=slow_link,
        preemption=hw.preemption if preemption is None else preemption,
    )
    prog = step_program.build(spec, world, batch, dim, dtype, hw, **options)
    if trace:
        _check_trace_size(prog)
        if coarse not in (None, 1):
            raise ValueError("a trace needs the exact engine: coarse must be 1 or None")
        coarse = 1
    if coarse is None:
        coarse = coarse_for(prog, int(steps))
    if coarse == 1:
        engine = Engine(prog.machine, variability, int(steps), seed, record=trace)
        samples = engine.run(prog.segments)
    else:  # steps in chunks that stay in cache, drawing jitter from pools they share
        rng, pools = np.random.default_rng(seed), {}
        chunk = max(1, CHUNK_RANK_STEPS // prog.machine.world)
        samples = np.concatenate([
            Engine(prog.machine, variability, min(chunk, steps - first), rng, record=False,
                   coarse=coarse, pools=pools).run(prog.segments)
            for first in range(0, int(steps), chunk)
        ])  # fmt: skip
    closed = predict(spec, world, batch, dim, dtype, hw, **options)
    return Simulation(
        method=spec.name,
        hardware=hw.name,
        world=int(world),
        batch=int(batch),
        dim=int(dim),
        dtype=dtype,
        options=dict(options),
        variability=variability,
        seed=seed,
        step_time_s=samples,
        predicted_s=float(closed.step_time_s),
        timeline=tuple(engine.slices) if trace else None,
        coarse=int(coarse),
    )


def ring_rounds(prog: step_program.Program) -> int:
    """Engine rounds of one rank's step at ``coarse = 1``: every ring pass's rounds."""
    return sum(sum(p.rounds for p in s.parts) for s in prog.segments if isinstance(s, RingPass))


def coarse_for(prog: step_program.Program, steps: int) -> int:
    """The ``coarse`` that :func:`simulate` picks (its docstring)."""
    rounds, world = ring_rounds(prog), prog.machine.world
    if world * rounds * steps <= EXACT_RANK_ROUNDS:
        return 1
    units = max(1, COARSE_RANK_ROUNDS // (world * steps))
    return max(1, min(math.ceil(rounds / units), world // MAX_COARSE_FRACTION))


def _check_trace_size(prog: step_program.Program) -> None:
    events = 0
    for segment in prog.segments:
        parts = getattr(segment, "parts", ())
        events += 1 + sum(4 * p.rounds * p.chains for p in parts)
    slices = events * prog.machine.world
    if slices > MAX_TRACE_SLICES:
        raise ValueError(
            f"a trace of W = {prog.machine.world} would hold ~{slices:.3g} slices "
            f"(limit {MAX_TRACE_SLICES:.3g}); trace a smaller world"
        )
