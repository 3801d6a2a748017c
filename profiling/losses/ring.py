"""The ring engine shared by every ring method: payloads travel, accumulators follow.

Each rank owns a *payload* (its text embeddings, plus whatever per-text data the pass
needs). The payloads travel round the ring along one or more :class:`Chain` s; at every
stop the visiting rank computes one block against its own images (``visit``). A visit
may add a *contribution* to a per-payload accumulator (the text gradients, or the
running column log-sum-exp); the accumulator follows its payload one round behind and,
after the payload's last stop, is sent straight home. The owner's own block (the
positives) stays at home and is computed last, into a buffer of its own, while the
accumulators come home; they are merged into it as they arrive.

Why last: computed first, its contribution would be held through the whole pass (one
more accumulator-sized buffer at every block). Computed last, the accumulators' final
transfer hides behind it instead, and the first round's payload transfer, which the own
block used to hide, is exposed: one ``b·d·s`` transfer against one ``b·d·c`` (the same
in full precision, half of it for half features).

Where the payload is the pass's own copy (features rounded for the wire under autocast),
the caller passes ``home`` (what the own block reads instead: the caller's tensors) and
the copy's buffers receive the second round's payload, so the copy costs no buffer of
its own.

One pass over a chain of ``R`` rounds, per rank:

* payload: ``R`` sends of the payload, to the next rank in the chain's direction;
* accumulator: ``R`` sends (``R−1`` to the next rank, the last one home, ``R`` ranks
  back; on a one-way ring of ``W−1`` rounds that is the next rank too).

Overlap (``overlap=True``): round ``i+1``'s payload exchange is posted before round
``i``'s block is computed, so the payload traffic hides behind compute. What happens to
the accumulator depends on ``hide_accumulator`` (a per-device policy: the losses'
option of that name, None = ``registry.default_hide_accumulator``, True on CUDA, False on
CPU):

* exposed (``hide_accumulator=False``): the visiting rank adds its block straight into
  the accumulator it has just received (``visit(..., fresh=False)``; ``fresh=True`` on
  the payload's first stop). Round ``i``'s accumulator is waited for *before* round
  ``i``'s block: its transfer, posted by the previous rank after its block ``i−1``, is
  exposed, one ``b·d·c`` transfer per round. Two accumulator-sized buffers per chain:
  the one computed into and then sent, and the one the next accumulator arrives in.
* hidden (``hide_accumulator=True``): the visit computes its contribution into a
  separate buffer (always ``fresh=True``), and only then is the previous rank's
  accumulator waited for and merged, ``combine(received, contribution)`` (``add_`` for
  gradients, an in-place ``logaddexp`` for a column log-sum-exp), so the accumulator
  transfer runs while the block computes. Three accumulator-sized buffers per chain
  from the second round on: the contribution, the accumulator received (merged into
  and sent on) and the one the next accumulator arrives in.

With ``overlap=False`` every exchange is waited for as soon as it is posted, and either
mode holds two accumulator-sized buffers (a completed send frees its buffer at once).

Streams on NCCL: the exchanges are ``batch_isend_irecv`` operations, which NCCL runs on
its own stream; their ``wait()`` makes the compute stream wait for them (an event, not a
host wait: torch.distributed's asynchronous-work contract, unless
``TORCH_NCCL_BLOCKING_WAIT`` is set), so a block computes on the compute stream while
the next round's payload moves, and the host runs ahead. The profiler measures the
stalls from CUDA events around each wait (``profiling.comm.DeviceClock``).

Memory per chain, independent of W: two payloads (the one being computed and sent, the
one arriving) and two or three accumulator-sized buffers (above; fewer on rings of one
round), and at the own block, once the payloads are freed, one accumulator more where no
pooled one is free (``costs.pool_bytes``). Buffers are pooled per chain and never freed
mid-pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


Visit = Callable[[Sequence[torch.Tensor], int, torch.Tensor | None, bool], None]
Combine = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _ChainState:
    """One chain's buffers. Buffers are reused, never freed mid-pass, so the memory a
    pass holds does not depend on when the backend lets go of a finished send."""

    def __init__(self) -> None:
        self.held: list[torch.Tensor] | None = None  # payload computed on this round
        self.spare: list[torch.Tensor] | None = None  # payload buffers free to receive into
        self.incoming: PendingP2P | None = None  # the next payload
        self.free: list[torch.Tensor] = []  # accumulator buffers free for reuse
        self.exchange: PendingP2P | None = None  # the accumulator posted last round
        self.sent: torch.Tensor | None = None  # ...and the buffer it sends


def ring_pass(
    transport: Transport,
    payload: list[torch.Tensor],
    chains: Sequence[Chain],
    visit: Visit,
    *,
    new_accumulator: Callable[[], torch.Tensor] | None,
    overlap: bool,
    label: str,
    hide_accumulator: bool = False,
    combine: Combine | None = None,
    home: Callable[[], Sequence[torch.Tensor]] | None = None,
) -> torch.Tensor | None:
    """Run one pass; return this rank's accumulator, every block's contribution merged
    (None when the pass has none).

    ``visit(payload, owner_rank, out, fresh)`` is called once per round and chain for
    the payload held then, and last for this rank's own payload; it adds its
    contribution into ``out``, that payload's accumulator, which it first initialises
    when ``fresh`` (a buffer from ``new_accumulator()``, reused across rounds) and which
    otherwise holds what the payload's earlier stops accumulated; ``out`` is None when
    the pass has no accumulator (``new_accumulator=None``). ``combine(received,
    contribution)`` merges a contribution into an accumulator in place and returns it
    (required with an accumulator).

    ``hide_accumulator`` (module docstring): every visit gets a fresh buffer
    (``fresh=True``), merged into the accumulator received from the previous rank.

    ``home``: where the payload is the pass's own copy (features rounded for the wire),
    a function that returns what the own block is computed from instead (the caller's
    tensors; called after the rounds). ``ring_pass`` then takes the payload's buffers
    over: it empties the ``payload`` list and, once every chain has sent them, receives
    the next payload into them. None: the payload is visited at home, kept whole.
    """
    if new_accumulator is not None and combine is None:
        raise ValueError("ring_pass: a pass with an accumulator needs a combine function")
    rank, world = transport.rank, transport.world_size
    states = {c: _ChainState() for c in chains}
    own = payload
    reusable: list[torch.Tensor] | None = None
    if home is not None:  # the buffers are ours once sent: keep no other reference
        own, reusable = None, list(payload) if chains else None
        payload.clear()

    def post_payload(chain: Chain, state: _ChainState, tensors) -> None:
        dst, src = (rank + chain.direction) % world, (rank - chain.direction) % world
        buffers = state.spare or [torch.empty_like(t) for t in tensors]
        state.spare = None
        state.incoming = transport.start_p2p(
            [(t, dst) for t in tensors], [(b, src) for b in buffers], f"{label}.payload"
        )
        if not overlap:
            state.incoming.wait()

    def take(state: _ChainState) -> torch.Tensor:
        return state.free.pop() if state.free else new_accumulator()

    def post_accumulator(chain: Chain, state: _ChainState, i: int, acc: torch.Tensor) -> None:
        if i < chain.rounds:  # on to the payload's next stop; ours arrives from behind
            dst, src = (rank + chain.direction) % world, (rank - chain.direction) % world
        else:  # last stop: send it home; our own comes home from our payload's last stop
            dst = (rank - chain.direction * i) % world
            src = (rank + chain.direction * chain.rounds) % world
        state.exchange = transport.start_p2p([(acc, dst)], [(take(state), src)], f"{label}.acc")
        state.sent = acc
        if not overlap:
            state.exchange.wait()
            state.free.append(acc)
            state.sent = None

    def collect(state: _ChainState) -> torch.Tensor:
        received = state.exchange.wait()[0]
        if state.sent is not None:
            state.free.append(state.sent)
        state.exchange = state.sent = None
        return received

    for chain, state in states.items():
        post_payload(chain, state, own or reusable)
    for i in range(1, max((c.rounds for c in chains), default=0) + 1):
        active = [c for c in chains if c.rounds >= i]
        for c in active:
            state = states[c]
            previous, state.held = state.held, state.incoming.wait()
            state.spare = previous  # its send just completed (None: our own payload)
        if reusable is not None:  # every chain has sent our own payload: receive into it
            states[chains[0]].spare, reusable = reusable, None
        previous = None  # no local reference may outlive the buffers' use (memory model)
        for c in active:
            if i < c.rounds:
                post_payload(c, states[c], states[c].held)
        for c in active:
            state = states[c]
            owner = (rank - c.direction * i) % world
            if new_accumulator is None:
                visit(state.held, owner, None, True)
                continue
            if hide_accumulator:  # compute apart, then wait for the previous one
                contribution = take(state)
                visit(state.held, owner, contribution, True)
                if i > 1:
                    acc = combine(collect(state), contribution)
                    state.free.append(contribution)
                else:
                    acc = contribution
            else:  # wait for the previous one, then add the block into it
                fresh = i == 1
                acc = take(state) if fresh else collect(state)
                visit(state.held, owner, acc, fresh)
            post_accumulator(c, state, i, acc)
            acc = contribution = None  # likewise: the pool holds them, nothing else
    for state in states.values():  # the payload buffers are free
        state.held = state.spare = state.incoming = None
    own = own if home is None else home()
    # the own block last, while the accumulators come home
    if new_accumulator is None:
        visit(own, rank, None, True)
        return None
    pending = [s for s in states.values() if s.exchange is not None]
    acc = take(pending[0]) if pending else new_accumulator()
    visit(own, rank, acc, True)
    for state in pending:
        acc = combine(collect(state), acc)
    return acc
