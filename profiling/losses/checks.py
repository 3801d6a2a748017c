"""Input checks shared by every loss: clear errors instead of hangs or wrong numbers.

Local checks (shapes, dtypes, devices, scalar scale and bias) cost nothing. The
cross-rank check all-gathers :data:`RANK_CHECK_FIELDS` (six int64 per rank: b, d, the
feature dtype after any autocast cast, device type, whether gradients are wanted, and a
fingerprint of the loss's class and options) so that every rank sees the same mismatch
and raises the same error, instead of some ranks hanging in a collective whose sizes
disagree, or a ring whose ranks post different messages pairing them wrongly. It is on
by default and costs ``(W-1)·48`` bytes sent per forward, counted under
``all_gather:rank_check`` (on CUDA, one host synchronisation to read the result); turn it
off with ``check_ranks=False`` once a training loop is known to be consistent.
"""

from __future__ import annotations

import zlib

import torch

from profiling.comm import Transport
from profiling.losses.costs import (  # noqa: F401  (RANK_CHECK_BYTES: re-exported)
    RANK_CHECK_BYTES,
    RANK_CHECK_FIELDS,
    RANK_CHECK_LABEL,
)
from profiling.losses.precision import TORCH_DTYPES, compute_dtype

SUPPORTED_DTYPES = tuple(TORCH_DTYPES.values())
_DTYPE_CODE = {dt: i for i, dt in enumerate(SUPPORTED_DTYPES)}


def check_features(image_features, text_features) -> None:
    for name, t in (("image_features", image_features), ("text_features", text_features)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D (batch, dim), got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} has dtype {t.dtype}; supported: fp64, fp32, bf16, fp16")
    if image_features.shape != text_features.shape:
        raise ValueError(
            f"image_features {tuple(image_features.shape)} and text_features "
            f"{tuple(text_features.shape)} must have the same shape"
        )
    if image_features.dtype != text_features.dtype:
        raise TypeError(
            f"mismatched dtypes: image_features {image_features.dtype}, "
            f"text_features {text_features.dtype}"
        )
    if image_features.device != text_features.device:
        raise ValueError(
            f"mismatched devices: image_features on {image_features.device}, "
            f"text_features on {text_features.device}"
        )
    if image_features.shape[0] < 1:
        raise ValueError("the local batch is empty (0 rows)")


def as_scalar(name: str, value, like: torch.Tensor) -> torch.Tensor:
    """A 0-d tensor in the block-math dtype on ``like``'s device, keeping autograd links."""
    target = compute_dtype(like.dtype)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        if value.device != like.device:
            raise ValueError(
                f"mismatched devices: {name} on {value.device}, features on {like.device}"
            )
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
        return value.reshape(()).to(target)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=target, device=like.device)
    raise TypeError(f"{name} must be a float or a one-element tensor, got {type(value).__name__}")


def check_bias(kind: str, logit_bias) -> None:
    if kind == "sigmoid" and logit_bias is None:
        raise ValueError("the sigmoid loss needs logit_bias (SigLIP initialises it at -10)")
    if kind == "softmax" and logit_bias is not None:
        raise ValueError("the softmax loss takes no logit_bias: pass logit_bias=None")


def check_ranks(
    transport: Transport, features: torch.Tensor, wire: torch.dtype, *, want_grad, program: str
):
    """Raise the same error on every rank if ranks disagree on any of
    :data:`RANK_CHECK_FIELDS`. ``wire``: the dtype the features travel in (after any
    autocast cast); ``program`` names the loss and its options."""
    if transport.world_size == 1:
        return
    mine = torch.tensor(
        [
            features.shape[0],
            features.shape[1],
            _DTYPE_CODE[wire],
            features.is_cuda,
            want_grad,
            zlib.crc32(program.encode()),
        ],
        dtype=torch.int64,
        device=features.device,
    )
    every = transport.all_gather(mine.unsqueeze(0), RANK_CHECK_LABEL).cpu()
    differ = [
        name for i, name in enumerate(RANK_CHECK_FIELDS) if (every[:, i] != every[0, i]).any()
    ]
    if not differ:
        return
    rows = ", ".join(
        f"rank {r}: b={int(v[0])} d={int(v[1])} {SUPPORTED_DTYPES[int(v[2])]}"
        f" {'cuda' if v[3] else 'cpu'} grad={'on' if v[4] else 'off'} loss#{int(v[5]):08x}"
        for r, v in enumerate(every)
    )
    raise ValueError(
        f"ranks disagree on the {', '.join(differ)} ({rows}; this rank {transport.rank} "
        f"runs {program})"
    )
