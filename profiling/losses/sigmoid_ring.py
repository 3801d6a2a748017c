"""``sigmoid-ring``: the SigLIP paper's chunked ring, one direction, memory flat in W.

Math. Rank ``r`` owns images ``x_r`` and texts ``y_r`` (``b×d`` each). Its loss is its
rows of the global sigmoid loss, ``L_r = 1/b Σ_{i∈r} Σ_j softplus(−z_ij·(t·x_i·y_j + β))``,
so the mean over ranks is the reference loss (see ``blocks.sigmoid_block``).

Communication. Texts travel round the ring (rank ``r`` → ``r+1``); at each of the ``W−1``
rounds a rank computes one ``b×b`` block of negatives against its own images. The
gradient of a block's logits is known the moment it is computed (``σ(l) − [pos]``), so
the forward pass also produces the gradients: ``dx`` stays local, and a ``dy``
accumulator follows its texts round the ring one round behind (``ring.ring_pass``) and
is sent home after the last stop. The backward pass only scales the stored ``b×d``
gradients by the upstream gradient: three matmuls per block, one trip, no traffic in
backward. This assumes every rank backpropagates the same upstream scalar (plain
``loss.backward()``, a common loss scale, gradient accumulation): the text gradients
mix contributions computed on every rank, each scaled by the scalar of the rank that
receives them.

Traffic per rank per step, ``s`` bytes per feature element, ``c`` per block-math
element (4 for half inputs, else ``s``)::

    sent = received = (W−1)·b·d·s   (texts)   +  (W−1)·b·d·c   (dy accumulators)
                    + (W−1)·32                (cross-rank shape check)

in ``2(W−1)`` messages (plus ``W−1`` for the check). Without gradients (eval, no_grad)
only the texts travel.

Peak memory per rank (training), independent of W; ``T = min(tile, b)``::

    dx, home dy                    2·b·d·c
    ring buffers                   2·b·d·s     (payloads: held + arriving)
                                 + 3·b·d·c     (accumulators: out, in, fresh contribution)
    block-math copies (half only)  2·b·d·c     (x and the held texts in fp32)
    tile                           3·T²·c      (cosines, logits, softplus)

(fewer buffers for rings of one or two rounds and without overlap: ``ring.pool_bytes``).

Overlap: the next round's texts are posted before the current block is computed and the
accumulator from round ``i`` is awaited only after block ``i+1`` (``overlap=False``
waits at once, to measure the difference).
"""

from __future__ import annotations

import numpy as np
import torch

from profiling.losses import blocks, ring
from profiling.losses.base import RingLoss
from profiling.losses.checks import (
    compute_dtype,
)
from profiling.losses.costs import block_flops, rank_check_phase, symmetric
from profiling.losses.registry import Method, Phase, Schedule, Shape, peak_of, register


class _SigmoidRingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, scale, bias, transport, chains, tile, overlap, want_grad):
        cdt = compute_dtype(x.dtype)
        b = x.shape[0]
        t, beta = float(scale), float(bias)
        xc = x.to(cdt)
        sums = torch.zeros(3, dtype=cdt, device=x.device)  # loss, dt, dβ
        dx = torch.zeros_like(xc) if want_grad else None

        def visit(payload, owner, dy):
            if dy is not None:
                dy.zero_()
            diag = 0 if owner == transport.rank else None
            texts = payload[0].to(cdt)
            blocks.sigmoid_block(xc, texts, t, beta, diag=diag, tile=tile, dx=dx, dy=dy, sums=sums)

        dy, returned = ring.ring_pass(
            transport,
            [y],
            chains,
            visit,
            lambda received, contribution: received.add_(contribution),
            new_accumulator=(lambda: torch.empty_like(xc)) if want_grad else None,
            overlap=overlap,
            label="sigmoid",
        )
        if want_grad:
            for part in returned:
                dy.add_(part)
            inv_b = 1.0 / b
            ctx.grads = (dx.mul_(inv_b), dy.mul_(inv_b), sums[1] * inv_b, sums[2] * inv_b)
            ctx.dtypes = (x.dtype, y.dtype, scale.dtype, bias.dtype)
        return sums[0] / b

    @staticmethod
    def backward(ctx, grad_loss):
        dx, dy, dt, dbias = ctx.grads
        del ctx.grads
        gx, gy, gt, gb = (
            (grad_loss * g).to(dtype)
            for g, dtype in zip((dx, dy, dt, dbias), ctx.dtypes, strict=True)
        )
        return gx, gy, gt, gb, None, None, None, None, None


class SigmoidRingLoss(RingLoss):
    """SigLIP loss by a ring of texts; one direction (``chains=ring.one_way``)."""

    kind = "sigmoid"
    chains = staticmethod(ring.one_way)

    def forward(self, image_features, text_features, logit_scale, logit_bias=None):
        inputs, transport, want_grad = self.prepare(
            image_features, text_features, logit_scale, logit_bias
        )
        chains = self.chains(transport.world_size)
        return _SigmoidRingFunction.apply(
            *inputs, transport, chains, self.tile, self.overlap, want_grad
        )


# -- cost description -------------------------------------------------------------------


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


def schedule(shape: Shape) -> Schedule:
    b, d = shape.batch, shape.dim
    return Schedule(
        (
            rank_check_phase(shape),
            home_block_phase(shape, block_flops(b, b, d)),
            ring_round_phase(
                shape, name="ring round", repeat=shape.world - 1, chains=1, label="sigmoid"
            ),
        )
    )


def memory_terms(shape: Shape, rounds=None) -> dict[str, np.ndarray]:
    """Peak bytes per rank; ``rounds``: rounds per chain (default: one chain of W−1)."""
    b, d, s, c = shape.batch, shape.dim, shape.elem_bytes, shape.compute_bytes
    rounds = [shape.world - 1] if rounds is None else rounds
    grads, payload = b * d * c, b * d * s
    half = int(s < c)
    tile = shape.tile_side
    at_last_block, pools = ring.pool_bytes(rounds, payload, grads, shape.overlap)
    computing_a_block = {
        "dx, home dy": 2 * grads,
        "ring buffers": at_last_block,
        "block-math copies": half * 2 * grads,
        "tile": 3 * tile * tile * c,
    }
    end_of_ring = {
        "dx, home dy": 2 * grads,
        "ring buffers": pools,
        "block-math copies": half * grads,
    }
    backward = {"dx, home dy": 2 * grads, "input gradients": 2 * payload + half * grads}
    return peak_of(computing_a_block, end_of_ring, backward)


register(
    Method(
        name="sigmoid-ring",
        kind="sigmoid",
        summary="SigLIP, texts round a one-way ring, dy accumulators follow; memory flat in W",
        module=SigmoidRingLoss,
        options={"overlap": True, "tile": None, "check_ranks": True},
        schedule=schedule,
        memory_terms=memory_terms,
        ring=True,
    )
)
