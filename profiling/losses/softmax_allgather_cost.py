"""``softmax-allgather``'s cost description: its :class:`Schedule` and memory terms.

numpy only, so the simulator prices it without importing torch; the math and the code
it describes are in ``profiling.losses.softmax_allgather`` (read that docstring first), whose loss
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

    def collective(op, label, nbytes):
        return symmetric(op, label, nbytes, w - 1)

    return Schedule(
        (
            rank_check_phase(shape),
            Phase(
                name="gather images and texts",
                pass_="forward",
                repeat=1,
                transfers=(
                    collective("all_gather", "softmax.images", gathered),
                    collective("all_gather", "softmax.texts", gathered),
                ),
            ),
            Phase(
                name="two b×N blocks",
                pass_="forward",
                repeat=1,
                matmul_flops=2 * block_flops(b, w * b, d),
                pointwise_elems=2 * b * w * b,
            ),
            Phase(
                name="scatter gradients",
                pass_="backward",
                repeat=1,
                transfers=(
                    collective("reduce_scatter", "softmax.image_grads", scattered),
                    collective("reduce_scatter", "softmax.text_grads", scattered),
                ),
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
        "gathered images and texts": 2 * n * d * s + copies * 2 * n * d * m,
        "gathered gradients": 2 * n * d * c,
        "dx, dy": 2 * b * d * c + copies * 2 * b * d * m,
        "logit block": tile_scratch(shape, b, n, passes=1),
        "row statistics": 3 * b * c,
        "autocast copies of x, y": autocast_copies(shape),
    }


register(
    Method(
        name="softmax-allgather",
        kind="softmax",
        summary="CLIP local loss over all-gathered images and texts; memory grows with W",
        loss="profiling.losses.softmax_allgather:SoftmaxAllGatherLoss",
        options={"check_ranks": True},
        schedule=schedule,
        memory_terms=memory_terms,
    )
)
