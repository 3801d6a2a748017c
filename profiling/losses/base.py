"""What every loss module shares: its options and the checks that open each forward.

A strategy subclasses :class:`DistributedLoss` (all-gather methods) or :class:`RingLoss`
(ring methods, which add ``overlap``, ``tile`` and ``hide_accumulator``) and writes only its
``torch.autograd.Function``; ``prepare`` does the local checks, applies the dtype policy
(``precision``: the autocast cast), picks the transport of the loss's process group,
runs the cross-rank check and decides whether gradients are wanted. The Function is then
called through :meth:`DistributedLoss.run_function`, which switches autocast off around it.

``group``: the ranks the loss spans, a process group or a 1-D ``DeviceMesh`` (e.g. the
data-parallel dimension of a larger job); None means the default group.
"""

from __future__ import annotations

import functools

import torch

from profiling import comm
from profiling.losses.checks import as_scalar, check_bias, check_features, check_ranks
from profiling.losses.precision import wire_dtype
from profiling.losses.registry import default_hide_accumulator, default_tile


def first_order_only(backward):
    """Wrap an autograd Function's ``backward``: with ``create_graph=True`` (grad mode on
    inside backward) raise, instead of returning gradients without a graph whose second
    derivatives would silently be zero."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "the distributed losses cannot differentiate twice: backward with "
                "create_graph=True (double backward, gradient penalties) is not supported; "
                "use reference_loss on a gathered batch for second-order terms"
            )
        return backward(ctx, *grads)

    return wrapper


class DistributedLoss(torch.nn.Module):
    kind: str
    """"sigmoid" or "softmax"."""

    def __init__(self, *, check_ranks: bool = True, group=None):
        super().__init__()
        if not isinstance(check_ranks, bool):
            raise TypeError(f"check_ranks must be True or False, got {check_ranks!r}")
        self.check_ranks = check_ranks
        self.group = group

    def program(self) -> str:
        """The loss and its options, as the cross-rank check compares them."""
        return type(self).__name__ + repr(sorted(self.options().items()))

    def options(self) -> dict:
        return {"check_ranks": self.check_ranks}

    def prepare(self, image_features, text_features, logit_scale, logit_bias):
        """Check the inputs; return ``(inputs, transport, want_grad, wire)``.

        ``inputs`` are the features, the scale and (sigmoid) the bias as 0-d tensors in
        the block-math dtype, still linked to the caller's tensors for autograd; ``wire``
        is the dtype the Function rounds the features to (``precision.wire_dtype``).
        """
        check_bias(self.kind, logit_bias)
        check_features(image_features, text_features)
        wire = wire_dtype(image_features)
        inputs = (
            image_features,
            text_features,
            as_scalar("logit_scale", logit_scale, image_features),
        )
        if self.kind == "sigmoid":
            inputs += (as_scalar("logit_bias", logit_bias, image_features),)
        transport = comm.current(self.group)
        want_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
        if self.check_ranks:
            check_ranks(
                transport, image_features, wire, want_grad=want_grad, program=self.program()
            )
        return inputs, transport, want_grad, wire

    @staticmethod
    def run_function(function: type[torch.autograd.Function], *args):
        """``function.apply(*args)`` with autocast off (the Function applies the policy)."""
        with torch.autocast(args[0].device.type, enabled=False):
            return function.apply(*args)


class RingLoss(DistributedLoss):
    def __init__(
        self,
        *,
        overlap: bool = True,
        tile: int | None = None,
        hide_accumulator: bool | None = None,
        check_ranks: bool = True,
        group=None,
    ):
        super().__init__(check_ranks=check_ranks, group=group)
        if not isinstance(overlap, bool):
            raise TypeError(f"overlap must be True or False, got {overlap!r}")
        if hide_accumulator is not None and not isinstance(hide_accumulator, bool):
            raise TypeError(
                f"hide_accumulator must be True, False or None, got {hide_accumulator!r}"
            )
        if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 1):
            raise ValueError(f"tile must be a positive int or None, got {tile!r}")
        self.overlap = overlap
        self.tile = tile
        self.hide_accumulator = hide_accumulator

    def options(self) -> dict:
        return {
            **super().options(),
            "overlap": self.overlap,
            "tile": self.tile,
            "hide_accumulator": self.hide_accumulator,
        }

    def hide_accumulator_for(self, features: torch.Tensor) -> bool:
        """Whether the ring hides the accumulator transfer (``ring``) for these features:
        the option, else ``registry.default_hide_accumulator`` of their device (True on
        CUDA, False on CPU)."""
        if self.hide_accumulator is not None:
            return self.hide_accumulator
        return default_hide_accumulator(features.device.type)

    def tile_for(self, features: torch.Tensor) -> int:
        """The tile side for these features: the option, else ``registry.default_tile``."""
        if self.tile is not None:
            return self.tile
        b, d = features.shape
        return int(default_tile(b, d, features.device.type))
