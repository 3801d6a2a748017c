"""``softmax-ring``'s cost description: its :class:`Schedule` and memory terms.

numpy only, so the simulator prices it without importing torch; the math and the code
it describes are in ``profiling.losses.softmax_ring`` (read that docstring first), whose loss
class the registration names by import path.
"""

from __future__ import annotations

import numpy as np

from profiling.losses.costs import (
    accumulator_buffers,
    pool_bytes,
    rank_check_phase,
    ring_operands,
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

    def own_tile(scratch):  # the own block's text tile, or its rounding before the scratch
        return operands["home tile"] + np.maximum(0, operands["home rounding"] - scratch)

    stats_tile = 2 * shape.tile_side**2 * c
    stats_last_block, stats_end, stats_own_block = pool_bytes(
        rounds, payload, lse, shape.overlap, buffers, reuse_own=reuse
    )
    # the gradient pass's payload: texts, their column lse and the owner's upstream scalar
    own_stats = lse + c
    at_last_block, end_of_rounds, at_own_block = pool_bytes(
        rounds, payload + own_stats, grads, shape.overlap, buffers, reuse_own=reuse
    )
    grad_tile = tile_scratch(shape, shape.tile_side, shape.tile_side)
    statistics_block = {
        "row and column lse": lse,
        "ring buffers": stats_last_block,
        "images operand": operands["images"],
        "text tile operand": operands["text tile"],
        "tile": stats_tile,
    }
    statistics_end = {
        "row and column lse": lse,
        "ring buffers": stats_end,
        "images operand": operands["images"],
    }
    statistics_own_block = {
        "row and column lse": lse,
        "ring buffers": stats_own_block,
        "images operand": operands["images"],
        "text tile operand": own_tile(stats_tile),
        "tile": stats_tile,
    }
    gradient_block = {
        "row and column lse": 2 * lse + own_stats * (not reuse),
        "dx": grads,
        "ring buffers": at_last_block,
        "images operand": operands["images"],
        "text tile operand": operands["text tile"],
        "tile": grad_tile,
    }
    gradient_end = {
        "row and column lse": 2 * lse + own_stats * (not reuse),
        "dx": grads,
        "ring buffers": end_of_rounds,
        "images operand": operands["images"],
    }
    gradient_own_block = {
        "row and column lse": 2 * lse + own_stats,
        "dx": grads,
        "ring buffers": at_own_block,
        "images operand": operands["images"],
        "text tile operand": own_tile(grad_tile),
        "tile": grad_tile,
    }
    scale_gradient = {  # ⟨x, Dx⟩ needs x in the block-math dtype
        "row and column lse": 2 * lse,
        "dx": grads,
        "dy": grads,
        "images operand": operands["images"] + int(m < c) * grads,
    }
    return peak_of(
        statistics_block,
        statistics_end,
        statistics_own_block,
        gradient_block,
        gradient_end,
        gradient_own_block,
        scale_gradient,
    )


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
