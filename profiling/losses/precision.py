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
* the *operand dtype* ``m`` of the block matmuls (:func:`matmul_dtype`): on CUDA the half
  wire dtype itself (tensor cores, fp32 accumulation), so half features are never copied
  to fp32 for a matmul; elsewhere the block-math dtype (a half feature is upcast once
  per block). CPUs with AMX or AVX-512 BF16 multiply bf16 natively too, but oneDNN then
  allocates packing scratch inside each matmul whose size follows its kernel choice, not
  a formula, so half operands on CPU are opt-in: ``SIGSIM_HALF_MATMUL=1`` (and ``=0``
  turns them off on CUDA);
* the *block-math dtype* ``c``: fp32 for half features, else the feature dtype. Every
  elementwise pass (softplus, sigmoid, exp, log-sum-exp) and accumulator (gradients,
  loss and scale sums, running log-sum-exps) runs in it; a half matmul's product is
  upcast to it before any elementwise work, and the logit gradient ``G`` is rounded to
  ``m`` only as the operand of the gradient matmuls;
* the loss: always returned in the block-math dtype (fp32 for half features).

Inside a loss's autograd Function, autocast is switched off (:func:`autocast_off`) in
forward and backward alike, so the forward and the backward compute the same function
whether or not the caller's ``backward()`` runs inside an autocast region.

Tolerance this buys. With fp32 operands, the only rounding beyond fp32 arithmetic is the
features' own, which the single-process reference sees too, so a method matches the
reference on the rounded features to fp32 accuracy. With half operands, each block's
logits carry one rounding of their product to the half type (relative ``2^-9`` for
bf16, ``2^-12`` for fp16, times ``t·|x·y| ≤ t``) and each gradient contribution one
rounding of ``G`` and of its product, so losses and gradients agree to about ``t·2^-8``
in bf16: the tests allow ``rtol 2e-2`` there (``tests/loss_cases.py``).
"""

from __future__ import annotations

import functools
import os

import torch

from profiling.losses.registry import DTYPES

TORCH_DTYPES: dict[str, torch.dtype] = dict(
    zip(DTYPES, (torch.float64, torch.float32, torch.bfloat16, torch.float16), strict=True)
)
"""The torch dtype of each name in :data:`profiling.losses.registry.DTYPES`."""
HALF_DTYPES = (torch.bfloat16, torch.float16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Block math runs in fp32 for half types, in the input dtype otherwise."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Autocast's dtype on ``device``'s type where autocast is on there, else None."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def half_matmul(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the block matmuls take ``dtype`` (bf16, fp16) operands on ``device``."""
    if dtype not in HALF_DTYPES:
        return False
    switch = os.environ.get("SIGSIM_HALF_MATMUL", "")
    if device.type == "cuda":
        return switch != "0"
    if device.type != "cpu" or switch != "1":
        return False
    cpu = torch.cpu
    probes = {
        torch.bfloat16: ("_is_amx_tile_supported", "_is_avx512_bf16_supported"),
        torch.float16: ("_is_amx_fp16_supported",),
    }[dtype]
    return any(getattr(cpu, probe, lambda: False)() for probe in probes)


def matmul_dtype(wire: torch.dtype, device: torch.device) -> torch.dtype:
    """The operand dtype of the block matmuls for features travelling in ``wire``."""
    return wire if half_matmul(wire, device) else compute_dtype(wire)


def operand(wire: torch.dtype, device: torch.device):
    """The conversion of a tile of features (the caller's or already in ``wire``) into a
    block-matmul operand: rounded to ``wire``, then cast to :func:`matmul_dtype`. Each
    ``.to`` that changes nothing returns its input, so no copy is made where none is
    needed; where two are, the rounded tile is transient."""
    mdt = matmul_dtype(wire, device)
    return lambda tile: tile.to(wire).to(mdt)


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
