"""``softmax-ring``'s cost description: its :class:`Schedule` and memory terms.

numpy only, so the simulator prices it without importing torch; the math and the code
it describes are in ``profiling.losses.softmax_ring`` (read that docstring first), whose loss
class the registration names by import path.
"""

from __future__ import annotations

from profiling.losses.costs import (
    accumulator_buffers,
    pool_bytes,
    rank_check_phase,
    ring_operands,
    ring_pass_moments,
    symmetric,
    tile_scratch,
)
from profiling.losses.registry import Method, Phase, Schedule, Shape, peak_of, register


def schedule(shape: Shape) -> Schedule:
    b, d, w = shape.batch, shape.dim, shape.world
    s, c = shape.elem_bytes, shape.compute_bytes
    texts = b * d * s

    def p2p(label, nbytes, messages=1):
        return symmetric("p2p", label, nbytes, messages, peer="neighbor")

    def block(name, pass_, flops, transfers=(), repeat=1):
        return Phase(
            name=name,
            pass_=pass_,
            repeat=repeat,
            matmul_flops=flops,
            pointwise_elems=b * b,
            transfers=transfers,
            overlapped=shape.overlap,
        )

    logits = 2 * b * b * d
    return Schedule(
        (
            rank_check_phase(shape),
            block(
                "ring round (statistics)",
                "forward",
                logits,
                repeat=w - 1,
                transfers=(p2p("softmax.fwd.payload", texts), p2p("softmax.fwd.acc", b * c)),
            ),
            block("home block (statistics)", "forward", logits),
            block(
                "ring round (gradients)",
                "backward",
                3 * logits,
                repeat=w - 1,
                transfers=(
                    p2p("softmax.bwd.payload", texts + (b + 1) * c, messages=2),
                    p2p("softmax.bwd.acc", b * d * c),
                ),
            ),
            block("home block (gradients)", "backward", 3 * logits),
        )
    )


def memory_terms(shape: Shape):
    b, d, s, c, m = (
        shape.batch,
        shape.dim,
        shape.elem_bytes,
        shape.compute_bytes,
        shape.operand_bytes,
    )
    rounds = [shape.world - 1]
    grads, payload, lse = b * d * c, b * d * s, b * c
    operands = ring_operands(shape)
    reuse = shape.input_bytes is not None  # a rounded copy travels: the ring reuses it
    buffers = accumulator_buffers(shape)

    stats_tile = 2 * shape.tile_side**2 * c
    stats_pools = pool_bytes(rounds, payload, lse, shape.overlap, buffers, reuse_own=reuse)
    # the gradient pass's payload: texts, their column lse and the owner's upstream scalar
    own_stats = lse + c
    grad_pools = pool_bytes(
        rounds, payload + own_stats, grads, shape.overlap, buffers, reuse_own=reuse
    )
    grad_tile = tile_scratch(shape, shape.tile_side, shape.tile_side)
    statistics_pass = ring_pass_moments(
        stats_pools, stats_tile, operands, {"row and column lse": lse}
    )
    gradient_pass = ring_pass_moments(
        grad_pools,
        grad_tile,
        operands,
        {"row and column lse": 2 * lse + own_stats * (not reuse), "dx": grads},
        {"row and column lse": 2 * lse + own_stats, "dx": grads},
    )
    scale_gradient = {  # ⟨x, Dx⟩ needs x in the block-math dtype
        "row and column lse": 2 * lse,
        "dx": grads,
        "dy": grads,
        "images operand": operands["images"] + int(m < c) * grads,
    }
    return peak_of(*statistics_pass, *gradient_pass, scale_gradient)


register(
    Method(
        name="softmax-ring",
        kind="softmax",
        summary="CLIP by a one-way ring, online log-sum-exp, recomputing backward; flat in W",
        loss="profiling.losses.softmax_ring:SoftmaxRingLoss",
        options={"overlap": True, "tile": None, "hide_accumulator": None, "check_ranks": True},
        schedule=schedule,
        memory_terms=memory_terms,
        ring=True,
    )
)
