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

Host synchronisations. :data:`HOST_SYNCS` is the inventory of every place a training
step (forward and backward) of a registered method reads a device value on the host,
i.e. every host synchronisation it makes on CUDA: the cross-rank check's read of the
gathered fields, and the sigmoid rings' read of whether the ranks' upstream scalars agree
(which picks the exact second trip; the second trip itself reads nothing). Everything else
stays on the device: the scale and bias are 0-d tensors throughout, a Python-float scale
or bias is made on the device by a fill (no copy from the host), and the check's own
fields go to the device by a non-blocking copy from pinned memory. :func:`host_syncs`
says which entries a step makes; ``tests/test_host_syncs.py`` counts them (patched
tensor reads on CPU, ``torch.cuda.set_sync_debug_mode`` on CUDA) and ``sigsim gpu-check``
counts them on the GPU (``profiling.host_syncs``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class HostSync:
    """One place where a training step reads a device value on the host (on CUDA: one
    host synchronisation each time the step passes it)."""

    path: str
    """The file making the read, relative to the repository root."""
    function: str
    """The function making the read (its ``co_name``)."""
    purpose: str
    """Why the host must know the value."""
    methods: tuple[str, ...] | None
    """The registered methods that make it; None: every method."""
    phase: str
    """"forward" or "backward"."""
    min_world: int
    """Made only at W >= this."""
    needs_check_ranks: bool
    """Made only with ``check_ranks=True``."""
    needs_backward: bool
    """Made only when the step runs backward."""


HOST_SYNCS: tuple[HostSync, ...] = (
    HostSync(
        path="profiling/losses/checks.py",
        function="check_ranks",
        purpose="the cross-rank check reads the all-gathered fields (b, d, dtype, device, "
        "grad mode, program) to raise the same error on every rank",
        methods=None,
        phase="forward",
        min_world=2,
        needs_check_ranks=True,
        needs_backward=False,
    ),
    HostSync(
        path="profiling/losses/sigmoid_ring.py",
        function="_uniform_upstream",
        purpose="the sigmoid rings' backward reads whether every rank's upstream scalar is "
        "the same, to choose between scaling dy (one trip) and the exact second trip",
        methods=("sigmoid-ring", "sigmoid-ring-bidir"),
        phase="backward",
        min_world=2,
        needs_check_ranks=False,
        needs_backward=True,
    ),
)
"""Every host synchronisation of a training step of a registered method, in step order;
nothing else in ``profiling/losses`` reads a device value on the host."""


def host_syncs(
    method: str, *, world: int, check_ranks: bool = True, backward: bool = True
) -> tuple[HostSync, ...]:
    """The entries of :data:`HOST_SYNCS` one step of ``method`` makes, once each, in order
    (the same whether the ranks' upstream scalars agree or the second trip runs)."""
    from profiling.losses.methods import METHODS

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; registered: {', '.join(METHODS)}")
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be a positive int, got {world!r}")
    return tuple(
        s
        for s in HOST_SYNCS
        if (s.methods is None or method in s.methods)
        and world >= s.min_world
        and (check_ranks or not s.needs_check_ranks)
        and (backward or not s.needs_backward)
    )


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
        # a fill on the device: torch.tensor(value, device=cuda) would copy from the host
        # and synchronise
        return torch.full((), float(value), dtype=target, device=like.device)
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
    fields = [
        features.shape[0],
        features.shape[1],
        _DTYPE_CODE[wire],
        int(features.is_cuda),
        int(want_grad),
        zlib.crc32(program.encode()),
    ]
    mine = torch.tensor([fields], dtype=torch.int64)
    if features.is_cuda:  # pinned and non-blocking: the copy to the device does not wait
        mine = mine.pin_memory().to(features.device, non_blocking=True)
    elif features.device != mine.device:
        mine = mine.to(features.device)
    # The one read on the host (HOST_SYNCS): every comparison below is on Python ints.
    every = transport.all_gather(mine, RANK_CHECK_LABEL).tolist()
    differ = [
        name for i, name in enumerate(RANK_CHECK_FIELDS) if any(v[i] != every[0][i] for v in every)
    ]
    if not differ:
        return
    rows = ", ".join(
        f"rank {r}: b={v[0]} d={v[1]} {SUPPORTED_DTYPES[v[2]]}"
        f" {'cuda' if v[3] else 'cpu'} grad={'on' if v[4] else 'off'} loss#{v[5]:08x}"
        for r, v in enumerate(every)
    )
    raise ValueError(
        f"ranks disagree on the {', '.join(differ)} ({rows}; this rank {transport.rank} "
        f"runs {program})"
    )
