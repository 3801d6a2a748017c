"""Distributed contrastive losses, registered by name.

Every method here drops into DDP training the way open_clip's losses do. With
L2-normalised features and ``b`` rows per rank:

* ``forward(image_features, text_features, logit_scale, logit_bias=None)`` returns this
  rank's loss; the mean over ranks equals :func:`reference_loss` over the global batch;
* after every rank calls ``backward``, each rank's feature gradients equal ``W ×`` the
  reference gradients of its rows, and the mean over ranks of the ``logit_scale`` and
  ``logit_bias`` gradients equals the reference's (DDP averages them).

``logit_scale`` is the multiplier ``t`` itself (pass ``log_t.exp()``), a float or a
one-element tensor; sigmoid methods need ``logit_bias``, softmax methods refuse one.

The contract holds for any per-rank upstream gradient (per-rank loss weights, ``loss * 0``
on a rank, uneven accumulation): rank ``r``'s feature gradients are ``Σ_q u_q ∂L_q/∂x_r``
for upstream scalars ``u_q``. Half-precision features and ``torch.autocast`` follow one
dtype policy (``precision``): features in the half type, block math in fp32, loss in
fp32. Double backward (``create_graph=True``) is not supported and raises.
"""

from __future__ import annotations

import torch

# Importing a strategy module registers it; the order here is the order in tables.
from profiling.losses import (  # noqa: F401
    sigmoid_allgather,
    sigmoid_ring,
    sigmoid_ring_bidir,
    softmax_allgather,
    softmax_ring,
)
from profiling.losses.reference import reference_loss, reference_rank_losses
from profiling.losses.registry import Method, Shape, get_method, registered

METHODS: tuple[str, ...] = registered()


def build_loss(method: str, *, group=None, **options) -> torch.nn.Module:
    """The loss module of a registered method, with options checked against its own.

    ``group``: the process group (or 1-D ``DeviceMesh``) the loss spans; None: the
    default group.
    """
    spec = get_method(method)
    if spec.module is None:
        raise ValueError(f"{method!r} is a cost description of {spec.describes}, not a loss to run")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(spec.options) or "none"
        raise ValueError(f"method {method!r} has no option {unknown[0]!r}; allowed: {allowed}")
    return spec.module(group=group, **options)


__all__ = [
    "METHODS",
    "Method",
    "Shape",
    "build_loss",
    "get_method",
    "reference_loss",
    "reference_rank_losses",
]
