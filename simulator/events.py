"""The event engine: every rank's timeline of one step, as max-plus recursions over arrays.

State is one clock per rank and step, an array ``t`` of shape ``(S, W)`` (steps × ranks):
the time the rank is free to issue its next operation. Every operation of the step
program (``simulator.program``) updates all ranks and all steps at once, so the cost is one
handful of array operations per event of one rank's program, never a Python event per
rank. Step ``s`` starts with every clock at 0; its time is ``max_r t[s, r]`` at the end
(the profiler times each step as its slowest rank).

Operations (``d`` a duration already multiplied by jitter and slowdowns,
:mod:`simulator.variability`):

* compute:       ``t ← t + d``; where ranks outnumber a node's cores, ``d`` is stretched
  by processor sharing (below).
* collective:    ``t ← max_r(t) + d + sync``: everyone leaves when the last one arrived
  and the ring collective ran (all-gather and reduce-scatter semantics).
* p2p exchange (post at ``p``; send to ``r + a``, receive from ``r − a``): the bytes
  into ``r`` start when both ends have posted and the link is free, ``start = max(p[r−a],
  p[r], free[r])``, arrive ``done[r] = start + d[r]`` (``free[r] ← done[r]``: transfers
  of a chain share their link one after the other); the exchange completes for ``r``
  when its receive and its send have, ``e[r] = max(done[r], done[r+a])``.
* wait:          ``t ← max(t, e) + sync`` (sync paid on the first wait of an exchange).
* preemption (``Variability.preemption``, only where a node's ranks fill or outnumber
  its cores): each compute adds ``k·stall`` with ``k ~ Poisson(per_compute_s · d)``
  where the ranks fill the cores exactly (where they outnumber them, processor sharing
  already slices their time among them: these stalls would count it twice), and
  each wait a rank slept through (``e > t``; in a collective, every rank but the last
  to arrive) adds
  ``k·stall`` with ``k ~ Poisson(per_wake · n)`` (``n`` rounds merged, below).

Where moving bytes needs the cores and no core is free (``Machine.moves_on_cores``), the
rank moves an exchange's bytes itself when it posts it: ``t ← p + d/D`` (``D`` chains,
the directions of :mod:`simulator.model`, posting together share the cores, as the closed form's per-direction price assumes),
and ``done[r] = max(t[r−a], t[r])``: the transfers cannot hide behind compute, which is
the closed form's rule there.

The ring pass follows ``profiling.losses.ring.ring_pass`` line by line: post every
chain's payload, then per round wait for the payloads, post the next ones, and per chain
compute the block and post the accumulator on (the last one home), waiting for the
accumulator the previous rank sent (from the second round on) before the block where the
ring adds into it (``RingPass.hide_accumulator`` False: it is exposed, behind the blocks
of the chains computed before it in the round, if any), after the block where the ring
computes its contribution apart and merges it (True: it hides behind the block as the
payload does); finally compute the own (home) block and wait for the accumulators coming
home, which moved meanwhile. The first round's payload has nothing to hide behind.
Without overlap every exchange is waited for as soon as it is posted.

Jitter at scale. An event's multipliers are drawn fresh from the seeded generator while
the event spans fewer than :data:`POOLED` rank-steps; a larger one reads a window at a
random offset of a pool drawn once per kind (2n values, at least 2^20): each event's
multipliers have the stated distribution, two events share values only shifted across
ranks and steps. Engines that run a long simulation in chunks of steps share their pools
(at least :data:`SHARED_POOL` values per kind and round count) and draw every event of
:data:`FRESH` rank-steps or more from them.

Coarse rounds (``coarse = g > 1``, the fast path at scale). Exactly, a ring of ``W``
ranks costs ``W·(W−1)`` rank-rounds per step; 4,096 ranks × 1,000 steps is 1.7·10^10.
With ``g > 1`` the middle rounds of a ring pass run ``n ≤ g`` at a time: one engine round
with every duration (blocks, transfers, syncs) ``n`` times a round's, and each jitter
multiplier standing for the mean of ``n`` independent draws
(:meth:`~simulator.variability.Jitter.draw_mean`: exact for ``exponential``,
moment-matched for ``lognormal``). The first round and each chain's last (its accumulator
goes home) stay single, and ``n`` ramps up 1, 2, 4, … from the first and halves down
towards the last (``n ≤ left/2``), in powers of two below ``g``, so a pass's pipelined
fill and drain see round sizes change by at most 2× (and few sizes need jitter pools).
The round is max-plus homogeneous: scaling every duration by ``n`` scales its steady
state by ``n``, so the slope of every rank's clock is the exact one. What it
approximates: a neighbour's influence travels one hop per engine round (``n`` rounds),
and the offsets between ranks that node boundaries or stragglers set up scale with
``n``; both are transients, so the error grows with ``g/W``. Measured on h100-sxm
(docs/simulator.md "At scale"), quiet, W = 64, b = 1024, d = 768, with the accumulator
exposed (``hide_accumulator=False``): one-way rings (sigmoid and softmax) equal the
exact engine to 1e-12 (``g`` = 2 … 32, bf16: node boundaries and all); a bidirectional
ring, whose second chain's accumulator hides behind the first chain's block, is off by
up to 0.7% at ``g = W/32`` (the most :func:`simulator.simulate` picks by itself) and
more beyond it, where node boundaries set ranks apart. With the accumulator hidden (the
profile's CUDA default; measured 2026-11-29, ``tests/test_simulate_scale.py``) every
ring is off by at most 0.45% at ``g = 2 = W/32`` (sigmoid-ring fp32 +0.13%, softmax-ring
bf16 +0.09%, bidirectional fp32 +0.45%, the others 0) and by up to 3.1% at ``g`` = 8 and
32. With lognormal σ = 0.1 jitter (measured with the accumulator exposed), the median
and p90 at ``g = W/32`` come out up to 2.5% low without stragglers (a merged round's mean multiplier spreads
less than the draws it stands for) and within 0.41% with 2× stragglers, at W = 64, 256
and 1,024 (``python -m simulator.scale --errors``; W = 64 tested within 2%). What else was tried, and the
measurements: ``docs/simulator.md``, "At scale".

Processor sharing. Where ``q`` ranks share a node's ``C < q`` cores, the node's ranks run
each compute event as jobs released together (lock step) on ``C`` cores, each job
running at ``min(1, C/n)`` while ``n`` are unfinished: with the works sorted,
``w_(1) ≤ … ≤ w_(q)``, the j-th finishes at ``F_j = F_(j−1) + (w_(j) − w_(j−1))·max(1,
(q−j+1)/C)`` (one sort per event, ``O(q log q)``). Equal works give ``F = w·q/C``, the
closed form's core share; a rank left alone with a straggler's longer block gets a core
back. Release times are taken equal: where ranks drift apart (waits), the sharing is
counted as if they had not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulator.variability import Variability


@dataclass(frozen=True, kw_only=True, slots=True)
class Priced:
    """One transfer per repetition, priced by the closed form on each network level."""

    label: str
    """``op:label`` as ``profiling.comm`` keys it (e.g. ``p2p:sigmoid.payload``)."""
    intra_s: float
    """α-β time inside a node (with the closed form's core share on shared cores)."""
    inter_s: float
    """α-β time across nodes (= intra_s where the profile has one level)."""
    intra_sync_s: float = 0.0
    inter_sync_s: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Compute:
    """A stretch of work on the rank's own thread."""

    name: str
    seconds: float
    """On a core of its own (the engine applies sharing, jitter and slowdowns)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Collective:
    """An all-gather or reduce-scatter: every rank leaves together."""

    transfer: Priced


@dataclass(frozen=True, kw_only=True, slots=True)
class RingRounds:
    """``rounds`` consecutive ring rounds with ``chains`` chains active (1 or 2)."""

    name: str
    rounds: int
    chains: int
    block_s: float
    """One chain's block (the phase's compute split evenly over its chains)."""
    payload: Priced
    acc: Priced | None


@dataclass(frozen=True, kw_only=True, slots=True)
class RingPass:
    """One ``ring_pass``: its rounds (``parts`` in order), then the own (home) block."""

    home: Compute | None
    parts: tuple[RingRounds, ...]
    overlap: bool
    hide_accumulator: bool = False
    """The ring computes each block's contribution apart and waits for the previous
    rank's accumulator after the block (``profiling.losses.ring``); False: before it."""


