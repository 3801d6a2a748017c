"""``sigmoid-ring-bidir``'s cost description: its :class:`Schedule` and memory terms.

numpy only, so the simulator prices it without importing torch; the math and the code
it describes are in ``profiling.losses.sigmoid_ring_bidir`` (read that docstring first), whose loss
class the registration names by import path.
"""

from __future__ import annotations

from profiling.losses import sigmoid_ring_cost
from profiling.losses.costs import (
    block_flops,
    rank_check_phase,
)
from profiling.losses.registry import Method, Schedule, Shape, register
from profiling.losses.sigmoid_ring_cost import home_block_phase, ring_round_phase, upstream_phase


def schedule(shape: Shape) -> Schedule:
    b, d, w = shape.batch, shape.dim, shape.world
    two_way_rounds = (w - 1) // 2
    one_way_rounds = w // 2 - two_way_rounds  # 1 when W is even: the last round
    return Schedule(
        (
            rank_check_phase(shape),
            ring_round_phase(
                shape, name="two-way round", repeat=two_way_rounds, chains=2, label="sigmoid"
            ),
            ring_round_phase(
                shape, name="one-way round", repeat=one_way_rounds, chains=1, label="sigmoid"
            ),
            home_block_phase(shape, block_flops(b, b, d)),
            upstream_phase(shape),
        )
    )


def memory_terms(shape: Shape):
    return sigmoid_ring_cost.memory_terms(shape, rounds=[shape.world // 2, (shape.world - 1) // 2])


register(
    Method(
        name="sigmoid-ring-bidir",
        kind="sigmoid",
        summary="SigLIP ring with half the rounds each way; same bytes, half the round trips",
        loss="profiling.losses.sigmoid_ring_bidir:SigmoidRingBidirLoss",
        options={"overlap": True, "tile": None, "hide_accumulator": None, "check_ranks": True},
        schedule=schedule,
        memory_terms=memory_terms,
        ring=True,
    )
)
