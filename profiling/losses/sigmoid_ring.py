"""``sigmoid-ring``: the SigLIP paper's chunked ring, one direction, memory flat in W.

Math. Rank ``r`` owns images ``x_r`` and texts ``y_r`` (``b×d`` each). Its loss is its
rows of the global sigmoid loss, ``L_r = 1/b Σ_{i∈r} Σ_j softplus(−z_ij·(t·x_i·y_j + β))``,
so the mean over ranks is the reference loss (see ``blocks.sigmoid_block``).

Communication. Texts travel round the ring (rank ``r`` → ``r+1``); at each of the ``W−1``
rounds a rank computes one ``b×b`` block of negatives against its own images. The
gradient of a block's logits is known the moment it is computed (``σ(l) − [pos]``), so
the forward pass also produces the gradients: ``dx`` stays local, and a ``dy``
accumulator follows its texts round the ring one round behind (``ring.ring_pass``) and
is sent home after the last stop.

Backward. The stored gradients are exact for one common upstream scalar ``u`` (plain
``loss.backward()``, a common loss scale, uniform accumulation): ``dx``, ``dt`` and ``dβ``
come from this rank's own rows and scale by its own ``u``, but ``dy`` mixes
contributions computed on every rank, each of which must scale by the upstream scalar of
the rank that computed it. So backward first all-gathers the ``W`` upstream scalars
(``(W−1)·c`` bytes, ``W−1`` messages; on CUDA one host synchronisation to read them):

* all equal (the fast path): ``dy·u``, one trip, three matmuls per block;
* different (per-rank loss weights, ``loss * 0`` on a rank, a mask): an exact second
  trip. The texts travel the ring again and every rank recomputes its blocks against
  them, adding ``u_self/b · t·Gᵀ·x`` to a ``dy`` accumulator that follows them home
  (:func:`second_trip_phase`: ``(W−1)·b·d·(s + c)`` more bytes each way, ``2(W−1)``
  messages, two more matmuls per block). Nothing is ever silently wrong.

Dtype policy: ``precision`` (features in their own or autocast's dtype, which is what
travels; block math and accumulators in fp32 for half features; loss in fp32).

Traffic per rank per step (fast path), ``s`` bytes per feature element, ``c`` per
block-math element (4 for half inputs, else ``s``)::

    sent = received = (W−1)·b·d·s   (texts)   +  (W−1)·b·d·c   (dy accumulators)
                    + (W−1)·c                 (upstream scalars, backward)
                    + (W−1)·48                (cross-rank check)

in ``2(W−1)`` messages plus ``W−1`` each for the two all-gathers. Without gradients
(eval, no_grad) only the texts (and the check) travel.

Peak memory per rank (training), independent of W; ``T = min(tile, b)``; at a block in
mid-ring::

    dx                             b·d·c
    ring buffers                   2·b·d·s     (payloads: held + arriving; under autocast
                                                the texts' rounded copy is one of them)
                                 + 2·b·d·c     (accumulators: computed into and sent,
                                                arriving; 3·b·d·c with
                                                hide_accumulator: + the contribution)
    images operand                 b·d·m       (x rounded to the wire dtype and cast to
                                                the operand dtype, where that copies:
                                                under autocast, or m > s)
    text tile operand              T·d·m       (the held texts' tile, where m > s)
    tile                           2·T²·c      (logits, softplus; with half operands
                                                m < c, at least T²·(c+m) + T·d·m: G in m
                                                and one product, ``costs.tile_scratch``)

The own block comes last (``ring``): the payloads are freed by then, the accumulators
held (one more where no pooled one is free), and its text tiles are read from the
caller's texts, rounded tile by tile (``costs.pool_bytes``, ``costs.ring_operands``;
fewer buffers for rings of one or two rounds). So under autocast the rounded features
cost the ring ``b·d·m`` for the images and nothing whole for the texts.

Overlap: the next round's texts are posted before the current block is computed. With
``hide_accumulator`` (the default on CUDA) the block's dy contribution is computed into a
buffer of its own and added to the dy accumulator once that has arrived, so the
accumulator's transfer hides behind the block too (a third b×d buffer); without it (the
default on CPU) the block adds into the dy accumulator just received, so that
accumulator's transfer is waited for and exposed (``ring``). ``overlap=False`` waits for
every exchange at once, to measure the difference.

The cost description of this code (its ``Schedule`` and memory terms, the formulas
above in numpy) and its registration are in the sibling ``sigmoid_ring_cost``.
"""

from __future__ import annotations

import torch

from profiling.losses import blocks, ring
from profiling.losses.base import RingLoss, first_order_only
from profiling.losses.precision import autocast_off, compute_dtype, matmul_dtype, operand


def _add_(received: torch.Tensor, contribution: torch.Tensor) -> torch.Tensor:
    return received.add_(contribution)


