"""The ring engine shared by every ring method: payloads travel, accumulators follow.

Each rank owns a *payload* (its text embeddings, plus whatever per-text data the pass
needs). The payloads travel round the ring along one or more :class:`Chain` s; at every
stop the visiting rank computes one block against its own images (``visit``). A visit
may return a *contribution* to a per-payload accumulator (the text gradients, or the
running column log-sum-exp); the accumulator follows its payload one round behind, each
rank merging its own contribution into it (``combine``), and after the payload's last
stop it is sent straight home. The owner's own block (the positives) stays at home.

One pass over a chain of ``R`` rounds, per rank:

* payload: ``R`` sends of the payload, to the next rank in the chain's direction;
* accumulator: ``R`` sends (``R−1`` to the next rank, the last one home, ``R`` ranks
  back; on a one-way ring of ``W−1`` rounds that is the next rank too).

Overlap (``overlap=True``): round ``i+1``'s payload exchange is posted before round
``i``'s block is computed, and round ``i``'s accumulator is only waited for after round
``i+1``'s block, so both kinds of traffic hide behind compute. With ``overlap=False``
every exchange is waited for as soon as it is posted.

Memory per chain, independent of W: two payloads (the one being computed and sent, the
one arriving) and up to three accumulator-sized buffers (one in flight out, one in
flight in, the fresh contribution).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from profiling.comm import PendingP2P, Transport


@dataclass(frozen=True, slots=True)
class Chain:
    direction: int
    """+1: payloads move to rank+1 (received from rank−1); −1: the other way."""
    rounds: int
    """Blocks each payload visits away from home."""


def one_way(world: int) -> tuple[Chain, ...]:
    """The paper's ring: ``W−1`` rounds, all in one direction."""
    return (Chain(+1, world - 1),) if world > 1 else ()


def both_ways(world: int) -> tuple[Chain, ...]:
    """``ceil((W−1)/2)`` rounds one way and ``floor((W−1)/2)`` the other: W−1 in all."""
    chains = (Chain(+1, world // 2), Chain(-1, (world - 1) // 2))
    return tuple(c for c in chains if c.rounds > 0)


Visit = Callable[[Sequence[torch.Tensor], int], torch.Tensor | None]
Combine = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ring_pass(
    transport: Transport,
    payload: Sequence[torch.Tensor],
    chains: Sequence[Chain],
    visit: Visit,
    combine: Combine,
    *,
    overlap: bool,
    label: str,
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """Run one pass; return the home contribution and each chain's returned accumulator.

    ``visit(payload, owner_rank)`` is called once for this rank's own payload (first) and
    once per round and chain for the payload held then. It returns a contribution to that
    payload's accumulator, or None when the pass has no accumulator.
    """
    rank, world = transport.rank, transport.world_size

    def post_payload(index: int, chain: Chain, tensors) -> PendingP2P:
        dst, src = (rank + chain.direction) % world, (rank - chain.direction) % world
        buffers = [torch.empty_like(t) for t in tensors]
        pending = transport.start_p2p(
            [(t, dst) for t in tensors], [(b, src) for b in buffers], f"{label}.payload"
        )
        if not overlap:
            pending.wait()
        return pending

    def post_accumulator(chain: Chain, i: int, acc: torch.Tensor) -> PendingP2P:
        if i < chain.rounds:  # on to the payload's next stop; ours arrives from behind
            dst, src = (rank + chain.direction) % world, (rank - chain.direction) % world
        else:  # last stop: send it home; our own comes home from our payload's last stop
            dst = (rank - chain.direction * i) % world
            src = (rank + chain.direction * chain.rounds) % world
        pending = transport.start_p2p([(acc, dst)], [(torch.empty_like(acc), src)], f"{label}.acc")
        if not overlap:
            pending.wait()
        return pending

    incoming = {c: post_payload(n, c, payload) for n, c in enumerate(chains)}
    home = visit(payload, rank)
    accumulators: dict[Chain, PendingP2P] = {}
    for i in range(1, max((c.rounds for c in chains), default=0) + 1):
        active = [c for c in chains if c.rounds >= i]
        held = {c: incoming.pop(c).wait() for c in active}
        for n, c in enumerate(active):
            if i < c.rounds:
                incoming[c] = post_payload(n, c, held[c])
        for c in active:
            contribution = visit(held[c], (rank - c.direction * i) % world)
            if contribution is None:
                continue
            if i > 1:
                contribution = combine(accumulators.pop(c).wait()[0], contribution)
            accumulators[c] = post_accumulator(c, i, contribution)
            del contribution  # in flight now: the pending exchange holds it until sent
        del held
    returned = [accumulators.pop(c).wait()[0] for c in chains if c in accumulators]
    return home, returned


def buffer_peaks(rounds, payload_bytes, acc_bytes, overlap=True):
    """Peak bytes of the payload and accumulator buffers :func:`ring_pass` holds.

    Returns two arrays: the peak while a block is computed (add the visit's own scratch
    to it) and the peak while an accumulator is posted (no scratch then). ``rounds``:
    each chain's round count (arrays broadcast). At the moment chain ``k`` works in round
    ``i``, per chain: the payload held (and the next one arriving, unless it is the last
    round); chain ``k``'s accumulators: while computing, the fresh contribution plus the
    exchange posted the round before (out and in); while posting, the outgoing
    accumulator and the new receive buffer; a chain that already worked this round holds
    its posted exchange, a chain still to work its previous one, a finished chain its
    last one (out and in with ``overlap``; without it the exchange completed when posted,
    so only the received buffer). The owner's own block and the caller's buffers are not
    included.
    Candidates ``i`` ∈ {1, 2, 3, last round of each chain} cover every case: the state
    is the same for all middle rounds.
    """
    rounds = [np.asarray(r) for r in rounds]
    p, a = np.asarray(payload_bytes), np.asarray(acc_bytes)
    shape = np.broadcast(*rounds, p, a).shape
    computing, posting = np.zeros(shape), np.zeros(shape)
    exchanged = (2 if overlap else 1) * a  # an accumulator exchange still held
    for k, r_k in enumerate(rounds):
        for i in [1, 2, 3, *rounds]:
            i = np.asarray(i)
            valid = (i >= 1) & (i <= r_k)
            others = 0
            for c, r_c in enumerate(rounds):
                if c == k:
                    continue
                active = i <= r_c
                posted = exchanged if c < k else exchanged * (i >= 2)
                others = others + np.where(
                    active, p * (1 + (i < r_c)) + posted, exchanged * (r_c >= 1)
                )
            held = p * (1 + (i < r_k)) + others
            computing = np.maximum(computing, np.where(valid, held + a + exchanged * (i >= 2), 0))
            posting = np.maximum(posting, np.where(valid, held + 2 * a, 0))
    return computing, posting
