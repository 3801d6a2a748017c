"""``sigmoid-allgather``'s cost description: its :class:`Schedule` and memory terms.

numpy only, so the simulator prices it without importing torch; the math and the code
it describes are in ``profiling.losses.sigmoid_allgather`` (read that docstring first), whose loss
class the registration names by import path.
"""

from __future__ import annotations

from profiling.losses.costs import (
    autocast_copies,
    block_flops,
    operand_copies,
    rank_check_phase,
    symmetric,
    tile_scratch,
)
from profiling.losses.registry import Method, Phase, Schedule, Shape, register


def schedule(shape: Shape) -> Schedule:
    b, d, w = shape.batch, shape.dim, shape.world
    gathered = (w - 1) * b * d * shape.elem_bytes
    scattered = (w - 1) * b * d * shape.compute_bytes
    return Schedule(
        (
            rank_check_phase(shape),
            Phase(
                name="gather texts",
                pass_="forward",
                repeat=1,
                transfers=(symmetric("all_gather", "sigmoid.texts", gathered, w - 1),),
            ),
            Phase(
                name="b×N block",
                pass_="forward",
                repeat=1,
                matmul_flops=block_flops(b, w * b, d),
                pointwise_elems=b * w * b,
            ),
            Phase(
                name="scatter text gradients",
                pass_="backward",
                repeat=1,
                transfers=(symmetric("reduce_scatter", "sigmoid.text_grads", scattered, w - 1),),
            ),
        )
    )


def memory_terms(shape: Shape):
    b, d, s, c, n = (
        shape.batch,
        shape.dim,
        shape.elem_bytes,
        shape.compute_bytes,
        shape.global_batch,
    )
    m, copies = shape.operand_bytes, operand_copies(shape)
    return {
        "gathered texts": n * d * s + copies * n * d * m,
        "gathered text gradients": n * d * c,
        "dx": b * d * c + copies * b * d * m,
        "logit block": tile_scratch(shape, b, n),
        "autocast copies of x, y": autocast_copies(shape),
    }


register(
    Method(
        name="sigmoid-allgather",
        kind="sigmoid",
        summary="SigLIP over all-gathered texts, b×N block; memory grows with W",
        loss="profiling.losses.sigmoid_allgather:SigmoidAllGatherLoss",
        options={"check_ranks": True},
        schedule=schedule,
        memory_terms=memory_terms,
    )
)
