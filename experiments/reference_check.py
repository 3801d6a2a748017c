"""Compare one rank's loss and gradients with ``profiling.losses.reference_loss``.

The contract of ``profiling.losses`` (which open_clip's losses also meet, see
``experiments.open_clip_peers``): the mean over ranks of the loss equals the reference
loss over the global batch; a rank's feature gradients equal ``W ×`` the reference
gradients of its rows; the mean over ranks of the ``logit_scale`` / ``logit_bias``
gradients equals the reference's. The reference runs in fp64 (on the CPU unless told
otherwise) over every rank's inputs, rebuilt from their seeds with
``profiling.measure.make_inputs``; under autocast, on those inputs rounded to the autocast
dtype first, as autocast rounds a matmul's operands, so that what is compared is what a
contender does beyond autocast's own rounding (open_clip: its half-precision logits).

Errors are relative to the reference's scale: ``max |a − ref| / max |ref|`` per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from profiling.losses import reference_loss
from profiling.losses.precision import TORCH_DTYPES
from profiling.measure import PointConfig, make_inputs

TOLERANCE = {"fp64": 1e-9, "fp32": 1e-4, "bf16": 3e-2, "fp16": 5e-3}
"""Largest relative error that passes, per input dtype."""


@dataclass(slots=True)
class RankResult:
    """What one rank contributes: its loss and gradients (any device)."""

    rank: int
    loss: torch.Tensor
    image_grad: torch.Tensor
    text_grad: torch.Tensor
    log_scale_grad: torch.Tensor
    bias_grad: torch.Tensor | None


def relative_error(mine, ref: torch.Tensor) -> float:
    ref = ref.detach().double().cpu()
    mine = torch.as_tensor(mine).detach().double().cpu()
    return float((mine - ref).abs().max()) / max(float(ref.abs().max()), 1e-30)


def reference_errors(
    kind: str,
    config: PointConfig,
    ranks: list[RankResult],
    *,
    loss_mean=None,
    log_scale_grad_mean=None,
    bias_grad_mean=None,
    autocast: str | None = None,
    device=None,
) -> dict:
    """Relative errors of the given ranks against the reference.

    ``ranks`` may hold every rank (the means are taken here) or only some (pass the
    means over all ranks, computed by the caller with a collective). ``autocast``: the
    dtype the contenders ran under (the caller runs this inside the same autocast).
    ``device``: where the reference runs (default the CPU; a GPU's is far faster at
    the speed issue's ``b = 16,384``).
    """
    world = config.world
    where = torch.device("cpu") if device is None else torch.device(device)
    everyone = [make_inputs(config, r, where) for r in range(world)]
    x, y = (torch.cat([getattr(i, name).detach() for i in everyone]) for name in ("image", "text"))
    if autocast is not None:  # the features as autocast hands them to a matmul
        x, y = (v.to(TORCH_DTYPES[autocast]) for v in (x, y))
    x, y = (v.double().requires_grad_(True) for v in (x, y))
    log_scale = everyone[0].log_scale.detach().double().requires_grad_(True)
    bias = everyone[0].bias
    bias = None if bias is None else bias.detach().double().requires_grad_(True)
    ref = reference_loss(kind, x, y, log_scale.exp(), bias)
    ref.backward()

    def mean(name):
        return sum(getattr(r, name).detach().double().cpu() for r in ranks) / len(ranks)

    if loss_mean is None:
        if len(ranks) != world:
            raise ValueError("without the means, pass every rank's result")
        loss_mean, log_scale_grad_mean = mean("loss"), mean("log_scale_grad")
        bias_grad_mean = mean("bias_grad") if bias is not None else None
    errors = {"loss": relative_error(loss_mean, ref)}
    b = config.batch
    for r in ranks:
        rows = slice(r.rank * b, (r.rank + 1) * b)
        errors[f"image_grad_rank{r.rank}"] = relative_error(r.image_grad, world * x.grad[rows])
        errors[f"text_grad_rank{r.rank}"] = relative_error(r.text_grad, world * y.grad[rows])
    errors["log_scale_grad"] = relative_error(log_scale_grad_mean, log_scale.grad)
    if bias is not None:
        errors["bias_grad"] = relative_error(bias_grad_mean, bias.grad)
    # under autocast the reference rounds the features as autocast does (``precision``);
    # what a contender rounds beyond that (open_clip: its half logits) needs the half row
    tolerance = TOLERANCE[autocast or config.dtype]
    return {
        "loss": float(torch.as_tensor(loss_mean)),
        "reference_loss": float(ref.detach()),
        "rel_errors": errors,
        "max_rel_error": max(errors.values()),
        "tolerance": tolerance,
        "passed": all(e <= tolerance for e in errors.values()),
    }
