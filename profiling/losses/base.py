"""What every loss module shares: its options and the checks that open each forward.

A strategy subclasses :class:`DistributedLoss` (all-gather methods) or :class:`RingLoss`
(ring methods, which add ``overlap`` and ``tile``) and writes only its
``torch.autograd.Function``; ``prepare`` does the local checks, picks the transport,
runs the cross-rank check and decides whether gradients are wanted.
"""

from __future__ import annotations

import torch

from profiling import comm
from profiling.losses.checks import as_scalar, check_bias, check_features, check_ranks


class DistributedLoss(torch.nn.Module):
    kind: str
    """"sigmoid" or "softmax"."""

    def __init__(self, *, check_ranks: bool = True):
        super().__init__()
        if not isinstance(check_ranks, bool):
            raise TypeError(f"check_ranks must be True or False, got {check_ranks!r}")
        self.check_ranks = check_ranks

    def prepare(self, image_features, text_features, logit_scale, logit_bias):
        """Check the inputs; return ``(inputs, transport, want_grad)``.

        ``inputs`` are the features, the scale and (sigmoid) the bias as 0-d tensors in
        the block-math dtype, still linked to the caller's tensors for autograd.
        """
        check_bias(self.kind, logit_bias)
        check_features(image_features, text_features)
        inputs = (
            image_features,
            text_features,
            as_scalar("logit_scale", logit_scale, image_features),
        )
        if self.kind == "sigmoid":
            inputs += (as_scalar("logit_bias", logit_bias, image_features),)
        transport = comm.current()
        if self.check_ranks:
            check_ranks(transport, image_features)
        want_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
        return inputs, transport, want_grad


class RingLoss(DistributedLoss):
    def __init__(self, *, overlap: bool = True, tile: int | None = None, check_ranks: bool = True):
        super().__init__(check_ranks=check_ranks)
        if not isinstance(overlap, bool):
            raise TypeError(f"overlap must be True or False, got {overlap!r}")
        if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 1):
            raise ValueError(f"tile must be a positive int or None, got {tile!r}")
        self.overlap = overlap
        self.tile = tile
