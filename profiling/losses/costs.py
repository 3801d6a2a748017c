"""Cost-description pieces shared by several strategy modules (see ``registry``)."""

from __future__ import annotations

from typing import Any

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


def autocast_copies(shape: Shape):
    """Bytes of the features' two ``b×d`` copies rounded to the autocast dtype, alive
    through the forward of a method that makes them whole (the all-gather methods; the
    rings round tile by tile: :func:`ring_operands`); 0 outside autocast."""
    return 2 * shape.batch * shape.dim * shape.elem_bytes * int(shape.input_bytes is not None)


def ring_operands(shape: Shape) -> dict[str, Any]:
    """Bytes of the matmul operands a ring method makes from the features
    (``profiling.losses.precision.operand``), keyed by the moment that holds them.

    * ``images``: ``x`` rounded to the wire dtype and cast to the operand dtype, kept
      whole through a pass: ``b·d·m``, unless the caller's tensor already is one;
    * ``text tile``: the text tile of the block computing, ``T·d·m``, where the operand
      dtype is not the wire dtype (a visiting payload is in the wire dtype already);
    * ``home tile``: the same for the own block, which reads the caller's texts: a copy
      wherever autocast rounds them too;
    * ``home rounding``: the wire-dtype tile that exists while it is converted (both
      casts copy: autocast with upcast operands), before the tile's scratch exists.
    """
    b, d, s, m = shape.batch, shape.dim, shape.elem_bytes, shape.operand_bytes
    side = shape.tile_side
    rounded, upcast = int(shape.input_bytes is not None), int(m != s)
    return {
        "images": b * d * m * max(rounded, upcast),
        "text tile": side * d * m * upcast,
        "home tile": side * d * m * max(rounded, upcast),
        "home rounding": side * d * s * rounded * upcast,
    }


def pool_bytes(rounds, payload_bytes, acc_bytes, overlap=True, accumulators=2, reuse_own=False):
    """Bytes of the buffers :func:`profiling.losses.ring.ring_pass` holds, (at the last
    ring block, after it, at the own block that follows the rounds).

    ``rounds``: each chain's round count (arrays broadcast), in chain order.
    ``accumulators``: the accumulator-sized buffers a chain's steady state holds, 2 (a
    visit adds into the accumulator it has just received) or 3 (``hide_accumulator``:
    the contribution computed apart, the accumulator received and sent on, the one the
    next arrives in; :func:`accumulator_buffers`). ``reuse_own``: the own payload is the
    pass's copy (``ring_pass``'s ``home``), counted here, and the first chain receives
    into it from its second round on.

    At the last block, a chain of ``R ≥ 1`` rounds holds ``min(R, 2)`` payloads (the one
    computed on and the one arriving, or the one whose send just completed; with
    ``reuse_own`` the first chain also holds the own copy, which is one of the two from
    ``R = 2``) and ``min(R, 2)`` accumulators, or 2 when ``R = 1`` or without overlap (a
    completed send frees its buffer at once, so the contribution reuses it); the last
    chain to compute, if its ring has a single round, takes its receive buffer only
    after its block; once it is posted, every payload and accumulator is held. At the
    own block the payloads are freed, every accumulator is still
    held (two in flight per chain with overlap, one without) and the own block takes a
    free one of the first chain's, or a new one where none is free (and on one rank).
    The caller's buffers are not included.
    """
    if accumulators not in (2, 3):
        raise ValueError(f"accumulators must be 2 or 3, got {accumulators!r}")
    rounds = [np.asarray(r) for r in rounds]
    p, a = np.asarray(payload_bytes), np.asarray(acc_bytes)
    steady = accumulators if overlap else 2
    in_flight = 2 if overlap else 1
    payloads, held = 0, 0
    for r in rounds:
        held = held + np.where(r == 0, 0, np.where(r == 1, 2, steady))
        payloads = payloads + np.minimum(r, 2)
    if reuse_own and rounds:
        payloads = payloads + (rounds[0] == 1)
    # the chain that computes last: the longest, the later one on a tie
    longest = rounds[0] if rounds else np.asarray(0)
    for r in rounds[1:]:
        longest = np.maximum(longest, r)
    at_last_block = p * payloads + a * (held - (longest == 1))
    first = rounds[0] if rounds else np.asarray(0)
    first_held = np.where(first == 0, 0, np.where(first == 1, 2, steady))
    own_new = (first == 0) | (first_held <= in_flight)
    at_own_block = a * (held + own_new)
    return at_last_block + 0 * p, p * payloads + a * held, at_own_block + 0 * p


def ring_pass_moments(pools, scratch, operands, held, held_at_own=None) -> tuple[dict, ...]:
    """The three moments of one ring pass that can hold its peak, as named byte terms:
    a block in mid-ring, the end of the rounds, the own block.

    ``pools``: :func:`pool_bytes`'s triple; ``scratch``: one tile's scratch;
    ``operands``: :func:`ring_operands`; ``held``: what the loss holds throughout the
    pass (gradients, statistics), ``held_at_own`` where that differs at the own block.
    The own block's text tile is read from the caller's texts: its rounding tile exists
    before the scratch does, so the larger of the two counts.
    """
    at_last_block, end_of_rounds, at_own_block = pools
    images = {"images operand": operands["images"]}
    own_tile = operands["home tile"] + np.maximum(0, operands["home rounding"] - scratch)
    return (
        held
        | {"ring buffers": at_last_block}
        | images
        | {"text tile operand": operands["text tile"], "tile": scratch},
        held | {"ring buffers": end_of_rounds} | images,
        (held if held_at_own is None else held_at_own)
        | {"ring buffers": at_own_block}
        | images
        | {"text tile operand": own_tile, "tile": scratch},
    )


def accumulator_buffers(shape: Shape) -> int:
    """Accumulator-sized buffers per ring chain in steady state: 3 where the shape hides
    the accumulator transfer (``Shape.hide_accumulator``), else 2 (``ring``)."""
    return 3 if shape.hide_accumulator else 2
