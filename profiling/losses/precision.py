"""The dtype policy every loss follows, with or without ``torch.autocast``.

Three dtypes meet in a loss step:

* the *wire dtype* ``s`` (bytes per element): what the features are sent and computed
  from. It is the caller's dtype, except inside ``torch.autocast``, where fp32, fp16 and
  bf16 features are first rounded to autocast's dtype, exactly as autocast casts the
  operands of the ``x @ yᵀ`` it would run (fp64 is never cast). The rounding happens
  inside the loss's autograd Function, whose gradients are computed in the block-math
  dtype and returned in the caller's dtype: the straight-through derivative of the
  rounding, as autograd's own cast would give, without rounding the gradient itself to
  the half type;
* the *block-math dtype* ``c``: fp32 for half features, else the feature dtype. Every
  matmul, elementwise pass (softplus, sigmoid, exp, log-sum-exp) and accumulator
  (gradients, loss and scale sums, running log-sum-exps) runs in it. Matmul operands in
  the half type (tensor cores) are the speed issue's to add; until then a half feature
  is upcast once per block;
* the loss: always returned in the block-math dtype (fp32 for half features).

Inside a loss's autograd Function, autocast is switched off (:func:`autocast_off`) in
forward and backward alike, so the forward and the backward compute the same function
whether or not the caller's ``backward()`` runs inside an autocast region.

Tolerance this buys: under autocast the only rounding beyond fp32 arithmetic is the cast
of the features themselves, which the single-process reference sees too (it follows the
same policy), so a method matches the reference on the cast inputs to fp32 accuracy, in
its loss and its fp32 gradients alike.
"""

from __future__ import annotations

import functools

import torch

HALF_DTYPES = (torch.bfloat16, torch.float16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Block math runs in fp32 for half types, in the input dtype otherwise."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Autocast's dtype on ``device``'s type where autocast is on there, else None."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def wire_dtype(features: torch.Tensor) -> torch.dtype:
    """The dtype ``features`` travel in: autocast's where autocast would cast them."""
    target = autocast_dtype(features.device)
    if target is None or features.dtype == torch.float64:
        return features.dtype
    return target


def cast_for_autocast(features: torch.Tensor) -> torch.Tensor:
    """``features`` as autocast would hand them to a matmul (unchanged outside autocast)."""
    return features.to(wire_dtype(features))


def autocast_off(fn):
    """Run an autograd Function's ``forward``/``backward`` with autocast disabled on the
    device of its first tensor argument (so forward and backward see the same dtypes)."""

    @functools.wraps(fn)
    def wrapper(ctx, *args):
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        with torch.autocast(device.type, enabled=False):
            return fn(ctx, *args)

    return wrapper
