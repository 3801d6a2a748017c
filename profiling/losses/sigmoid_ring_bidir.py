"""``sigmoid-ring-bidir``: the sigmoid ring with rounds split between both directions.

Same math, same one-trip backward and the same per-block work as ``sigmoid-ring``
(read its docstring first). Texts travel both ways at once: ``R = ⌈(W−1)/2⌉`` rounds to
``r+1`` and ``L = ⌊(W−1)/2⌋`` rounds to ``r−1``, ``R + L = W−1`` blocks in all, correct for
odd and even W. Each round moves two payloads over the two directions of each link,
so about half as many sequential rounds as the one-way ring. Each chain's accumulator
follows its texts and, after their last stop, goes straight home (``R`` or ``L`` ranks
away; on a switch such as NVSwitch that is one hop like any other).

Traffic per rank per step is the one-way ring's: ``(W−1)·b·d·(s + c)`` sent and received,
``2(W−1)`` messages, plus the backward's all-gather of upstream scalars and the
cross-rank check; its backward (fast path and exact second trip, on both chains) is the
one-way ring's too.

Peak memory per rank: the one-way ring's terms with two chains in flight (four payload
buffers, five accumulator-sized buffers), still independent of W.
"""

from __future__ import annotations

from profiling.losses import ring, sigmoid_ring
from profiling.losses.costs import block_flops, rank_check_phase
from profiling.losses.registry import Method, Schedule, Shape, register
from profiling.losses.sigmoid_ring import (
    SigmoidRingLoss,
    home_block_phase,
    ring_round_phase,
    upstream_phase,
)


class SigmoidRingBidirLoss(SigmoidRingLoss):
    """SigLIP loss by a ring of texts moving both ways (``chains=ring.both_ways``)."""

    chains = staticmethod(ring.both_ways)


def schedule(shape: Shape) -> Schedule:
    b, d, w = shape.batch, shape.dim, shape.world
    two_way_rounds = (w - 1) // 2
    one_way_rounds = w // 2 - two_way_rounds  # 1 when W is even: the last round
    return Schedule(
        (
            rank_check_phase(shape),
            home_block_phase(shape, block_flops(b, b, d)),
            ring_round_phase(
                shape, name="two-way round", repeat=two_way_rounds, chains=2, label="sigmoid"
            ),
            ring_round_phase(
                shape, name="one-way round", repeat=one_way_rounds, chains=1, label="sigmoid"
            ),
            upstream_phase(shape),
        )
    )


def memory_terms(shape: Shape):
    return sigmoid_ring.memory_terms(shape, rounds=[shape.world // 2, (shape.world - 1) // 2])


register(
    Method(
        name="sigmoid-ring-bidir",
        kind="sigmoid",
        summary="SigLIP ring with half the rounds each way; same bytes, half the round trips",
        module=SigmoidRingBidirLoss,
        options={"overlap": True, "tile": None, "check_ranks": True},
        schedule=schedule,
        memory_terms=memory_terms,
        ring=True,
    )
)
