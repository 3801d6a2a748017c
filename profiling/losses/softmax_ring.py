"""``softmax-ring``: the CLIP loss by a ring with online log-sum-exp; nothing b×N is kept.

Math. With ``S = t·X·Yᵀ`` over the global batch, rank ``r``'s loss is
``L_r = 1/(2b) Σ_{i∈r} [(lse_row_i − S_ii) + (lse_col_i − S_ii)]``: its images' rows and
its texts' columns. The row normaliser of an image only needs blocks computed where the
image lives; the column normaliser of a text needs every rank's images. A log-sum-exp
merges block by block (``logaddexp``), so both can be built online.

Forward (trip 1). Texts travel a one-way ring; each rank folds every ``b×b`` block into
its own images' row log-sum-exps (kept at home) and into a running column log-sum-exp
for the visiting texts, which follows the texts one round behind and is sent home after
their last stop: one float per text, not the two running statistics of a max/sum pair.

Backward (trip 2). ``G_ij = c_row·softmax_row(S)_ij + c_col·softmax_col(S)_ij −
(c_row + c_col)·[i=j]`` needs the row normaliser (home) and the column normaliser (at the
texts' home). The texts travel again, carrying their column log-sum-exps and their
owner's upstream gradient (``b+1`` floats); every rank recomputes its block (one extra
matmul: four per block in all, about 1.33× the compute of stored blocks), adds ``t·G·Y``
to its image gradient and a ``t·Gᵀ·X`` contribution to a text-gradient accumulator that
follows the texts home. Exact for any per-rank upstream gradient: each rank's upstream
scalar travels with its texts (the ``+1`` float), so column terms scale by the texts'
owner's and row terms by this rank's. Dtype policy: ``precision`` (features in their
own or autocast's dtype, which is what travels; block math, log-sum-exps and
accumulators in fp32 for half features; loss in fp32); the backward recomputes the
forward's blocks with the same dtypes.

Traffic per rank per step, ``s`` bytes per feature element, ``c`` per block-math
element::

    forward   (W−1)·b·d·s (texts) + (W−1)·b·c (column lse)           + (W−1)·48 (cross-rank check)
    backward  (W−1)·(b·d·s + (b+1)·c) (texts, lse, scale) + (W−1)·b·d·c (text gradients)

sent and received alike, against ``4(W−1)·b·d`` elements for the all-gather method.

Peak memory per rank, independent of W; ``T = min(tile, b)``, at a gradient block in
mid-ring: the image gradient (``b·d·c``), two payloads in flight (``2·b·d·s`` plus their
column statistics; under autocast the texts' rounded copy is one of them), two
text-gradient buffers (``2·b·d·c``: the one received, computed into and sent on, and the
one the next arrives in; three with ``hide_accumulator``, the block's contribution
computed apart: ``ring``), the images as a matmul operand where that copies
(``b·d·m``: under autocast, or ``m > s``), the held texts' tile upcast where ``m > s``
(``T·d·m``) and two ``T×T`` tiles (``2·T²·c``: the logits, turned into G in place, and
the log-sum-exp's scratch or G's second term; with half operands at least
``T²·(c+m) + T·d·m``). The own block comes last, the payloads freed, its text tiles read
from the caller's texts (``costs.pool_bytes``, ``costs.ring_operands``). Saved for
backward: only the row and column log-sum-exps (``2·b·c``).

Overlap: the next round's texts are posted before the current block is computed. With
``hide_accumulator`` (the default on CUDA) each block's column log-sum-exp and text
gradient are computed into buffers of their own and merged (``logaddexp``, ``add_``) once
the previous rank's accumulator has arrived, so the accumulator transfers hide behind the
blocks; without it (the default on CPU) the block folds into the accumulator just
received, whose transfer is then exposed (``ring``).

The cost description of this code (its ``Schedule`` and memory terms, the formulas
above in numpy) and its registration are in the sibling ``softmax_ring_cost``.
"""

from __future__ import annotations

import torch

from profiling.losses import blocks, ring
from profiling.losses.base import RingLoss, first_order_only
from profiling.losses.precision import autocast_off, compute_dtype, matmul_dtype, operand


def _logaddexp_(received: torch.Tensor, contribution: torch.Tensor) -> torch.Tensor:
    return torch.logaddexp(received, contribution, out=received)


def _add_(received: torch.Tensor, contribution: torch.Tensor) -> torch.Tensor:
    return received.add_(contribution)


