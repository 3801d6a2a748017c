"""Operator scratch of the block functions: allocator peak against live-tensor peak.

One call of each ``profiling.losses.blocks`` function on a ``256×512`` fp32 block (d = 16,
no tiling), of the reductions they use, and of a bf16 matmul, under both trackers of
``profiling.memory`` (inputs created before). Prints a Markdown table in units of one
fp32 block (``b·n·4`` bytes): where the allocator peak passes the live peak, an operator
keeps scratch the live tracker cannot see.

Usage: ``python -m experiments.block_scratch``; the kept output is in
``docs/allocator-peak.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from profiling.losses import blocks
from profiling.memory import AllocatorTracker, LiveTensorTracker

B, N, D = 256, 512, 16
UNIT_BYTES = B * N * 4


def _row(name: str, fn) -> str:
    with AllocatorTracker() as alloc, LiveTensorTracker() as live:
        fn()
    return f"| {name} | {alloc.peak_bytes / UNIT_BYTES:.3f} | {live.peak_bytes / UNIT_BYTES:.3f} |"


def _block_rows(dtype: torch.dtype, tag: str) -> list[str]:
    gen = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(B, D, generator=gen), dim=1).to(dtype)
    y = F.normalize(torch.randn(N, D, generator=gen), dim=1).to(dtype)
    t, bias, coef = torch.tensor(10.0), torch.tensor(-10.0), torch.tensor(0.01)
    dx, dy = torch.zeros(B, D, dtype=dtype), torch.zeros(N, D, dtype=dtype)
    sums = torch.zeros(2)
    row_lse, col_lse = torch.full((B,), -torch.inf), torch.full((N,), -torch.inf)
    stats = {"row_lse": row_lse, "col_lse": col_lse}
    calls = {
        "sigmoid_block, gradients": lambda: blocks.sigmoid_block(
            x, y, t, bias, diag=0, tile=None, dx=dx, dy=dy, sums=sums
        ),
        "sigmoid_block, loss only": lambda: blocks.sigmoid_block(
            x, y, t, bias, diag=0, tile=None, dx=None, dy=None, sums=sums
        ),
        "softmax_stats": lambda: blocks.softmax_stats(x, y, t, tile=None, **stats),
        "softmax_grad": lambda: blocks.softmax_grad(
            x, y, t, tile=None, row_coef=coef, col_coef=coef, diag=0, dx=dx, dy=dy, **stats
        ),
        "softmax_rows_fused": lambda: blocks.softmax_rows_fused(
            x, y, t, diag=0, dx=dx, dy=dy, sums=sums
        ),
    }
    return [_row(f"{name} ({tag})", fn) for name, fn in calls.items()]


def main() -> None:
    s = torch.randn(B, N, generator=torch.Generator().manual_seed(1))
    u, v = s[:, 0].contiguous(), s[:, 1].contiguous()
    print("| function | allocator peak | live peak |")
    print("|---|---|---|")
    for line in _block_rows(torch.float32, "fp32"):
        print(line)
    xb, yb = torch.randn(B, D).bfloat16(), torch.randn(N, D).bfloat16()
    for name, fn in {
        "`torch.logsumexp(S, 1)`": lambda: torch.logsumexp(s, 1),
        "`torch.logsumexp(S, 0)`": lambda: torch.logsumexp(s, 0),
        "`F.softplus(S).sum()`": lambda: F.softplus(s).sum(),
        "`S.sum()`": lambda: s.sum(),
        "`S.sum(1)`": lambda: s.sum(1),
        "`S.amax(1)`": lambda: s.amax(1),
        "`torch.logaddexp` of two `b`-vectors": lambda: torch.logaddexp(u, v),
        "`x @ y.T`, bf16 operands (output: 0.5)": lambda: xb @ yb.T,
    }.items():
        print(_row(name, fn))


if __name__ == "__main__":
    main()
