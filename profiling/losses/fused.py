"""One-pass tile kernels (Triton): a tile's logits, loss term and logit gradient in one kernel.

Why. In eager torch a sigmoid tile's elementwise work is a chain of kernels that each
read and write the ``T×T`` tile: upcast the half product, scale, add the bias, softplus,
sum, sigmoid, fix the diagonal, sum, round ``G`` back to the operand dtype: about 50
bytes of memory traffic per pair with bf16 operands, against ``2·d`` FLOPs per pair for
the logit matmul. On a GPU whose bf16 matmul rate over its memory bandwidth is
``~790 TFLOP/s / 4.8 TB/s ≈ 165 FLOP/byte`` (H200 datasheet figures), the chain costs
more than the three matmuls of the tile at ``d = 768``. The kernels here compute
``S = x·yᵀ`` with fp32 accumulation (``tl.dot``: tensor cores for half operands, IEEE fp32
for fp32 ones), and from it, in registers:

* :func:`sigmoid_tile`: ``l = t·S + β``, the loss term ``softplus(l) − [pos]·l``,
  ``G = σ(l) − [pos]`` (times ``g_scale`` for the sigmoid rings' exact second trip),
  written once in the operand dtype, plus one (loss, ``ΣG``) partial per program;
* :func:`softmax_stats_tile`: ``S ← t·S``, its row and column log-sum-exps (per-program
  partials, merged by one small ``logsumexp``) and ``Σ S`` over the positives;
* :func:`softmax_grad_tile`: ``S ← t·S``,
  ``G = c_row·exp(S − lse_row) + c_col·exp(S − lse_col) − (c_row + c_col)·[pos]``,
  written once in the operand dtype.

Two bytes per pair written (bf16) instead of ~50 moved, and the logits never exist in
the half type, so the half path's rounding of each logit (``t·2^-9`` in bf16) is gone
too. The gradient matmuls ``Dx += G·y``, ``Dy += Gᵀ·x`` stay in torch (cuBLAS), as in
:mod:`profiling.losses.blocks`, whose contract these functions follow exactly.

When. ``SIGSIM_FUSED_BLOCKS=1`` turns them on for operands in fp32, bf16 or fp16 (fp64
keeps the torch path). They are off by default everywhere: they have not yet run on a
GPU (the GPU check, ``sigsim gpu-check``, times and checks them against the torch path
first; ``docs/speed.md``). On CPU they run only under Triton's interpreter
(``TRITON_INTERPRET=1``), which is how the tests pin them to the fp64 reference in CI;
the interpreter is slow, so that is for correctness, not speed. Memory: the tile's
scratch is ``G`` in the operand dtype and ``2`` fp32 per program, at most the torch
path's ``2·T²`` block-math elements that the memory model counts (the model is not
tightened for this path, and the interpreter's numpy buffers are invisible to torch's
allocator).

No host synchronisation: ``t``, ``β``, the coefficients and ``g_scale`` are read by the
kernel from device memory; the partial sums are added on the device.
"""

from __future__ import annotations

import functools
import os

import torch

SWITCH = "SIGSIM_FUSED_BLOCKS"
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 32
"""Program tile and reduction step; not tuned on a GPU yet."""


class FusedBlocksUnavailable(RuntimeError):
    """``SIGSIM_FUSED_BLOCKS=1`` where the kernels cannot run."""


def requested() -> bool:
    return os.environ.get(SWITCH, "") == "1"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def use_fused(x: torch.Tensor) -> bool:
    """Whether the tile functions of :mod:`profiling.losses.blocks` take the fused path
    for operands like ``x``; a clear error where it is asked for and cannot run."""
    if not requested() or x.dtype not in FUSED_DTYPES:
        return False
    if x.device.type == "cpu" and not _interpreting():
        raise FusedBlocksUnavailable(
            f"{SWITCH}=1 runs on CUDA, or on CPU under Triton's interpreter "
            "(TRITON_INTERPRET=1, for tests); unset it to use the torch block math"
        )
    if x.device.type not in ("cpu", "cuda"):
        raise FusedBlocksUnavailable(f"{SWITCH}=1: no Triton kernels for {x.device.type}")
    _kernels()
    return True


@functools.cache
def _kernels():
    """The kernel module, imported on first use (``triton.jit`` reads TRITON_INTERPRET then)."""
    try:
        from profiling.losses import fused_kernels
    except ImportError as exc:
        raise FusedBlocksUnavailable(
            f"{SWITCH}=1 needs Triton (pip install triton): {exc}"
        ) from None
    return fused_kernels


