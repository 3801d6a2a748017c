"""Cost-description pieces shared by several strategy modules (see ``registry``)."""

from __future__ import annotations

import numpy as np

from profiling.losses.registry import Phase, Shape, Transfer

RANK_CHECK_FIELDS = ("batch", "dim", "dtype", "device", "grad mode", "loss and options")
"""What every rank's forward sends to all others to check they agree (``checks``)."""
RANK_CHECK_BYTES = len(RANK_CHECK_FIELDS) * 8
"""Bytes each rank contributes to the cross-rank check: one int64 per field."""
RANK_CHECK_LABEL = "rank_check"
"""The label the check's all-gather passes to the transport (key ``all_gather:rank_check``)."""


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
                RANK_CHECK_LABEL,
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


def pool_bytes(rounds, payload_bytes, acc_bytes, overlap=True, accumulators=2):
    """Bytes of the buffers :func:`profiling.losses.ring.ring_pass` holds: (at the last block, at the end).

    ``rounds``: each chain's round count (arrays broadcast), in chain order.
    ``accumulators``: the accumulator-sized buffers a chain's steady state holds, 2 (a
    visit adds into the accumulator it has just received) or 3 (``hide_accumulator``:
    the contribution computed apart, the accumulator received and sent on, the one the
    next arrives in; :func:`accumulator_buffers`). A chain of ``R ≥ 1`` rounds ends up
    holding ``min(R, 2)`` payloads (the one computed on and the one arriving, or the one
    whose send just completed) and that many accumulators, or 2 when ``R = 1`` or
    without overlap (a completed send frees its buffer at once, so the contribution
    reuses it). All of them exist from the second round on; the one exception is the
    last chain to compute, if its ring has a single round: its receive buffer is taken
    only after its block. The owner's own block and the caller's buffers are not
    included.
    """
    if accumulators not in (2, 3):
        raise ValueError(f"accumulators must be 2 or 3, got {accumulators!r}")
    rounds = [np.asarray(r) for r in rounds]
    p, a = np.asarray(payload_bytes), np.asarray(acc_bytes)
    steady = accumulators if overlap else 2
    full = 0
    for r in rounds:
        n_acc = np.where(r == 0, 0, np.where(r == 1, 2, steady))
        full = full + p * np.minimum(r, 2) + a * n_acc
    # the chain that computes last: the longest, the later one on a tie
    longest = rounds[0]
    for r in rounds[1:]:
        longest = np.maximum(longest, r)
    at_last_block = full - a * (longest == 1)
    return at_last_block + 0 * p, full + 0 * p


def accumulator_buffers(shape: Shape) -> int:
    """Accumulator-sized buffers per ring chain in steady state: 3 where the shape hides
    the accumulator transfer (``Shape.hide_accumulator``), else 2 (``ring``)."""
    return 3 if shape.hide_accumulator else 2
