"""Test helper: run the incumbents' real code on a gloo group and measure one step.

For every case, on each rank of a subgroup of ``W`` ranks of one process group: seeded
L2-normalised features (fp32, ``requires_grad``), ``logit_scale = exp(log t)`` and (SigLIP)
a bias, all created before measuring, as our records do; then one forward + backward of
the incumbent's own code (optionally with the forward inside ``torch.autocast("cpu")``,
optionally with oneDNN off: :attr:`IncumbentCase.onednn`) under
``profiling.memory.AllocatorTracker`` (exact CPU allocator peak above the level at
entry: inputs excluded, their gradients included) and ``experiments.dist_counter`` (bytes
``torch.distributed`` moved, in ``profiling.comm``'s ring convention). The step runs
:data:`RUNS` times, each after a barrier and a 50 ms pause, and the smallest peak is kept:
gloo's all-gather fills a flat ``N×d`` buffer that its work object holds until gloo's
worker thread lets it go, which on a busy 2-core host can be long after the call
returned, so in some runs it is still alive at the loss's peak (seen: +``N·d·4`` bytes,
up to 2 runs of 3 at one point, and 3 of 3 once, in a CI run on 2026-11-29 while another
job loaded the machine: clip-local, W = 2, b = 24, d = 16, +3,072 bytes); the pause lets
the previous run's go before measuring.

The real code, unmodified:

* open_clip 3.3 ``loss.py`` loaded alone (``experiments.open_clip_peers``): ``ClipLoss`` and
  ``SigLipLoss``;
* Inf-CL 1.2.1 ``inf_cl/ring.py``: ``cal_ring_loss(x, y, scale=t) + cal_ring_loss(y, x,
  scale=t)``, halved (one call is one direction of CLIP), ``head_dim = d`` (one head: the
  einsums sum over heads and width alike, so the cost does not depend on the split).

Both call ``torch.distributed`` on the default group (``torch.distributed.nn.all_gather``
binds ``group=WORLD`` at definition, ``RingComm(None)``, ``GradientGather`` 's bare
``all_reduce``). To run ``W = 2..4`` in one process group, :func:`on_group` points those
defaults at the case's subgroup of ranks ``0..W-1`` (whose ranks equal the global ones,
so open_clip's p2p peers are right) for the length of the step, passing ``group=`` as a
keyword so the byte counter sees the subgroup's size.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import types
from dataclasses import dataclass

import torch
import torch.distributed as dist

from experiments.dist_counter import count_traffic
from experiments.open_clip_peers import load_open_clip_loss
from profiling.memory import AllocatorTracker

RUNS = 5
"""Steps per case; the smallest allocator peak is kept (module docstring)."""


@dataclass(frozen=True)
class IncumbentCase:
    name: str
    """Incumbent name as registered in ``simulator.incumbents``."""
    world: int
    batch: int
    dim: int
    autocast: str | None = None
    """Run the forward inside ``torch.autocast("cpu", dtype=...)`` (fp32 features)."""
    onednn: bool = True
    """False: run the step with ``torch.backends.mkldnn`` off, so that a bf16 matmul takes
    torch's own GEMM, which allocates nothing beyond its output, instead of oneDNN's,
    whose per-call scratch (packed operands, layout-dependent) no cost formula holds."""
    seed: int = 0


@contextlib.contextmanager
def on_group(group):
    """Default-group calls of the incumbents' code go to ``group`` (module docstring)."""
    tdn = torch.distributed.nn
    saved = (tdn.all_gather, tdn.all_reduce)
    tdn.all_gather = lambda tensor, group=group: saved[0](tensor, group=group)
    tdn.all_reduce = lambda tensor, op=dist.ReduceOp.SUM, group=group: saved[1](
        tensor, op=op, group=group
    )
    ring = _inf_cl_ring()
    if ring is not None:
        init = ring.RingComm.__init__
        ring.RingComm.__init__ = lambda self, pg: init(self, group if pg is None else pg)
        proxy = types.SimpleNamespace(**{k: getattr(dist, k) for k in ("get_rank", "P2POp")})
        proxy.all_reduce = lambda t, *a, **k: dist.all_reduce(t, *a, group=group, **k)
        proxy.isend, proxy.irecv = dist.isend, dist.irecv
        proxy.batch_isend_irecv = lambda ops: dist.batch_isend_irecv(ops)
        proxy.get_world_size = dist.get_world_size
        proxy.get_global_rank = dist.get_global_rank
        ring.dist = proxy
    try:
        yield
    finally:
        tdn.all_gather, tdn.all_reduce = saved
        if ring is not None:
            ring.RingComm.__init__ = init
            ring.dist = dist


