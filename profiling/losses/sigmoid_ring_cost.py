"""``sigmoid-ring``'s cost description: its :class:`Schedule` and memory terms.

numpy only, so the simulator prices it without importing torch; the math and the code
it describes are in ``profiling.losses.sigmoid_ring`` (read that docstring first), whose loss
class the registration names by import path.
"""

from __future__ import annotations

import numpy as np

from profiling.losses.costs import (
    accumulator_buffers,
    block_flops,
    pool_bytes,
    rank_check_phase,
    ring_operands,
    ring_pass_moments,
    symmetric,
    tile_scratch,
)
from profiling.losses.registry import Method, Phase, Schedule, Shape, peak_of, register


def ring_round_phase(shape: Shape, *, name: str, repeat, chains: int, label: str) -> Phase:
    """One ring round: ``chains`` blocks computed, each chain moving a payload and a dy."""
    b, d = shape.batch, shape.dim
    payload = b * d * shape.elem_bytes
    acc = b * d * shape.compute_bytes
    return Phase(
        name=name,
        pass_="forward",
        repeat=repeat,
        matmul_flops=chains * block_flops(b, b, d),
        pointwise_elems=chains * b * b,
        transfers=tuple(
            symmetric(
                "p2p", f"{label}.{kind}", chains * size, chains, peer="neighbor", directions=chains
            )
            for kind, size in (("payload", payload), ("acc", acc))
        ),
        overlapped=shape.overlap,
    )


def home_block_phase(shape: Shape, flops) -> Phase:
    b = shape.batch
    return Phase(
        name="home block", pass_="forward", repeat=1, matmul_flops=flops, pointwise_elems=b * b
    )


def upstream_phase(shape: Shape) -> Phase:
    """Backward's all-gather of the W upstream scalars (one block-math element each),
    skipped on one rank."""
    w = shape.world
    nbytes = (w - 1) * shape.compute_bytes
    return Phase(
        name="upstream scalars",
        pass_="backward",
        repeat=1,
        transfers=(symmetric("all_gather", "upstream", nbytes, w - 1, called_alone=False),),
    )


def second_trip_phase(shape: Shape) -> Phase:
    """The exact fallback when ranks backpropagate different scalars (not in the
    schedule, which describes the common case): texts and a dy accumulator travel again,
    every block recomputed (logits and dy: two matmuls)."""
    b, d = shape.batch, shape.dim
    return Phase(
        name="second trip (different upstream scalars)",
        pass_="backward",
        repeat=shape.world - 1,
        matmul_flops=2 * 2 * b * b * d,
        pointwise_elems=b * b,
        transfers=tuple(
            symmetric("p2p", f"sigmoid.bwd.{kind}", size, 1, peer="neighbor")
            for kind, size in (
                ("payload", b * d * shape.elem_bytes),
                ("acc", b * d * shape.compute_bytes),
            )
        ),
        overlapped=shape.overlap,
    )


def schedule(shape: Shape) -> Schedule:
    b, d = shape.batch, shape.dim
    return Schedule(
        (
            rank_check_phase(shape),
            ring_round_phase(
                shape, name="ring round", repeat=shape.world - 1, chains=1, label="sigmoid"
            ),
            home_block_phase(shape, block_flops(b, b, d)),
            upstream_phase(shape),
        )
    )


def memory_terms(shape: Shape, rounds=None) -> dict[str, np.ndarray]:
    """Peak bytes per rank; ``rounds``: rounds per chain (default: one chain of W−1)."""
    b, d, s, c, m = (
        shape.batch,
        shape.dim,
        shape.elem_bytes,
        shape.compute_bytes,
        shape.operand_bytes,
    )
    rounds = [shape.world - 1] if rounds is None else rounds
    grads, payload = b * d * c, b * d * s
    operands = ring_operands(shape)
    tile = tile_scratch(shape, shape.tile_side, shape.tile_side)
    pools = pool_bytes(
        rounds,
        payload,
        grads,
        shape.overlap,
        accumulator_buffers(shape),
        reuse_own=shape.input_bytes is not None,
    )
    ring_pass = ring_pass_moments(pools, tile, operands, {"dx": grads})
    scale_gradient = {  # ⟨x, Dx⟩ needs x in the block-math dtype
        "dx": grads,
        "dy": grads,
        "images operand": operands["images"] + int(m < c) * grads,
    }
    # backward (one common upstream scalar): u·dy replaces dy, u·dx is made beside them,
    # and both are converted to the caller's dtype when it is not the block-math one
    caller = shape.input_bytes or s
    converted = int(caller != c) * 2 * b * d * caller
    backward = {"dx": grads, "dy": grads, "input gradients": grads + converted}
    return peak_of(*ring_pass, scale_gradient, backward)


register(
    Method(
        name="sigmoid-ring",
        kind="sigmoid",
        summary="SigLIP, texts round a one-way ring, dy accumulators follow; memory flat in W",
        loss="profiling.losses.sigmoid_ring:SigmoidRingLoss",
        options={"overlap": True, "tile": None, "hide_accumulator": None, "check_ranks": True},
        schedule=schedule,
        memory_terms=memory_terms,
        ring=True,
    )
)
