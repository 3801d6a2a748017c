"""Microbenchmarks that calibration fits: matmul, block elementwise work, and communication.

Every time is reduced to one number by the model's :data:`~simulator.model.STEP_STATISTIC`
(the lower quartile of the repetitions), the statistic the model predicts for a step.

* :func:`time_call`: seconds of a call (CUDA synchronised), repeated until
  ``min_time_s`` has passed and at least ``min_reps`` times, after one warm-up call.
* :func:`matmul_times`: ``x @ y`` for ``(m, k, n)`` shapes, per dtype.
* :func:`block_times`: ``profiling.losses.blocks.sigmoid_block`` with gradients on
  ``b×b`` blocks at a tiny width, so its time is the fixed cost of a block (Python and
  dispatch) plus its elementwise work per pair (logit scale and bias, softplus, sigmoid,
  reductions); the matmul part is subtracted by the caller.
* :func:`comm_worker`: run inside a process group (``profiling.launch``), times
  ring send/recv one way, send/recv both ways at once, all-gather and reduce-scatter
  through ``profiling.comm``'s transport (the same code path the losses use), each
  iteration reduced across ranks by the maximum, then over iterations.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from profiling.comm import TorchDistributedTransport
from profiling.losses import blocks
from profiling.losses.precision import TORCH_DTYPES
from profiling.measure import spread
from simulator.model import STEP_STATISTIC


def step_statistic(samples: Sequence[float]) -> float:
    """The model's statistic (:data:`~simulator.model.STEP_STATISTIC`) of repeated timings."""
    return spread(list(samples))[STEP_STATISTIC]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], object],
    device: torch.device,
    *,
    min_time_s: float = 0.05,
    min_reps: int = 3,
    max_reps: int = 200,
) -> float:
    fn()
    _sync(device)
    samples: list[float] = []
    spent = 0.0
    while len(samples) < min_reps or (spent < min_time_s and len(samples) < max_reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - start)
        spent += samples[-1]
    return step_statistic(samples)


def matmul_times(
    dtype: str, shapes: Sequence[tuple[int, int, int]], device: torch.device, seed: int = 0
) -> list[tuple[float, float]]:
    """``[(flops, seconds)]`` for ``x (m×k) @ y (k×n)`` at each shape."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for m, k, n in shapes:
        x = torch.randn(m, k, generator=gen).to(device, TORCH_DTYPES[dtype])
        y = torch.randn(k, n, generator=gen).to(device, TORCH_DTYPES[dtype])
        out.append((2.0 * m * k * n, time_call(lambda x=x, y=y: x @ y, device)))
    return out


def block_times(
    dtype: str, sides: Sequence[int], dim: int, device: torch.device, seed: int = 0
) -> list[tuple[int, float]]:
    """``[(b, seconds)]`` for one sigmoid block of ``b×b`` pairs with its gradients."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for b in sides:
        x = torch.nn.functional.normalize(torch.randn(b, dim, generator=gen), dim=1)
        y = torch.nn.functional.normalize(torch.randn(b, dim, generator=gen), dim=1)
        x, y = x.to(device, TORCH_DTYPES[dtype]), y.to(device, TORCH_DTYPES[dtype])
        dx, dy = torch.zeros_like(x), torch.zeros_like(y)
        sums = torch.zeros(2, dtype=x.dtype, device=device)
        t, bias = (torch.tensor(v, dtype=x.dtype, device=device) for v in (10.0, -10.0))

        def block(x=x, y=y, dx=dx, dy=dy, sums=sums, t=t, bias=bias):
            blocks.sigmoid_block(x, y, t, bias, diag=0, tile=None, dx=dx, dy=dy, sums=sums)

        out.append((b, time_call(block, device)))
    return out


COMM_OPS = ("p2p", "p2p_bidir", "all_gather", "reduce_scatter")


def _comm_ops(transport, elems, world, nxt, prv, gen, device) -> dict[str, Callable[[], object]]:
    send = torch.randn(elems, generator=gen).to(device)
    send_back = torch.randn(elems, generator=gen).to(device)
    recv, recv_back = torch.empty_like(send), torch.empty_like(send)
    scatter_in = torch.randn(world * elems, generator=gen).to(device)

    def p2p():
        transport.start_p2p([(send, nxt)], [(recv, prv)], "calibrate").wait()

    def p2p_bidir():
        sends, recvs = [(send, nxt), (send_back, prv)], [(recv, prv), (recv_back, nxt)]
        transport.start_p2p(sends, recvs, "calibrate").wait()

    return {
        "p2p": p2p,
        "p2p_bidir": p2p_bidir,
        "all_gather": lambda: transport.all_gather(send, "calibrate"),
        "reduce_scatter": lambda: transport.reduce_scatter(scatter_in, "calibrate"),
    }


def comm_worker(
    rank: int, world: int, sizes: Sequence[int], warmup: int, repeats: int, per_call: bool = False
):
    """Rank 0 returns ``[(op, world, bytes_per_rank, seconds)]`` (``per_call``: with the
    repetitions' seconds, max over ranks, as a fifth item); other ranks None."""
    transport = TorchDistributedTransport()
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    nxt, prv = (rank + 1) % world, (rank - 1) % world
    gen = torch.Generator(device="cpu").manual_seed(1234 + rank)
    samples: list[list[float]] = []
    cases: list[tuple[str, int]] = []
    for nbytes in sizes:
        elems = max(1, nbytes // 4)
        ops = _comm_ops(transport, elems, world, nxt, prv, gen, device)
        for op in COMM_OPS:
            times = []
            for i in range(warmup + repeats):
                dist.barrier()
                start = time.perf_counter()
                ops[op]()
                _sync(device)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
            samples.append(times)
            cases.append((op, elems * 4))
    gathered: list[list[list[float]]] = [None] * world  # type: ignore[list-item]
    dist.all_gather_object(gathered, samples)
    if rank != 0:
        return None
    rows = []
    for index, (op, nbytes) in enumerate(cases):
        per_iteration = [max(r[index][i] for r in gathered) for i in range(repeats)]
        row = (op, world, nbytes, step_statistic(per_iteration))
        rows.append((*row, per_iteration) if per_call else row)
    return rows