def _grid(m: int, n: int) -> tuple[int, int]:
    return (-(-m // BLOCK_M), -(-n // BLOCK_N))


def _diag(diag: int | None, n: int) -> int:
    """The positives' column offset; without positives, ``n``, which no pair has
    (``column − row < n`` in a tile of ``n`` columns)."""
    return n if diag is None else diag


def _precision(x: torch.Tensor) -> str:
    """``tl.dot``'s precision: IEEE fp32 for fp32 operands (no TF32), and for the
    interpreter's upcast half operands; ignored for half operands on a GPU."""
    return "ieee" if x.dtype == torch.float32 or _interpreting() else "tf32"


def _f32(v: torch.Tensor) -> torch.Tensor:
    """A 0-d or 1-d block-math tensor as fp32 on its device (a no-op when it is)."""
    return v if v.dtype == torch.float32 else v.float()


def sigmoid_tile(x, y, t, bias, diag, g_scale=None, *, want_g=True):
    """``(G or None, loss term, ΣG)`` of one sigmoid tile; see the module docstring.

    ``x (m×d)`` and ``y (n×d)`` are the operands (contiguous rows), ``diag`` the column
    offset of row 0's positive pair or None; ``G`` is returned in the operand dtype, the
    two sums as 0-d fp32 tensors on the device.
    """
    x, y = x.contiguous(), y.contiguous()
    (m, d), n = x.shape, y.shape[0]
    grid = _grid(m, n)
    g = torch.empty(m, n, dtype=x.dtype, device=x.device) if want_g else x.new_empty(1, 1)
    parts = torch.empty(grid[0] * grid[1], 2, dtype=torch.float32, device=x.device)
    gscale = _f32(g_scale) if g_scale is not None else parts
    _kernels().sigmoid_kernel[grid](
        x,
        y,
        _f32(t),
        _f32(bias),
        gscale,
        g,
        parts,
        m,
        n,
        d,
        x.stride(0),
        y.stride(0),
        g.stride(0),
        _diag(diag, n),
        HAS_GSCALE=g_scale is not None,
        WRITE_G=want_g,
        PRECISION=_precision(x),
        UPCAST=_interpreting(),
        BM=BLOCK_M,
        BN=BLOCK_N,
        BK=BLOCK_K,
    )
    sums = parts.sum(0)
    return (g if want_g else None), sums[0], sums[1]


def softmax_grad_tile(x, y, t, row_lse, row_coef, col_lse, col_coef, diag):
    """``G`` of one softmax tile in the operand dtype; see the module docstring."""
    x, y = x.contiguous(), y.contiguous()
    (m, d), n = x.shape, y.shape[0]
    g = torch.empty(m, n, dtype=x.dtype, device=x.device)
    _kernels().softmax_grad_kernel[_grid(m, n)](
        x,
        y,
        _f32(t),
        _f32(row_lse).contiguous(),
        _f32(row_coef),
        _f32(col_lse).contiguous(),
        _f32(col_coef),
        g,
        m,
        n,
        d,
        x.stride(0),
        y.stride(0),
        g.stride(0),
        _diag(diag, n),
        PRECISION=_precision(x),
        UPCAST=_interpreting(),
        BM=BLOCK_M,
        BN=BLOCK_N,
        BK=BLOCK_K,
    )
    return g


def softmax_stats_tile(x, y, t, diag):
    """``(row lse (m), column lse (n), Σ S on the positives)`` of one tile, ``S = t·x·yᵀ``,
    fp32; each program folds its pairs into per-row and per-column partial log-sum-exps,
    merged here (``logsumexp`` over programs: ``(m + n)·programs`` floats)."""
    x, y = x.contiguous(), y.contiguous()
    (m, d), n = x.shape, y.shape[0]
    grid = _grid(m, n)
    f32 = dict(dtype=torch.float32, device=x.device)
    row_part, col_part = torch.empty(grid[1], m, **f32), torch.empty(grid[0], n, **f32)
    pos_part = torch.empty(grid[0] * grid[1], **f32)
    _kernels().softmax_stats_kernel[grid](
        x, y, _f32(t), row_part, col_part, pos_part, m, n, d,
        x.stride(0), y.stride(0), _diag(diag, n),
        PRECISION=_precision(x), UPCAST=_interpreting(), BM=BLOCK_M, BN=BLOCK_N, BK=BLOCK_K,
    )  # fmt: skip
    return torch.logsumexp(row_part, 0), torch.logsumexp(col_part, 0), pos_part.sum()
