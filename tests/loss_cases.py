"""Test helper: run loss cases on a process group and compare with the reference.

Every case draws fresh global inputs from its own seed (the same on every rank), runs
one forward and backward of the method on this rank's rows, and compares with
``reference_loss`` over the global batch in fp64: the mean loss over ranks, each rank's
feature gradients against W × the reference gradients of its rows, and the mean over
ranks of the scale and bias gradients. It also returns the bytes ``profiling.comm``
counted and the live-tensor peak, for the traffic and memory tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from profiling import comm
from profiling.losses import build_loss, get_method, reference_loss
from profiling.losses.registry import TORCH_DTYPES, Shape
from profiling.memory import LiveTensorTracker

TOLERANCES = {  # (rtol, atol) against an fp64 reference on the same (rounded) inputs
    "fp64": (1e-9, 1e-11),
    "fp32": (2e-4, 2e-5),
    "bf16": (2e-2, 2e-3),
    "fp16": (5e-3, 5e-4),
}


@dataclass(frozen=True)
class Case:
    method: str
    world: int
    batch: int
    dim: int
    dtype: str = "fp64"
    options: tuple = ()
    upstream: float = 1.0
    seed: int = 0

    @property
    def name(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options)
        return (
            f"{self.method} W={self.world} b={self.batch} d={self.dim} {self.dtype} {opts}".strip()
        )


def global_inputs(case: Case):
    gen = torch.Generator().manual_seed(case.seed)
    n = case.world * case.batch
    x = torch.nn.functional.normalize(
        torch.randn(n, case.dim, generator=gen, dtype=torch.float64), dim=1
    )
    y = torch.nn.functional.normalize(
        torch.randn(n, case.dim, generator=gen, dtype=torch.float64), dim=1
    )
    dt = TORCH_DTYPES[case.dtype]
    scale = math.exp(math.log(10) + 0.5 * torch.randn(1, generator=gen).item())
    bias = -10 + 2 * torch.randn(1, generator=gen).item()
    return x.to(dt), y.to(dt), scale, bias


def _reference(kind, x, y, scale, bias, upstream):
    leaves = [x.double().requires_grad_(), y.double().requires_grad_()]
    t = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(bias, dtype=torch.float64, requires_grad=True) if kind == "sigmoid" else None
    loss = reference_loss(kind, *leaves, t, b)
    (loss * upstream).backward()
    return (
        loss.detach(),
        leaves[0].grad,
        leaves[1].grad,
        t.grad,
        (b.grad if b is not None else None),
    )


def check_case(case: Case, transport) -> dict:
    spec = get_method(case.method)
    rank, w, bsz = transport.rank, case.world, case.batch
    x_all, y_all, scale, bias = global_inputs(case)
    rows = slice(rank * bsz, (rank + 1) * bsz)
    x = x_all[rows].clone().requires_grad_()
    y = y_all[rows].clone().requires_grad_()
    dt = x.dtype if case.dtype == "fp64" else torch.float32
    t = torch.tensor(scale, dtype=dt, requires_grad=True)
    b = torch.tensor(bias, dtype=dt, requires_grad=True) if spec.kind == "sigmoid" else None
    loss_fn = build_loss(case.method, **dict(case.options))

    with (
        comm.use_transport(transport),
        comm.record(transport) as rec,
        LiveTensorTracker() as tracker,
    ):
        loss = loss_fn(x, y, t, b)
        (loss * case.upstream).backward()
    peak = tracker.peak_bytes

    ref_loss, gx, gy, gt, gb = _reference(spec.kind, x_all, y_all, scale, bias, case.upstream)
    group = getattr(transport, "group", None)
    stats = torch.stack(
        [loss.detach().double(), t.grad.double()] + ([b.grad.double()] if b is not None else [])
    )
    dist.all_reduce(stats, group=group)
    stats /= w
    rtol, atol = TOLERANCES[case.dtype]
    errors = []

    def close(what, got, want):
        try:
            torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol)
        except AssertionError as exc:
            errors.append(f"{case.name} rank {rank}: {what}: {str(exc).splitlines()[0:4]}")

    close("loss (mean over ranks)", stats[0], ref_loss)
    close("d logit_scale (mean over ranks)", stats[1], gt)
    if b is not None:
        close("d logit_bias (mean over ranks)", stats[2], gb)
    close("d image_features", x.grad, w * gx[rows])
    close("d text_features", y.grad, w * gy[rows])

    options = dict(case.options)
    shape = Shape.of(
        w,
        bsz,
        case.dim,
        case.dtype,
        tile=options.get("tile"),
        overlap=options.get("overlap", True),
        check_ranks=options.get("check_ranks", True),
    )
    predicted = {
        k: {m: int(v) for m, v in row.items()}
        for k, row in spec.schedule(shape).bytes_by_op().items()
    }
    predicted = {k: v for k, v in predicted.items() if v["messages"] or v["bytes_sent"]}
    measured = {
        k: {"bytes_sent": s.bytes_sent, "bytes_received": s.bytes_received, "messages": s.messages}
        for k, s in rec.ops.items()
        if s.messages or s.bytes_sent
    }
    return {
        "case": case,
        "rank": rank,
        "errors": errors,
        "bytes_sent": rec.bytes_sent,
        "bytes_received": rec.bytes_received,
        "measured_ops": measured,
        "predicted_ops": predicted,
        "peak_live_bytes": peak,
        "predicted_peak_bytes": int(sum(spec.memory_terms(shape).values())),
        "memory_terms": {k: int(v) for k, v in spec.memory_terms(shape).items()},
    }


def run_cases(rank: int, world: int, cases: list[Case]) -> list[dict]:
    """Worker: one subgroup per world size in ``cases``; ranks outside a case skip it."""
    from profiling.comm import TorchDistributedTransport

    sizes = sorted({c.world for c in cases})
    groups = {w: dist.new_group(list(range(w))) for w in sizes}
    results = []
    for case in cases:
        if rank < case.world:
            transport = TorchDistributedTransport(groups[case.world])
            results.append(check_case(case, transport))
    return results
