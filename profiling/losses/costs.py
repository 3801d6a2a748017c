"""Cost-description pieces shared by several strategy modules (see ``registry``)."""

from __future__ import annotations

from profiling.losses.checks import RANK_CHECK_BYTES
from profiling.losses.registry import Phase, Shape, Transfer


def block_flops(rows, cols, dim):
    """Matmul FLOPs of one block with its gradients: logits, dx, dy (2·m·n·d each)."""
    return 3 * 2 * rows * cols * dim


def rank_check_phase(shape: Shape) -> Phase:
    """The cross-rank shape check: an all-gather of 32 bytes per rank (``checks``)."""
    w = shape.world
    nbytes = (w - 1) * RANK_CHECK_BYTES * shape.check_ranks
    return Phase(
        name="rank check",
        pass_="forward",
        repeat=1,
        transfers=(
            Transfer(
                op="all_gather",
                label="rank_check",
                bytes_sent=nbytes,
                bytes_received=nbytes,
                messages=(w - 1) * shape.check_ranks,
            ),
        ),
    )
