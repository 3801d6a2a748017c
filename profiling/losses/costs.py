"""Cost-description pieces shared by several strategy modules (see ``registry``)."""

from __future__ import annotations

import numpy as np

from profiling.losses.checks import RANK_CHECK_BYTES
from profiling.losses.registry import Phase, Shape, Transfer


def block_flops(rows, cols, dim):
    """Matmul FLOPs of one block with its gradients: logits, dx, dy (2·m·n·d each)."""
    return 3 * 2 * rows * cols * dim


def symmetric(
    op, label, nbytes, messages, *, peer="ring", directions=1, called_alone=None
) -> Transfer:
    """A transfer that receives as many bytes as it sends (every op of these methods).
    ``called_alone`` defaults to: collectives yes, p2p no (see ``Transfer``)."""
    return Transfer(
        op=op,
        label=label,
        bytes_sent=nbytes,
        bytes_received=nbytes,
        messages=messages,
        peer=peer,
        directions=directions,
        called_alone=op != "p2p" if called_alone is None else called_alone,
    )


def rank_check_phase(shape: Shape) -> Phase:
    """The cross-rank check: an all-gather of ``RANK_CHECK_BYTES`` per rank (``checks``),
    skipped on one rank."""
    w = shape.world
    nbytes = (w - 1) * RANK_CHECK_BYTES * shape.check_ranks
    return Phase(
        name="rank check",
        pass_="forward",
        repeat=1,
        transfers=(
            symmetric(
                "all_gather",
                "rank_check",
                nbytes,
                (w - 1) * shape.check_ranks,
                called_alone=False,
            ),
        ),
    )


def operand_copies(shape: Shape):
    """1 where the block matmuls take upcast copies of half features (``m > s``), else 0."""
    return int(shape.operand_bytes > shape.elem_bytes)


def tile_scratch(shape: Shape, rows, cols, *, passes: int = 2):
    """Peak scratch of one ``rows×cols`` tile of block math (``blocks``), bytes.

    ``passes`` block-math-dtype buffers of the tile at once (logits and softplus, or
    logits and G); with half operands (``m < c``) the gradient matmuls also hold ``G``
    rounded to ``m`` and one product, ``max(rows, cols)×d`` in ``m``.
    """
    c, m, d = shape.compute_bytes, shape.operand_bytes, shape.dim
    full = passes * rows * cols * c
    if m >= c:
        return full
    return np.maximum(full, rows * cols * (c + m) + np.maximum(rows, cols) * d * m)
