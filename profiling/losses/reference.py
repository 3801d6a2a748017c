"""Single-process reference losses over the global batch: the ground truth for tests.

Written the plain way, with autograd, over the full ``N×N`` logit matrix; it is what
every distributed method must equal (loss: mean over ranks; gradients: see the contract
in ``profiling.losses``). It follows the methods' dtype policy (``precision``): half
inputs are computed in fp32, and inside ``torch.autocast`` the features are cast to
autocast's dtype first and the rest runs with autocast off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from profiling.losses.checks import as_scalar, check_bias, check_features
from profiling.losses.precision import cast_for_autocast, compute_dtype


def reference_loss(kind, image_features, text_features, logit_scale, logit_bias=None):
    """``kind`` "sigmoid": SigLIP, ``-1/N Σ_ij log σ(z_ij (t x_i·y_j + β))``;
    "softmax": CLIP, the mean of the image→text and text→image cross-entropies."""
    return reference_rank_losses(kind, image_features, text_features, logit_scale, logit_bias)[0]


def reference_rank_losses(kind, image_features, text_features, logit_scale, logit_bias, world=1):
    """Each rank's loss ``L_r`` (rank ``r`` holding rows ``r·b … (r+1)·b − 1``) as a
    ``(world,)`` tensor: its images' rows and, for softmax, its texts' columns. Their
    mean is :func:`reference_loss`; ``Σ_r u_r·L_r`` is what a distributed backward with
    per-rank upstream scalars ``u_r`` differentiates."""
    if kind not in ("sigmoid", "softmax"):
        raise ValueError(f"unknown loss kind {kind!r}; known: sigmoid, softmax")
    check_bias(kind, logit_bias)
    check_features(image_features, text_features)
    n = image_features.shape[0]
    if isinstance(world, bool) or not isinstance(world, int) or world < 1 or n % world:
        raise ValueError(f"global batch {n} does not split into {world!r} equal ranks")
    x, y = cast_for_autocast(image_features), cast_for_autocast(text_features)
    with torch.autocast(x.device.type, enabled=False):
        per_row = _per_row_losses(kind, x, y, logit_scale, logit_bias)
    return per_row.reshape(world, n // world).mean(1)


def _per_row_losses(kind, image_features, text_features, logit_scale, logit_bias):
    """Row ``i``'s share: sigmoid ``Σ_j −log σ(z_ij·l_ij)``; softmax the mean of its
    image's row and its text's column cross-entropies."""
    cdt = compute_dtype(image_features.dtype)
    x, y = image_features.to(cdt), text_features.to(cdt)
    t = as_scalar("logit_scale", logit_scale, image_features)
    logits = t * (x @ y.T)
    if kind == "sigmoid":
        logits = logits + as_scalar("logit_bias", logit_bias, image_features)
        z = 2 * torch.eye(x.shape[0], dtype=cdt, device=x.device) - 1
        return -F.logsigmoid(z * logits).sum(1)
    positives = logits.diagonal()
    return (logits.logsumexp(1) + logits.logsumexp(0)) / 2 - positives