@functools.cache
def _inf_cl_ring():
    try:
        import inf_cl.ring as ring
    except ImportError:
        return None
    return ring


def build(name: str, rank: int, world: int, dim: int):
    """``loss(x, y, t, bias)`` running the incumbent's real code."""
    if name.startswith("infcl-"):
        ring = _inf_cl_ring()
        fn = {"infcl-ring": ring.cal_ring_loss, "infcl-inf": ring.cal_inf_loss}[name]

        def infcl(x, y, t, bias):
            return (fn(x, y, scale=t, head_dim=dim) + fn(y, x, scale=t, head_dim=dim)) / 2

        return infcl
    loss = load_open_clip_loss()
    variant = name.removeprefix("openclip-")
    if variant.startswith("clip-"):
        module = loss.ClipLoss(
            local_loss=variant == "clip-local", gather_with_grad=True, rank=rank, world_size=world
        )
        return lambda x, y, t, bias: module(x, y, t)
    module = loss.SigLipLoss(rank=rank, world_size=world, dist_impl=variant.removeprefix("siglip-"))
    return module


def measure_case(case: IncumbentCase, rank: int, group) -> dict:
    gen = torch.Generator().manual_seed(case.seed * 1_000_003 + rank)

    def features():
        x = torch.randn(case.batch, case.dim, generator=gen, dtype=torch.float64)
        return (x / x.norm(dim=1, keepdim=True)).float().requires_grad_(True)

    x, y = features(), features()
    log_t = torch.tensor(math.log(10.0)).requires_grad_(True)
    bias = torch.tensor(-10.0).requires_grad_(True)
    loss_fn = build(case.name, rank, case.world, case.dim)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(case.autocast, torch.bfloat16)
    autocast = torch.autocast("cpu", dtype=dtype, enabled=case.autocast is not None)
    peaks = []
    for _ in range(RUNS):
        x.grad = y.grad = log_t.grad = bias.grad = None
        dist.barrier(group=group)
        time.sleep(0.05)  # gloo's worker threads let go of the last collective's buffers
        onednn = torch.backends.mkldnn.flags(enabled=case.onednn)
        with on_group(group), onednn, count_traffic() as rec, AllocatorTracker("cpu") as allocator:
            t = log_t.exp()
            with autocast:
                value = loss_fn(x, y, t, bias)
            value.backward()
        dist.barrier(group=group)
        peaks.append(allocator.peak_bytes)
    return {
        "case": case,
        "rank": rank,
        "loss": float(value.detach()),
        "peak_alloc_bytes": min(peaks),
        "peak_alloc_runs": peaks,
        "ops": {
            k: {"bytes_sent": s.bytes_sent, "bytes_received": s.bytes_received}
            for k, s in rec.ops.items()
        },
        "bytes_sent": rec.bytes_sent,
    }


def run_incumbent_cases(rank: int, world: int, cases: list[IncumbentCase]) -> list[dict]:
    """Worker: one subgroup per world size in ``cases``; ranks outside a case skip it."""
    sizes = sorted({c.world for c in cases})
    groups = {w: dist.new_group(list(range(w))) for w in sizes}
    results = []
    for case in cases:
        if rank < case.world:
            results.append(measure_case(case, rank, groups[case.world]))
        dist.barrier()
    return results