Segment = Compute | Collective | RingPass


@dataclass(frozen=True, kw_only=True, slots=True)
class Machine:
    """Where the ranks run: how many, how they fill nodes, the cores they share."""

    world: int
    ranks_per_node: int | None
    """None: every rank on one node."""
    cores: int | None
    """Cores per node that ranks share; None: a compute unit per rank (no sharing)."""
    moves_on_cores: bool = False
    """Moving bytes needs the rank's cores and none is free (gloo, ranks ≥ cores): a rank
    moves an exchange's bytes itself, on its own clock, when it posts it."""


@dataclass(frozen=True, slots=True)
class Slice:
    """One event of step 0 on every rank (for traces)."""

    name: str
    cat: str
    """``compute``, ``wait``, ``p2p`` or ``collective``."""
    lane: int
    """0: the rank's own thread (compute, waits); 1, 2: bytes arriving on the ring's
    forward and backward links (collectives on 1)."""
    start_s: np.ndarray
    end_s: np.ndarray


POOLED = 2**16
"""Events spanning at least this many rank-steps draw jitter from a pool (``_jitter``)."""

SHARED_POOL = 2**20
"""Values in a pool that the engines of step chunks share (least size)."""

FRESH = 2**12
"""Engines sharing pools draw fresh multipliers for events under this many rank-steps."""


