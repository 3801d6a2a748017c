"""``softmax-allgather``: CLIP local loss over all-gathered embeddings (open_clip ClipLoss).

Math: rank ``r``'s loss is its share of the symmetric cross-entropy,
``L_r = 1/(2b) Σ_{i∈r} [(lse_j S_ij − S_ii) + (lse_j S'_ij − S'_ii)]`` with
``S = t·x_r·Yᵀ`` (its images against all ``N`` texts) and ``S' = t·y_r·Xᵀ`` (its texts
against all ``N`` images); positives at columns ``r·b + i``. The mean over ranks is the
reference loss. This is open_clip's ``ClipLoss(local_loss=True, gather_with_grad=True)``.

Communication: all-gather images and texts (``N×d`` each) in forward; the forward also
forms the gradients of both gathered tensors (``softmax − onehot``, one pass per
``b×N`` block), which backward scales and reduce-scatters home. Per rank per step::

    sent = received = 2·(W−1)·b·d·s  (two all-gathers)
                    + 2·(W−1)·b·d·c  (two reduce-scatters)  +  (W−1)·48  (cross-rank check)

Any per-rank upstream gradient is exact (each rank scales the gradients of its own
rows' loss by its own upstream scalar before the reduce-scatters). Dtype policy:
``precision`` (features and gathered tensors in their own or autocast's dtype; block
math and gradients in fp32 for half features; loss in fp32).

Peak memory per rank grows with W (``N = W·b``)::

    gathered images and texts      2·N·d·s (+ 2·N·d·m upcast copies where m > s)
    their gradients                2·N·d·c
    dx, dy                         2·b·d·c (+ 2·b·d·m upcast copies where m > s)
    logit block                    b·N·c   (logits, turned into G in place; with half
                                            operands b·N·(c+m) + N·d·m: G in m, a product)
    row statistics                 3·b·c   (row max, row sum and its log: the
                                            log-sum-exp is done in place, no b×N scratch)

The cost description of this code (its ``Schedule`` and memory terms, the formulas
above in numpy) and its registration are in the sibling ``softmax_allgather_cost``.
"""

from __future__ import annotations

import torch

from profiling.losses import blocks
from profiling.losses.base import DistributedLoss, first_order_only
from profiling.losses.precision import autocast_off, compute_dtype, matmul_dtype


class _SoftmaxAllGatherFunction(torch.autograd.Function):
    @staticmethod
    @autocast_off
    def forward(ctx, x, y, scale, wire, transport, want_grad):
        ctx.dtypes = (x.dtype, y.dtype, scale.dtype)
        x, y = x.to(wire), y.to(wire)
        cdt, mdt = compute_dtype(wire), matmul_dtype(wire, x.device)
        b = x.shape[0]
        xm, ym = x.to(mdt), y.to(mdt)
        sums = torch.zeros(1, dtype=cdt, device=x.device)  # loss·2b
        # Gathered tensors are kept until the blocks are done (see sigmoid_allgather).
        gathered = (
            transport.all_gather(x, "softmax.images"),
            transport.all_gather(y, "softmax.texts"),
        )
        images, texts = (g.to(mdt) for g in gathered)

        def zeros(like):
            return torch.zeros(like.shape, dtype=cdt, device=like.device)

        dx, dy, dimages, dtexts = zeros(x), zeros(y), zeros(images), zeros(texts)
        diag = transport.rank * b
        blocks.softmax_rows_fused(xm, texts, scale, diag=diag, dx=dx, dy=dtexts, sums=sums)
        blocks.softmax_rows_fused(ym, images, scale, diag=diag, dx=dy, dy=dimages, sums=sums)
        del images, texts, gathered
        inv_2b = 1.0 / (2 * b)
        if want_grad:
            ctx.dscale = (blocks.dot(xm.to(cdt), dx) + blocks.dot(ym.to(cdt), dy)) * inv_2b
            coef = scale * inv_2b
            ctx.grads = (dx.mul_(coef), dy.mul_(coef), dimages.mul_(coef), dtexts.mul_(coef))
            ctx.transport = transport
        return sums[0] * inv_2b

    @staticmethod
    @first_order_only
    @autocast_off
    def backward(ctx, grad_loss):
        dx, dy, dimages, dtexts = ctx.grads
        del ctx.grads
        tp = ctx.transport
        dx = dx.mul_(grad_loss).add_(
            tp.reduce_scatter(dimages.mul_(grad_loss), "softmax.image_grads")
        )
        del dimages
        dy = dy.mul_(grad_loss).add_(
            tp.reduce_scatter(dtexts.mul_(grad_loss), "softmax.text_grads")
        )
        del dtexts
        x_dtype, y_dtype, scale_dtype = ctx.dtypes
        return (
            dx.to(x_dtype),
            dy.to(y_dtype),
            (grad_loss * ctx.dscale).to(scale_dtype),
            None,
            None,
            None,
        )


class SoftmaxAllGatherLoss(DistributedLoss):
    """CLIP loss over all-gathered images and texts; gradients go home by reduce-scatter."""

    kind = "softmax"

    def forward(self, image_features, text_features, logit_scale, logit_bias=None):
        inputs, transport, want_grad, wire = self.prepare(
            image_features, text_features, logit_scale, logit_bias
        )
        return self.run_function(_SoftmaxAllGatherFunction, *inputs, wire, transport, want_grad)
