"""``sigmoid-allgather``: SigLIP over all-gathered texts (open_clip ``gather``, big_vision).

Math: as ``sigmoid-ring``, each rank's loss is its ``b`` rows of the global loss,
``L_r = 1/b Σ_{i∈r} Σ_{j<N} softplus(−z_ij·(t·x_i·y_j + β))``, computed in one ``b×N``
block against every text; the positives of rank ``r`` sit at columns ``r·b + i``.

Communication: all-gather the texts (``N×d``) in forward; the forward also forms the
gradient of the gathered texts (``N×d``, kept for backward), which backward scales by
the upstream gradient and reduce-scatters home. Per rank per step::

    sent = received = (W−1)·b·d·s  (all-gather)  +  (W−1)·b·d·c  (reduce-scatter)
                    + (W−1)·48      (cross-rank check)

Any per-rank upstream gradient is exact: every gradient a rank forms comes from its own
rows' loss, so backward scales it by this rank's upstream scalar before the
reduce-scatter. Dtype policy: ``precision`` (features, gathered texts in their own or
autocast's dtype; block math and gradients in fp32 for half features; loss in fp32).

Peak memory per rank grows with W (``N = W·b``)::

    gathered texts                 N·d·s   (+ N·d·m upcast copy where m > s)
    their gradient                 N·d·c
    dx                             b·d·c   (+ b·d·m upcast copy of x where m > s)
    logit block                    2·b·N·c (logits, softplus; with half operands at least
                                            b·N·(c+m) + N·d·m: ``costs.tile_scratch``)

The cost description of this code (its ``Schedule`` and memory terms, the formulas
above in numpy) and its registration are in the sibling ``sigmoid_allgather_cost``.
"""

from __future__ import annotations

import torch

from profiling.losses import blocks
from profiling.losses.base import DistributedLoss, first_order_only
from profiling.losses.precision import autocast_off, compute_dtype, matmul_dtype


class _SigmoidAllGatherFunction(torch.autograd.Function):
    @staticmethod
    @autocast_off
    def forward(ctx, x, y, scale, bias, wire, transport, want_grad):
        ctx.dtypes = (x.dtype, y.dtype, scale.dtype, bias.dtype)
        x, y = x.to(wire), y.to(wire)
        cdt, mdt = compute_dtype(wire), matmul_dtype(wire, x.device)
        b = x.shape[0]
        xm = x.to(mdt)
        # The gathered tensor is kept until the block is done even for half inputs, where
        # the block uses an fp32 copy: the backend may hold it a moment after the
        # collective returns, and keeping it makes the peak independent of that timing.
        gathered = transport.all_gather(y, "sigmoid.texts")
        texts = gathered.to(mdt)
        sums = torch.zeros(2, dtype=cdt, device=x.device)  # loss, dβ
        dx = torch.zeros(x.shape, dtype=cdt, device=x.device) if want_grad else None
        dtexts = torch.zeros(texts.shape, dtype=cdt, device=x.device) if want_grad else None
        blocks.sigmoid_block(
            xm,
            texts,
            scale,
            bias,
            diag=transport.rank * b,
            tile=None,
            dx=dx,
            dy=dtexts,
            sums=sums,
        )
        del texts, gathered
        if want_grad:
            dt = blocks.dot(xm.to(cdt), dx) / b  # Σ G⊙(x·yᵀ) = ⟨x, G·Y⟩
            coef = scale / b
            ctx.grads = (dx.mul_(coef), dtexts.mul_(coef), dt, sums[1] / b)
            ctx.transport = transport
        return sums[0] / b

    @staticmethod
    @first_order_only
    @autocast_off
    def backward(ctx, grad_loss):
        dx, dtexts, dt, dbias = ctx.grads
        del ctx.grads
        dy = ctx.transport.reduce_scatter(dtexts.mul_(grad_loss), "sigmoid.text_grads")
        del dtexts
        x_dtype, y_dtype, scale_dtype, bias_dtype = ctx.dtypes
        return (
            (grad_loss * dx).to(x_dtype),
            dy.to(y_dtype),
            (grad_loss * dt).to(scale_dtype),
            (grad_loss * dbias).to(bias_dtype),
            None,
            None,
            None,
        )


class SigmoidAllGatherLoss(DistributedLoss):
    """SigLIP loss over all-gathered texts; gradients go home by reduce-scatter."""

    kind = "sigmoid"

    def forward(self, image_features, text_features, logit_scale, logit_bias=None):
        inputs, transport, want_grad, wire = self.prepare(
            image_features, text_features, logit_scale, logit_bias
        )
        return self.run_function(_SigmoidAllGatherFunction, *inputs, wire, transport, want_grad)