def _max_shifted(a: np.ndarray, shift: int) -> np.ndarray:
    """``out[:, r] = max(a[:, r], a[:, r − shift])`` (ranks around the ring, axis 1)."""
    k = shift % a.shape[1]
    if k == 0:
        return a.copy()
    out = np.empty_like(a)
    np.maximum(a[:, k:], a[:, :-k], out=out[:, k:])
    np.maximum(a[:, :k], a[:, -k:], out=out[:, :k])
    return out


class _Pending:
    __slots__ = ("complete", "label", "sync", "waited")

    def __init__(self, complete, sync, label):
        self.complete, self.sync, self.label, self.waited = complete, sync, label, False


class Engine:
    """Runs a program for ``steps`` steps at once (module docstring). ``coarse``: ring
    rounds per engine round at most ("Coarse rounds"); ``pools``: jitter pools shared with
    the engines of other step chunks (``seed`` then their common generator)."""

    def __init__(
        self,
        machine: Machine,
        variability: Variability,
        steps: int,
        seed,
        record,
        coarse: int = 1,
        pools: dict | None = None,
    ):
        w = machine.world
        self.machine, self.var = machine, variability
        self.rng = np.random.default_rng(seed)
        self.t = np.zeros((steps, w))
        per_node = machine.ranks_per_node or w
        self.node = np.arange(w) // per_node
        self.nodes = int(self.node[-1]) + 1
        variability.check(w, self.nodes)
        self.slow = variability.compute_slowdown(w, self.node)
        link = variability.link_slowdown(w)  # link r <-> r+1
        self.link_in = {+1: np.roll(link, 1), -1: link}  # into r from r-1 / from r+1
        self.worst_link = float(link.max()) if w > 1 else 1.0
        self.crosses_in = {
            +1: self.node != np.roll(self.node, 1),
            -1: self.node != np.roll(self.node, -1),
        }
        self.free = {+1: np.zeros_like(self.t), -1: np.zeros_like(self.t)}
        q = min(w, per_node)
        self.share = machine.cores is not None and q > machine.cores
        fills = machine.cores is not None and q >= machine.cores
        preemption = variability.preemption
        self.preempt = preemption if fills and preemption and preemption.active else None
        self.group = per_node
        self.slices: list[Slice] | None = [] if record else None
        self.shared_pools = pools is not None  # engines of step chunks share the pools
        self.pools: dict[tuple[str, int], np.ndarray] = {} if pools is None else pools
        self.prices: dict[tuple, tuple] = {}
        self.coarse = int(coarse)
        self.n = 1  # ring rounds the current engine round stands for (coarse rounds)

    # -- primitives ----------------------------------------------------------------------

    def _jitter(self, kind: str, shape):
        """Fresh multipliers (each the mean of ``self.n`` draws); an event of ≥ :data:`POOLED`
        rank-steps reads a window of a pool drawn once per kind and ``self.n`` (twice the
        event's size, at least 2^20 values) at a random offset."""
        jitter = self.var.jitter.get(kind)
        if jitter is None or jitter.constant:
            return 1.0 if jitter is None else jitter.median
        size = math.prod(shape)
        if size < (FRESH if self.shared_pools else POOLED):
            return jitter.draw_mean(self.rng, shape, self.n)
        pool = self.pools.get((kind, self.n))
        if pool is None or pool.size < 2 * size:
            least = SHARED_POOL if self.shared_pools else 2**20
            pool = jitter.draw_mean(self.rng, max(2 * size, least), self.n)
            self.pools[kind, self.n] = pool
        offset = int(self.rng.integers(0, pool.size - size + 1))
        return pool[offset : offset + size].reshape(shape)

    def _record(self, name, cat, start, end, lane=0) -> None:
        if self.slices is not None:
            self.slices.append(Slice(name, cat, lane, np.array(start[0]), np.array(end[0])))

    def compute(self, name: str, seconds: float) -> None:
        if seconds <= 0:
            return
        d = (seconds * self.n) * self.slow * self._jitter("compute", self.t.shape)
        if self.share:
            d = self._shared(np.broadcast_to(d, self.t.shape))
        if self.preempt is not None and self.preempt.per_compute_s > 0 and not self.share:
            mean = self.preempt.per_compute_s * np.broadcast_to(d, self.t.shape)
            d = d + self.preempt.stalls(self.rng, mean)
        start = self.t
        self.t = self.t + d
        self._record(name, "compute", start, self.t)

    def _shared(self, work: np.ndarray) -> np.ndarray:
        """Processor-sharing durations of one event's ``work`` on each node (docstring)."""
        steps, w = work.shape
        g = self.group
        pad = (-w) % g  # a partial last node: padded with jobs of no work
        rows = np.pad(work, ((0, 0), (0, pad))).reshape(-1, g)
        order = np.argsort(rows, axis=1)
        ordered = np.take_along_axis(rows, order, axis=1)
        active = g - np.arange(g)  # jobs still running while the k-th smallest finishes
        stretch = np.maximum(1.0, active / self.machine.cores)
        finish = np.cumsum(np.diff(ordered, axis=1, prepend=0.0) * stretch, axis=1)
        out = np.empty_like(rows)
        np.put_along_axis(out, order, finish, axis=1)
        return out.reshape(steps, w + pad)[:, :w]

    def collective(self, transfer: Priced) -> None:
        crosses = self.nodes > 1
        base = transfer.inter_s if crosses else transfer.intra_s
        sync = transfer.inter_sync_s if crosses else transfer.intra_sync_s
        arrive = self.t.max(axis=1, keepdims=True)
        d = base * self.worst_link * self._jitter("collective", (self.t.shape[0], 1))
        leave = arrive + d
        self._record(transfer.label, "collective", np.broadcast_to(arrive, self.t.shape),
                     np.broadcast_to(leave, self.t.shape), lane=1)  # fmt: skip
        if self.slices is not None and np.any(leave > self.t):
            self._record(f"wait {transfer.label}", "wait", self.t, np.maximum(self.t, leave))
        slept = self.t < arrive  # the ranks that waited for a later one
        self.t = np.maximum(self.t, leave) + sync
        if self.preempt is not None and self.preempt.per_wake > 0:
            self.t = self.t + self.preempt.stalls(self.rng, slept * self.preempt.per_wake)

    def post(self, transfer: Priced, shift: int, direction: int, chains: int = 1) -> _Pending:
        """Exchange: send to ``r + shift``, receive from ``r − shift`` on the chain's link
        (``chains``: how many chains post at once; they share the rank's cores)."""
        p = self.t
        price, sync = self._price(transfer, shift, direction)
        d = price * self._jitter("p2p", p.shape)
        lane = 1 if direction > 0 else 2
        if self.machine.moves_on_cores:  # the rank moves the bytes, then may go on
            self.t = p + d / chains
            self._record(transfer.label, "p2p", p, self.t, lane)
            done = _max_shifted(self.t, shift)
        else:  # the link moves them once both ends have posted and it is free
            start = _max_shifted(p, shift)
            np.maximum(start, self.free[direction], out=start)
            if self.slices is None:
                done = np.add(start, d, out=start)
            else:
                done = start + d
                self._record(transfer.label, "p2p", start, done, lane)
            self.free[direction] = done
        return _Pending(_max_shifted(done, -shift), sync, transfer.label)

    def _price(self, transfer: Priced, shift: int, direction: int):
        """Per-rank seconds of ``n`` such transfers into each rank (with its link's
        slowdown), and their sync (None when there is none)."""
        key = (transfer, shift, direction, self.n)
        cached = self.prices.get(key)
        if cached is None:
            if abs(shift) == 1:
                crosses = self.crosses_in[shift]
            else:
                crosses = self.node != np.roll(self.node, shift % self.machine.world)
            n = self.n
            price = np.where(crosses, n * transfer.inter_s, n * transfer.intra_s)
            sync = np.where(crosses, n * transfer.inter_sync_s, n * transfer.intra_sync_s)
            cached = price * self.link_in[direction], sync if sync.any() else None
            self.prices[key] = cached
        return cached

    def wait(self, pending: _Pending) -> None:
        if pending.waited:
            self.t = np.maximum(self.t, pending.complete)
            return
        pending.waited = True
        if self.slices is not None and np.any(pending.complete > self.t):
            self._record(
                f"wait {pending.label}", "wait", self.t, np.maximum(self.t, pending.complete)
            )
        t = np.maximum(self.t, pending.complete)
        if pending.sync is not None:
            t += pending.sync
        if self.preempt is not None and self.preempt.per_wake > 0:
            slept = pending.complete > self.t
            t += self.preempt.stalls(self.rng, slept * (self.preempt.per_wake * self.n))
        self.t = t

    # -- the ring ------------------------------------------------------------------------

    def ring(self, ring: RingPass) -> None:
        """``profiling.losses.ring.ring_pass``, every rank and step at once; with
        ``coarse = g > 1`` the middle rounds run ``g`` at a time (:meth:`_units`)."""
        chains = max((p.chains for p in ring.parts if p.rounds > 0), default=0)
        per_round = [p for p in ring.parts for _ in range(p.rounds)]
        rounds = [sum(p.rounds for p in ring.parts if p.chains > c) for c in range(chains)]
        direction = [+1, -1][:chains]
        incoming: dict[int, _Pending] = {}
        exchange: dict[int, _Pending] = {}
        for c in range(chains):
            incoming[c] = self.post(per_round[0].payload, direction[c], direction[c], chains)
            if not ring.overlap:
                self.wait(incoming[c])
        for i, n in self._units(per_round, rounds):
            self.n = n
            part = per_round[i - 1]
            active = [c for c in range(chains) if rounds[c] >= i]
            for c in active:
                self.wait(incoming[c])
            onward = [c for c in active if i < rounds[c]]
            for c in onward:
                incoming[c] = self.post(
                    per_round[i].payload, direction[c], direction[c], len(onward)
                )
                if not ring.overlap:
                    self.wait(incoming[c])
            for c in active:
                previous = part.acc is not None and i > 1
                if previous and not ring.hide_accumulator:  # the block adds into it
                    self.wait(exchange[c])
                self.compute(part.name, part.block_s)
                if part.acc is None:
                    continue
                if previous and ring.hide_accumulator:  # merged after the block
                    self.wait(exchange[c])
                home = i == rounds[c]
                shift = -direction[c] * rounds[c] if home else direction[c]
                exchange[c] = self.post(part.acc, shift, direction[c], len(active))
                if not ring.overlap:
                    self.wait(exchange[c])
            self.n = 1
        if ring.home is not None:  # the own block, while the accumulators come home
            self.compute(ring.home.name, ring.home.seconds)
        for c in sorted(exchange):
            self.wait(exchange[c])

    def _units(self, per_round: list[RingRounds], rounds: list[int]):
        """``(i, n)``: rounds ``i … i+n−1`` run as one engine round. ``n = 1`` for the first
        round, each chain's last (its accumulator goes home) and where the part changes;
        elsewhere up to ``coarse`` rounds of one part, with the same chains active and
        posting onward, merge (module docstring, "Coarse rounds")."""
        i, total, prev = 1, len(per_round), 1
        while i <= total:
            n = 1
            if self.coarse > 1 and i > 1:
                active = [r for r in rounds if r >= i]
                last = min(min(active) - 1, total)  # every active chain still posts onward
                left = last - i + 1
                n = max(1, min(self.coarse, left, 2 * prev, left // 2))
                if n < self.coarse:  # ramps in powers of two: few sizes, few jitter pools
                    n = 1 << (n.bit_length() - 1)
                while n > 1 and per_round[i + n - 1] is not per_round[i - 1]:
                    n -= 1
            yield i, n
            prev = n
            i += n

    def run(self, program: tuple[Segment, ...]) -> np.ndarray:
        for segment in program:
            if isinstance(segment, Compute):
                self.compute(segment.name, segment.seconds)
            elif isinstance(segment, Collective):
                self.collective(segment.transfer)
            else:
                self.ring(segment)
        return self.t.max(axis=1)
