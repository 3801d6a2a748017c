"""Drop-in replacements for open_clip 3.3's ``ClipLoss`` and ``SigLipLoss``.

Same constructor arguments, same ``forward`` signature, same return value (a tensor, or
``{"contrastive_loss": loss}`` with ``output_dict=True``), so an open_clip training
script swaps one import::

    from profiling.losses.open_clip_compat import ClipLoss, SigLipLoss

``logit_scale`` is used as open_clip uses it: the multiplier ``t`` itself, which
open_clip's models return already exponentiated (``"logit_scale": self.logit_scale.exp()``
in ``open_clip/model.py``) and ``open_clip_train/train.py`` passes on unchanged
(``loss(**model_out, output_dict=True)``); ours take ``t`` too, so it passes through.

``world_size == 1``: open_clip computes the local loss and never touches
``torch.distributed``; so does the adapter, with :func:`profiling.losses.reference_loss`.

``world_size > 1``, on the default process group (open_clip's), whose rank and size must
equal ``rank`` and ``world_size`` (checked at construction when a group exists, and at
every forward). With ``L_r`` the rank's share of the global loss (its ``b`` rows against
all ``N`` columns, divided by ``b``) and ``Lg = 1/W Σ_r L_r`` the reference loss:

* ``SigLipLoss(dist_impl)``: ``"bidir"`` (open_clip's default, also for ``None``) →
  ``sigmoid-ring-bidir``, ``"shift"`` → ``sigmoid-ring``, ``"gather"`` and ``"reduce"``
  → ``sigmoid-allgather``. Per rank, like open_clip: loss ``L_r``, image gradient
  ``∂L_r/∂x_r``, text gradient ``Σ_q ∂L_q/∂y_r``, scale and bias gradients
  ``∂L_r/∂t``, ``∂L_r/∂β``. ``logit_bias=None`` means a zero bias, as in open_clip.
* ``ClipLoss(local_loss=True, gather_with_grad=True)`` → ``softmax-allgather``: loss
  ``L_r``, feature gradients ``Σ_q ∂L_q/∂(x_r, y_r)``, scale gradient ``∂L_r/∂t``, per
  rank. With ``method="softmax-ring"`` (memory flat in W) loss and feature gradients are
  the same per rank, but the ring credits each block's share of ``∂/∂t`` to the rank that
  computed it, so only the mean over ranks of the scale gradient equals open_clip's
  (which is what DDP applies).
* ``ClipLoss(local_loss=False, gather_with_grad=True)``: open_clip computes the whole
  ``N×N`` loss on every rank, so every rank returns ``Lg`` and gets scale gradient
  ``∂Lg/∂t``. The adapter runs the method above and all-gathers the ``W`` scalars ``L_r``
  (forward: their mean; backward: the mean of the upstream gradients), and routes
  ``logit_scale`` through an identity whose backward averages its gradient over ranks:
  per rank equal to open_clip for either method, for three more all-gathers of one
  scalar (one in forward, two in backward: ``3·(W−1)`` scalars sent per rank, counted
  under ``all_gather:open_clip.*``). Both backwards are collectives, so every rank must
  call ``backward`` (as in DDP); second-order gradients raise.

Refused at construction, each with a one-line error naming the alternative:
``gather_with_grad=False`` at ``world_size > 1`` (open_clip then drops the other ranks'
gradient paths, so its gradients are not those of its loss), ``use_horovod=True`` at
``world_size > 1`` (no ``torch.distributed`` group), and a ``rank`` / ``world_size``
that disagree with each other or with the process group. ``cache_labels`` changes
nothing here (no label tensor is built) and is accepted.

Precision: for bf16/fp16 features ours runs the block math in fp32 and returns an fp32
loss, where open_clip computes in the feature dtype; equal to rounding in fp32/fp64.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from profiling import comm
from profiling.losses import build_loss, reference_loss

SIGLIP_METHODS: dict[str, str] = {
    "bidir": "sigmoid-ring-bidir",
    "shift": "sigmoid-ring",
    "gather": "sigmoid-allgather",
    "reduce": "sigmoid-allgather",
}
"""open_clip ``SigLipLoss(dist_impl=...)`` → our method (``None`` means ``"bidir"``)."""
CLIP_METHODS: tuple[str, ...] = ("softmax-allgather", "softmax-ring")
"""Methods ``ClipLoss(method=...)`` accepts; the first is the default."""


def _check_world(cls: str, rank, world_size) -> None:
    for name, value in (("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{cls}: {name} must be an int, got {value!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"{cls}: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
        )
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        _check_group(cls, rank, world_size, dist.get_rank(), dist.get_world_size())


def _check_group(cls: str, rank: int, world_size: int, group_rank: int, group_size: int) -> None:
    if (rank, world_size) != (group_rank, group_size):
        raise ValueError(
            f"{cls}(rank={rank}, world_size={world_size}) disagrees with the process group "
            f"(rank {group_rank} of {group_size}); pass rank=torch.distributed.get_rank(), "
            f"world_size=torch.distributed.get_world_size()"
        )


def _transport(cls: str, rank: int, world_size: int) -> comm.Transport:
    transport = comm.current()
    _check_group(cls, rank, world_size, transport.rank, transport.world_size)
    return transport


class _MeanOverRanks(torch.autograd.Function):
    """``1/W Σ_r v_r`` on every rank; backward: the mean of the ranks' upstream gradients."""

    @staticmethod
    def forward(ctx, value, transport):
        ctx.transport = transport
        gathered = transport.all_gather(value.detach().reshape(1), "open_clip.loss_mean")
        return gathered.mean().reshape(value.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        gathered = ctx.transport.all_gather(grad.reshape(1), "open_clip.loss_mean_grad")
        return gathered.mean().reshape(grad.shape), None


class _GradMeanOverRanks(torch.autograd.Function):
    """Identity; backward: the mean over ranks of the gradient (``∂Lg/∂t`` per rank)."""

    @staticmethod
    def forward(ctx, value, transport):
        ctx.transport = transport
        return value.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        gathered = ctx.transport.all_gather(grad.reshape(1), "open_clip.scale_grad_mean")
        return gathered.mean().reshape(grad.shape), None


def _output(loss, output_dict: bool):
    return {"contrastive_loss": loss} if output_dict else loss


class ClipLoss(torch.nn.Module):
    """open_clip's ``ClipLoss``; ``method`` (keyword only) picks the softmax method."""

    def __init__(
        self,
        local_loss=False,
        gather_with_grad=False,
        cache_labels=False,
        rank=0,
        world_size=1,
        use_horovod=False,
        *,
        method: str = CLIP_METHODS[0],
    ):
        super().__init__()
        _check_world("ClipLoss", rank, world_size)
        if method not in CLIP_METHODS:
            raise ValueError(
                f"ClipLoss: method must be one of {', '.join(CLIP_METHODS)}, got {method!r}"
            )
        if world_size > 1 and use_horovod:
            raise ValueError(
                "ClipLoss(use_horovod=True) is not supported: horovod has no torch.distributed "
                "process group; launch with torchrun and pass use_horovod=False"
            )
        if world_size > 1 and not gather_with_grad:
            raise ValueError(
                "ClipLoss(gather_with_grad=False) is not reproduced: its gradients leave out the "
                "other ranks' paths by design; pass gather_with_grad=True (same loss, exact gradients)"
            )
        self.local_loss = bool(local_loss)
        self.gather_with_grad = bool(gather_with_grad)
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.use_horovod = use_horovod
        self.method = method
        self.loss = build_loss(method) if world_size > 1 else None

    def forward(
        self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False
    ):
        if logit_bias is not None:
            raise ValueError(
                "ClipLoss: logit_bias adds one constant to every logit, which the softmax "
                "ignores; pass logit_bias=None (or use SigLipLoss for a biased sigmoid loss)"
            )
        if self.world_size == 1:
            return _output(
                reference_loss("softmax", image_features, text_features, logit_scale), output_dict
            )
        transport = _transport("ClipLoss", self.rank, self.world_size)
        if self.local_loss:
            return _output(self.loss(image_features, text_features, logit_scale), output_dict)
        if not isinstance(logit_scale, torch.Tensor):
            # a fill on the device, not a blocking copy from the host
            logit_scale = torch.full((), float(logit_scale), device=image_features.device)
        scale = _GradMeanOverRanks.apply(logit_scale, transport)
        local = self.loss(image_features, text_features, scale)
        return _output(_MeanOverRanks.apply(local, transport), output_dict)


class SigLipLoss(torch.nn.Module):
    """open_clip's ``SigLipLoss``; ``dist_impl`` picks the method (:data:`SIGLIP_METHODS`)."""

    def __init__(self, cache_labels=False, rank=0, world_size=1, dist_impl=None):
        super().__init__()
        _check_world("SigLipLoss", rank, world_size)
        dist_impl = dist_impl or "bidir"
        if dist_impl not in SIGLIP_METHODS:
            raise ValueError(
                f"SigLipLoss: dist_impl must be one of {', '.join(SIGLIP_METHODS)} or None, "
                f"got {dist_impl!r}"
            )
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.dist_impl = dist_impl
        self.method = SIGLIP_METHODS[dist_impl]
        self.loss = build_loss(self.method) if world_size > 1 else None

    def forward(self, image_features, text_features, logit_scale, logit_bias, output_dict=False):
        bias = 0.0 if logit_bias is None else logit_bias
        if self.world_size == 1:
            loss = reference_loss("sigmoid", image_features, text_features, logit_scale, bias)
            return _output(loss, output_dict)
        _transport("SigLipLoss", self.rank, self.world_size)
        return _output(self.loss(image_features, text_features, logit_scale, bias), output_dict)


__all__ = ["CLIP_METHODS", "SIGLIP_METHODS", "ClipLoss", "SigLipLoss"]
