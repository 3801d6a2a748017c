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
dtype policy (``precision``): features travel in the half type, matmul operands are half
on CUDA (fp32 on CPU unless ``SIGSIM_HALF_MATMUL=1``), elementwise math, accumulators and
the loss are fp32. ``SIGSIM_FUSED_BLOCKS=1`` computes the tiles of every method but
softmax-allgather with fused Triton kernels (``fused``; opt-in until a GPU has timed
them). Double backward (``create_graph=True``) is not supported and raises.

Importing this package imports nothing (PEP 562): the names below resolve on first use,
so ``profiling.losses.registry`` and the ``*_cost`` modules load without torch;
``build_loss`` and ``reference_loss`` import it.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "METHODS": "profiling.losses.methods",
    "build_loss": "profiling.losses.methods",
    "get_method": "profiling.losses.methods",
    "Method": "profiling.losses.registry",
    "Shape": "profiling.losses.registry",
    "reference_loss": "profiling.losses.reference",
    "reference_rank_losses": "profiling.losses.reference",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
