"""CPU time of the block functions per tile side: what the CPU default tile rests on.

One ``b×b`` block (``b = d = 512`` unless given) of each ``profiling.losses.blocks``
function a ring runs (``sigmoid_block`` with both gradients, ``softmax_stats``,
``softmax_grad``), with fp32 operands and with bf16 operands (the matmul operand dtype of
``SIGSIM_HALF_MATMUL=1``), cut into tiles of each side given. One thread; the
repetitions are interleaved over all cases and timed by the thread's CPU time
(``time.thread_time``), so that other jobs on a shared machine slow the wall clock, not
the figure. Prints the median and minimum per case, in ms.

Usage: ``python -m experiments.block_speed [--tiles 512 256 128] [--reps 9]``; the kept
output is in ``docs/speed.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
import torch.nn.functional as F

from profiling.losses import blocks


def cases(b: int, d: int, tiles) -> dict:
    """One zero-argument callable per (function, operand dtype, tile side)."""
    gen = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(b, d, generator=gen), dim=1)
    y = F.normalize(torch.randn(b, d, generator=gen), dim=1)
    t, bias, coef = torch.tensor(10.0), torch.tensor(-10.0), torch.tensor(1e-3)
    row_lse, col_lse = torch.randn(b, generator=gen) + 8, torch.randn(b, generator=gen) + 8
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        xm, ym = x.to(dtype), y.to(dtype)
        for tile in tiles:
            dx, dy, sums = torch.zeros(b, d), torch.zeros(b, d), torch.zeros(2)
            rows, cols = torch.full((b,), -torch.inf), torch.full((b,), -torch.inf)
            out[f"sigmoid_block {name} T={tile}"] = partial(
                blocks.sigmoid_block, xm, ym, t, bias, diag=0, tile=tile, dx=dx, dy=dy, sums=sums
            )
            out[f"softmax_stats {name} T={tile}"] = partial(
                blocks.softmax_stats,
                xm,
                ym,
                t,
                tile=tile,
                row_lse=rows,
                col_lse=cols,
                diag=0,
                sums=sums,
            )
            out[f"softmax_grad {name} T={tile}"] = partial(
                blocks.softmax_grad,
                xm,
                ym,
                t,
                tile=tile,
                row_lse=row_lse,
                row_coef=coef,
                col_lse=col_lse,
                col_coef=coef,
                diag=0,
                dx=dx,
                dy=dy,
            )
    return out


def measure(calls: dict, reps: int) -> dict[str, list[float]]:
    """Seconds of thread CPU time per call, ``reps`` interleaved rounds after one warm-up."""
    for call in calls.values():
        call()
    seconds = {name: [] for name in calls}
    for _ in range(reps):
        for name, call in calls.items():
            start = time.thread_time()
            call()
            seconds[name].append(time.thread_time() - start)
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512, help="b, block side")
    parser.add_argument("--dim", type=int, default=512, help="d")
    parser.add_argument("--tiles", type=int, nargs="+", default=[512, 256, 128])
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.dim < 1 or args.reps < 1 or min(args.tiles) < 1:
        parser.error("--batch, --dim, --tiles and --reps must be positive")
    torch.set_num_threads(1)
    seconds = measure(cases(args.batch, args.dim, args.tiles), args.reps)
    print(f"b = {args.batch}, d = {args.dim}, 1 thread, {args.reps} interleaved repetitions")
    print("| case | median (ms) | min (ms) |")
    print("|---|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {1e3 * statistics.median(values):.2f} | {1e3 * min(values):.2f} |")


if __name__ == "__main__":
    main()