class _SoftmaxRingFunction(torch.autograd.Function):
    @staticmethod
    @autocast_off
    def forward(ctx, x, y, scale, wire, transport, tile, overlap, hide):
        ctx.save_for_backward(x, y)  # the caller's; backward redoes the rounding
        cdt, mdt = compute_dtype(wire), matmul_dtype(wire, x.device)
        b = x.shape[0]
        t = scale.detach()
        xm = x.to(wire).to(mdt)  # the images as the matmuls take them; texts: per tile
        to_operand = operand(wire, x.device)
        row_lse = torch.full((b,), -torch.inf, dtype=cdt, device=x.device)
        positives = torch.zeros(1, dtype=cdt, device=x.device)  # Σ S_ii, from the home block

        def visit(payload, owner, col_lse, fresh):
            if fresh:
                col_lse.fill_(-torch.inf)
            blocks.softmax_stats(
                xm,
                payload[0],
                t,
                tile=tile,
                row_lse=row_lse,
                col_lse=col_lse,
                diag=0 if owner == transport.rank else None,
                sums=positives,
                operand=to_operand,
            )

        col_lse = ring.ring_pass(
            transport,
            [y.to(wire)],  # the texts travel in the wire dtype
            ring.one_way(transport.world_size),
            visit,
            new_accumulator=lambda: torch.empty_like(row_lse),
            overlap=overlap,
            label="softmax.fwd",
            hide_accumulator=hide,
            combine=_logaddexp_,
            home=None if y.dtype == wire else (lambda: [y]),
        )
        loss = (row_lse.sum() + col_lse.sum() - 2 * positives[0]) / (2 * b)
        ctx.lse = (row_lse, col_lse)
        ctx.setup = (wire, t, transport, tile, overlap, hide, scale.dtype)
        return loss

    @staticmethod
    @first_order_only
    @autocast_off
    def backward(ctx, grad_loss):
        x_in, y_in = ctx.saved_tensors
        row_lse, col_lse = ctx.lse
        wire, t, transport, tile, overlap, hide, scale_dtype = ctx.setup
        cdt, mdt = compute_dtype(wire), matmul_dtype(wire, x_in.device)
        b = x_in.shape[0]
        xm = x_in.to(wire).to(mdt)  # the forward's rounding, redone
        to_operand = operand(wire, x_in.device)
        coef = grad_loss.to(cdt) / (2 * b)
        dx = torch.zeros(x_in.shape, dtype=cdt, device=x_in.device)

        def visit(payload, owner, dy, fresh):
            texts, stats = payload
            if fresh:
                dy.zero_()
            blocks.softmax_grad(
                xm,
                texts,
                t,
                tile=tile,
                row_lse=row_lse,
                row_coef=coef,
                col_lse=stats[:b],
                col_coef=stats[b],
                diag=0 if owner == transport.rank else None,
                dx=dx,
                dy=dy,
                operand=to_operand,
            )

        def own_payload():  # the texts, their column log-sum-exps and upstream scalar
            return [y_in, torch.cat([col_lse, coef.reshape(1)])]

        copied = y_in.dtype != wire  # a rounded copy travels: the ring reuses its buffers
        dy = ring.ring_pass(
            transport,
            [y_in.to(wire), *own_payload()[1:]],
            ring.one_way(transport.world_size),
            visit,
            new_accumulator=lambda: torch.empty_like(dx),
            overlap=overlap,
            label="softmax.bwd",
            hide_accumulator=hide,
            combine=_add_,
            home=own_payload if copied else None,
        )
        del visit
        dt = blocks.dot(xm.to(cdt), dx)  # Σ G⊙(x·yᵀ) over this rank's blocks (``blocks``)
        dx.mul_(t), dy.mul_(t)
        none = (None,) * 5
        return dx.to(x_in.dtype), dy.to(y_in.dtype), dt.to(scale_dtype), *none


class SoftmaxRingLoss(RingLoss):
    """CLIP loss by a one-way ring with online log-sum-exp and a recomputing backward."""

    kind = "softmax"

    def forward(self, image_features, text_features, logit_scale, logit_bias=None):
        inputs, transport, _, wire = self.prepare(
            image_features, text_features, logit_scale, logit_bias
        )
        return self.run_function(
            _SoftmaxRingFunction,
            *inputs,
            wire,
            transport,
            self.tile_for(image_features),
            self.overlap,
            self.hide_accumulator_for(image_features),
        )
