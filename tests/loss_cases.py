"""Test helper: run loss cases on a process group and compare with the reference.

Every case draws fresh global inputs from its own seed (the same on every rank), runs
one forward and backward of the method on this rank's rows (optionally inside
``torch.autocast``, optionally with a different upstream scalar ``u_r`` per rank), and
compares with the fp64 reference over the global batch on the same (autocast-cast)
inputs: each rank's loss against its reference share ``L_r``
(``reference_rank_losses``), each rank's feature gradients against those of
``Φ = Σ_r u_r·L_r`` for its rows, and the mean over ranks of the scale and bias
gradients against ``∂Φ/∂t / W``. With ``u_r = 1`` this is the contract in
``profiling.losses``. It also returns the bytes ``profiling.comm`` counted, and the
allocator peak and live-tensor peak of that forward and backward
(``profiling.memory``), for the traffic and memory tests.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from profiling import comm
from profiling.losses import build_loss, get_method, reference_rank_losses
from profiling.losses.precision import TORCH_DTYPES, half_matmul
from profiling.losses.registry import Schedule, Shape
from profiling.losses.sigmoid_ring_cost import second_trip_phase
from profiling.memory import AllocatorTracker, LiveTensorTracker

TOLERANCES = {  # (rtol, atol) against an fp64 reference on the same (rounded) inputs
    "fp64": (1e-9, 1e-11),
    "fp32": (2e-4, 2e-5),
    "bf16": (2e-2, 2e-3),
    "fp16": (5e-3, 5e-4),
    "bf16 operands": (3e-2, 3e-2),
    "fp16 operands": (5e-3, 5e-3),
}
"""Rows are picked by :func:`tolerance`. fp64/fp32: arithmetic in that dtype on inputs the
reference sees too. bf16/fp16 features without half matmuls: the gradients come back in
the half type (one rounding, relative 2^-8 for bf16, 2^-11 for fp16). Half matmul
operands (``profiling.losses.precision``: autocast or half features on CUDA, or on a CPU
with ``SIGSIM_HALF_MATMUL=1``): each block product is rounded to the half type before the
fp32 elementwise work, so a logit moves by up to ``t·2^-9`` (bf16; 0.04 at t = 20, and
the test draws t around 10 with tails past 20), ``G`` by up to that (softmax) or a
quarter of it (sigmoid), and a gradient ``t·Σ G·y`` by a few times that, relative to
the gradient's largest element rather than to each element: the "operands" rows, whose
``atol`` is relative to the reference tensor's largest magnitude. Autocast with fp32
operands is fp32 arithmetic on the rounded features: the fp32 row."""


def tolerance(case, device) -> tuple[float, float, bool]:
    """(rtol, atol, atol relative to the reference's largest element) on ``device``."""
    if half_matmul(TORCH_DTYPES[case.wire_dtype], device):
        return (*TOLERANCES[f"{case.wire_dtype} operands"], True)
    return (*TOLERANCES[case.dtype], False)


@dataclass(frozen=True)
class Case:
    method: str
    world: int
    batch: int
    dim: int
    dtype: str = "fp64"
    options: tuple = ()
    upstream: float | tuple[float, ...] = 1.0
    """One scalar for every rank, or one per rank."""
    autocast: str | None = None
    """Run the forward inside ``torch.autocast("cpu", dtype=...)``."""
    half_matmul: bool = False
    """Opt in to half matmul operands on CPU (``SIGSIM_HALF_MATMUL=1``), the CUDA path;
    where the CPU has no native bf16 the case runs with fp32 operands."""
    seed: int = 0

    @property
    def name(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options)
        extra = f"autocast={self.autocast} " if self.autocast else ""
        extra += f"upstream={self.upstream} " if self.upstream != 1.0 else ""
        extra += "half-matmul " if self.half_matmul else ""
        return (
            f"{self.method} W={self.world} b={self.batch} d={self.dim} {self.dtype} {extra}{opts}"
        ).strip()

    def upstream_of(self, rank: int) -> float:
        return self.upstream[rank] if isinstance(self.upstream, tuple) else self.upstream

    @property
    def uniform_upstream(self) -> bool:
        return len({self.upstream_of(r) for r in range(self.world)}) == 1

    @property
    def wire_dtype(self) -> str:
        """The dtype the features travel in: autocast's, else their own."""
        return self.autocast or self.dtype


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


def _reference(case: Case, kind, x, y, scale, bias):
    """Per-rank losses and the gradients of ``Φ = Σ_r u_r·L_r`` in fp64."""
    if case.autocast:  # the reference sees the features as autocast hands them over
        x, y = (v.to(TORCH_DTYPES[case.autocast]) for v in (x, y))
    leaves = [x.double().requires_grad_(), y.double().requires_grad_()]
    t = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(bias, dtype=torch.float64, requires_grad=True) if kind == "sigmoid" else None
    losses = reference_rank_losses(kind, *leaves, t, b, case.world)
    weights = torch.tensor([case.upstream_of(r) for r in range(case.world)], dtype=torch.float64)
    (losses * weights).sum().backward()
    return (
        losses.detach(),
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

    autocast = torch.autocast(
        "cpu", dtype=TORCH_DTYPES[case.autocast or "bf16"], enabled=case.autocast is not None
    )
    with (
        comm.use_transport(transport),
        comm.record(transport) as rec,
        AllocatorTracker(x.device) as allocator,
        LiveTensorTracker() as tracker,
    ):
        with autocast:
            loss = loss_fn(x, y, t, b)
        (loss * case.upstream_of(rank)).backward()
    peak = tracker.peak_bytes

    ref_losses, gx, gy, gt, gb = _reference(case, spec.kind, x_all, y_all, scale, bias)
    group = getattr(transport, "group", None)
    stats = torch.stack([t.grad.double()] + ([b.grad.double()] if b is not None else []))
    dist.all_reduce(stats, group=group)
    stats /= w
    rtol, atol, relative_atol = tolerance(case, x.device)
    errors = []

    def close(what, got, want):
        try:
            scale = max(1.0, float(want.abs().max())) if relative_atol else 1.0
            torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol * scale)
        except AssertionError as exc:
            errors.append(f"{case.name} rank {rank}: {what}: {str(exc).splitlines()[0:4]}")

    if loss.dtype != (torch.float64 if case.dtype == "fp64" else torch.float32):
        errors.append(f"{case.name} rank {rank}: loss returned in {loss.dtype}")
    close("loss of this rank", loss.detach(), ref_losses[rank])
    close("d logit_scale (mean over ranks)", stats[0], gt / w)
    if b is not None:
        close("d logit_bias (mean over ranks)", stats[1], gb / w)
    close("d image_features", x.grad, gx[rows])
    close("d text_features", y.grad, gy[rows])

    options = dict(case.options)
    shape = Shape.of(
        w,
        bsz,
        case.dim,
        case.dtype,
        autocast=case.autocast,
        tile=options.get("tile"),
        overlap=options.get("overlap", True),
        hide_accumulator=options.get("hide_accumulator"),
        check_ranks=options.get("check_ranks", True),
        half_matmul=half_matmul(TORCH_DTYPES[case.wire_dtype], x.device),
    )
    schedule = spec.schedule(shape)
    if spec.kind == "sigmoid" and spec.ring and not case.uniform_upstream:
        schedule = Schedule((*schedule.phases, second_trip_phase(shape)))
    predicted = {
        k: {m: int(v) for m, v in row.items()} for k, row in schedule.bytes_by_op().items()
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
        "peak_alloc_bytes": allocator.peak_bytes,
        "predicted_peak_bytes": int(sum(spec.peak_terms(shape).values())),
        "memory_terms": {k: int(v) for k, v in spec.peak_terms(shape).items()},
    }


@contextlib.contextmanager
def _half_matmul(on: bool):
    before = os.environ.get("SIGSIM_HALF_MATMUL")
    os.environ["SIGSIM_HALF_MATMUL"] = "1" if on else ""
    try:
        yield
    finally:
        if before is None:
            del os.environ["SIGSIM_HALF_MATMUL"]
        else:
            os.environ["SIGSIM_HALF_MATMUL"] = before


def run_cases(rank: int, world: int, cases: list[Case]) -> list[dict]:
    """Worker: one subgroup per world size in ``cases``; ranks outside a case skip it."""
    from profiling.comm import TorchDistributedTransport

    sizes = sorted({c.world for c in cases})
    groups = {w: dist.new_group(list(range(w))) for w in sizes}
    results = []
    for case in cases:
        if rank < case.world:
            transport = TorchDistributedTransport(groups[case.world])
            with _half_matmul(case.half_matmul):
                results.append(check_case(case, transport))
    return results


def eval_losses(rank: int, world: int, cases: list[Case]) -> list[dict]:
    """Worker: each case's forward without gradients (``torch.no_grad``, as an evaluation
    loop calls the loss; inside autocast where the case says so) on the whole group, with
    this rank's reference loss beside it."""
    from profiling.comm import TorchDistributedTransport

    transport = TorchDistributedTransport(dist.group.WORLD)
    results = []
    for case in cases:
        kind = get_method(case.method).kind
        x_all, y_all, scale, bias = global_inputs(case)
        rows = slice(rank * case.batch, (rank + 1) * case.batch)
        dt = x_all.dtype if case.dtype == "fp64" else torch.float32
        t = torch.tensor(scale, dtype=dt)
        b = torch.tensor(bias, dtype=dt) if kind == "sigmoid" else None
        loss_fn = build_loss(case.method, **dict(case.options))
        autocast = torch.autocast(
            "cpu", dtype=TORCH_DTYPES[case.autocast or "bf16"], enabled=case.autocast is not None
        )
        with comm.use_transport(transport), torch.no_grad(), autocast:
            loss = loss_fn(x_all[rows], y_all[rows], t, b)
        reference = _reference(case, kind, x_all, y_all, scale, bias)[0][rank]
        results.append({"case": case, "loss": loss, "reference": reference})
    return results