class _SigmoidRingFunction(torch.autograd.Function):
    @staticmethod
    @autocast_off
    def forward(ctx, x, y, scale, bias, wire, transport, chains, tile, overlap, hide, want_grad):
        ctx.dtypes = (x.dtype, y.dtype, scale.dtype, bias.dtype)
        ctx.save_for_backward(x, y)  # the caller's: no copy is kept for the second trip
        cdt, mdt = compute_dtype(wire), matmul_dtype(wire, x.device)
        b = x.shape[0]
        xm = x.to(wire).to(mdt)  # the images as the matmuls take them; texts: per tile
        to_operand = operand(wire, x.device)
        sums = torch.zeros(2, dtype=cdt, device=x.device)  # loss, dβ
        dx = torch.zeros(x.shape, dtype=cdt, device=x.device) if want_grad else None

        def visit(payload, owner, dy, fresh):
            if dy is not None and fresh:
                dy.zero_()
            diag = 0 if owner == transport.rank else None
            blocks.sigmoid_block(
                xm,
                payload[0],
                scale,
                bias,
                diag=diag,
                tile=tile,
                dx=dx,
                dy=dy,
                sums=sums,
                operand=to_operand,
            )

        dy = ring.ring_pass(
            transport,
            [y.to(wire)],  # the texts travel in the wire dtype
            chains,
            visit,
            new_accumulator=(lambda: torch.empty_like(dx)) if want_grad else None,
            overlap=overlap,
            label="sigmoid",
            hide_accumulator=hide,
            combine=_add_,
            home=_own_texts(y, wire),
        )
        if want_grad:
            del visit
            dt = blocks.dot(xm.to(cdt), dx) / b  # Σ G⊙(x·yᵀ) = ⟨x, Σ G·y⟩ (``blocks``)
            coef = scale / b
            ctx.grads = (dx.mul_(coef), dy.mul_(coef), dt, sums[1] / b)
            ctx.setup = (
                wire,
                scale.detach(),
                bias.detach(),
                transport,
                chains,
                tile,
                overlap,
                hide,
            )
        return sums[0] / b

    @staticmethod
    @first_order_only
    @autocast_off
    def backward(ctx, grad_loss):
        dx, dy, dt, dbias = ctx.grads
        del ctx.grads
        transport = ctx.setup[3]
        if _uniform_upstream(transport, grad_loss):
            dy = grad_loss * dy
        else:
            del dy
            x, y = ctx.saved_tensors
            dy = _exact_text_gradients(x, y, grad_loss, *ctx.setup)
        gx, gy, gt, gb = (
            g.to(dtype)
            for g, dtype in zip(
                (grad_loss * dx, dy, grad_loss * dt, grad_loss * dbias), ctx.dtypes, strict=True
            )
        )
        return gx, gy, gt, gb, None, None, None, None, None, None, None


def _uniform_upstream(transport, grad_loss: torch.Tensor) -> bool:
    """Whether every rank backpropagates the same scalar (all-gather of W scalars)."""
    if transport.world_size == 1:
        return True
    every = transport.all_gather(grad_loss.reshape(1), "upstream")
    return bool((every == every[0]).all())  # on CUDA: one host synchronisation


def _exact_text_gradients(x, y, grad_loss, wire, t, beta, transport, chains, tile, overlap, hide):
    """The second trip: ``dy`` with each block scaled by its computing rank's upstream."""
    cdt, mdt = compute_dtype(wire), matmul_dtype(wire, x.device)
    xm = x.to(wire).to(mdt)  # the forward's rounding, redone
    to_operand = operand(wire, x.device)
    coef = grad_loss * t / x.shape[0]
    unused = torch.zeros(2, dtype=cdt, device=x.device)

    def visit(payload, owner, dy, fresh):
        if fresh:
            dy.zero_()
        diag = 0 if owner == transport.rank else None
        blocks.sigmoid_block(
            xm,
            payload[0],
            t,
            beta,
            diag=diag,
            tile=tile,
            dx=None,
            dy=dy,
            sums=unused,
            g_scale=coef,
            operand=to_operand,
        )

    return ring.ring_pass(
        transport,
        [y.to(wire)],
        chains,
        visit,
        new_accumulator=lambda: torch.empty(x.shape, dtype=cdt, device=x.device),
        overlap=overlap,
        label="sigmoid.bwd",
        hide_accumulator=hide,
        combine=_add_,
        home=_own_texts(y, wire),
    )


def _own_texts(y: torch.Tensor, wire: torch.dtype):
    """``ring_pass``'s ``home`` for texts sent as a rounded copy (autocast): the own block
    reads the caller's texts, rounded tile by tile, and the copy's buffer is the ring's
    to reuse; None where the caller's texts travel as they are."""
    return None if y.dtype == wire else (lambda: [y])


class SigmoidRingLoss(RingLoss):
    """SigLIP loss by a ring of texts; one direction (``chains=ring.one_way``)."""

    kind = "sigmoid"
    chains = staticmethod(ring.one_way)

    def forward(self, image_features, text_features, logit_scale, logit_bias=None):
        inputs, transport, want_grad, wire = self.prepare(
            image_features, text_features, logit_scale, logit_bias
        )
        chains = self.chains(transport.world_size)
        return self.run_function(
            _SigmoidRingFunction,
            *inputs,
            wire,
            transport,
            chains,
            self.tile_for(image_features),
            self.overlap,
            self.hide_accumulator_for(image_features),
            want_grad,
        )


# -- cost description -------------------------------------------------------------------
