"""Single-process reference losses over the global batch: the ground truth for tests.

Written the plain way, with autograd, over the full ``N×N`` logit matrix; it is what
every distributed method must equal (loss: mean over ranks; gradients: see the contract
in ``profiling.losses``). Half inputs are computed in fp32, like the methods.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from profiling.losses.checks import as_scalar, check_bias, check_features, compute_dtype


def reference_loss(kind, image_features, text_features, logit_scale, logit_bias=None):
    """``kind`` "sigmoid": SigLIP, ``-1/N Σ_ij log σ(z_ij (t x_i·y_j + β))``;
    "softmax": CLIP, the mean of the image→text and text→image cross-entropies."""
    if kind not in ("sigmoid", "softmax"):
        raise ValueError(f"unknown loss kind {kind!r}; known: sigmoid, softmax")
    check_bias(kind, logit_bias)
    check_features(image_features, text_features)
    cdt = compute_dtype(image_features.dtype)
    x, y = image_features.to(cdt), text_features.to(cdt)
    t = as_scalar("logit_scale", logit_scale, image_features)
    logits = t * (x @ y.T)
    n = x.shape[0]
    if kind == "sigmoid":
        logits = logits + as_scalar("logit_bias", logit_bias, image_features)
        z = 2 * torch.eye(n, dtype=cdt, device=x.device) - 1
        return -F.logsigmoid(z * logits).sum() / n
    labels = torch.arange(n, device=x.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
