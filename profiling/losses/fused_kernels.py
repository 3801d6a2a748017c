"""The Triton kernels of :mod:`profiling.losses.fused` (their math and contract are there).

Imported only when the fused path is first used, because ``triton.jit`` reads
``TRITON_INTERPRET`` when it decorates and Triton resolves a kernel's callees from this
module's globals.
"""

import triton
import triton.language as tl


@triton.jit
def logits_tile(
    x_ptr,
    y_ptr,
    m,
    n,
    d,
    sxm,
    sym,
    diag,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    """This program's ``BM×BN`` tile of ``x·yᵀ`` (fp32 accumulation), its row and column
    indices, which pairs lie inside the ``m×n`` block, and which are positives
    (``column − row = diag``)."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    ks = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, d, BK):
        kk = k0 + ks
        a = tl.load(
            x_ptr + rows[:, None] * sxm + kk[None, :],
            mask=(rows[:, None] < m) & (kk[None, :] < d),
            other=0.0,
        )
        b = tl.load(
            y_ptr + cols[None, :] * sym + kk[:, None],
            mask=(cols[None, :] < n) & (kk[:, None] < d),
            other=0.0,
        )
        if UPCAST:  # the interpreter's dot misreads bf16; bf16 products are exact in fp32
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    inside = (rows[:, None] < m) & (cols[None, :] < n)
    pos = inside & ((cols[None, :] - rows[:, None]) == diag)
    return acc, rows, cols, inside, pos


@triton.jit
def sigmoid_kernel(
    x_ptr,
    y_ptr,
    t_ptr,
    bias_ptr,
    gscale_ptr,
    g_ptr,
    part_ptr,
    m,
    n,
    d,
    sxm,
    sym,
    sgm,
    diag,
    HAS_GSCALE: tl.constexpr,
    WRITE_G: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    s, rows, cols, inside, pos = logits_tile(
        x_ptr, y_ptr, m, n, d, sxm, sym, diag, PRECISION, UPCAST, BM, BN, BK
    )
    logit = s * tl.load(t_ptr) + tl.load(bias_ptr)
    e = tl.exp(-tl.abs(logit))  # softplus and sigmoid from one exp, stable both ways
    term = tl.maximum(logit, 0.0) + tl.log(1.0 + e) - tl.where(pos, logit, 0.0)
    g = tl.where(logit >= 0, 1.0 / (1.0 + e), e / (1.0 + e)) - tl.where(pos, 1.0, 0.0)
    if HAS_GSCALE:
        g = g * tl.load(gscale_ptr)
    term = tl.where(inside, term, 0.0)
    g = tl.where(inside, g, 0.0)
    if WRITE_G:
        tl.store(
            g_ptr + rows[:, None] * sgm + cols[None, :],
            g.to(g_ptr.dtype.element_ty),
            mask=inside,
        )
    program = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    tl.store(part_ptr + 2 * program, tl.sum(tl.sum(term, axis=1), axis=0))
    tl.store(part_ptr + 2 * program + 1, tl.sum(tl.sum(g, axis=1), axis=0))


@triton.jit
def softmax_grad_kernel(
    x_ptr,
    y_ptr,
    t_ptr,
    row_lse_ptr,
    row_coef_ptr,
    col_lse_ptr,
    col_coef_ptr,
    g_ptr,
    m,
    n,
    d,
    sxm,
    sym,
    sgm,
    diag,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    s, rows, cols, inside, pos = logits_tile(
        x_ptr, y_ptr, m, n, d, sxm, sym, diag, PRECISION, UPCAST, BM, BN, BK
    )
    s = s * tl.load(t_ptr)
    row_lse = tl.load(row_lse_ptr + rows, mask=rows < m, other=0.0)
    col_lse = tl.load(col_lse_ptr + cols, mask=cols < n, other=0.0)
    row_coef = tl.load(row_coef_ptr)
    col_coef = tl.load(col_coef_ptr)
    g = row_coef * tl.exp(s - row_lse[:, None]) + col_coef * tl.exp(s - col_lse[None, :])
    g = g - tl.where(pos, row_coef + col_coef, 0.0)
    tl.store(
        g_ptr + rows[:, None] * sgm + cols[None, :],
        g.to(g_ptr.dtype.element_ty),
        mask=inside,
    )


@triton.jit
def softmax_stats_kernel(x_ptr, y_ptr, t_ptr, row_part_ptr, col_part_ptr, pos_part_ptr,
                         m, n, d, sxm, sym, diag, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):  # fmt: skip
    s, rows, cols, inside, pos = logits_tile(
        x_ptr, y_ptr, m, n, d, sxm, sym, diag, PRECISION, UPCAST, BM, BN, BK
    )
    s = s * tl.load(t_ptr)
    program = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    tl.store(pos_part_ptr + program, tl.sum(tl.sum(tl.where(pos, s, 0.0), axis=1), axis=0))
    s = tl.where(inside, s, float("-inf"))
    # every stored row and column has at least one pair inside, so its sum of exp() is at
    # least 1 (its max); rows and columns past the edge (max -inf, sum 0) are never stored,
    # and 0 and 1 stand in there only to keep -inf - -inf and log(0) out of the arithmetic
    row_max = tl.max(s, axis=1)
    row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    row_lse = row_max + tl.log(tl.maximum(tl.sum(tl.exp(s - row_max[:, None]), axis=1), 1.0))
    tl.store(row_part_ptr + tl.program_id(1) * m + rows, row_lse, mask=rows < m)
    col_max = tl.max(s, axis=0)
    col_max = tl.where(col_max == float("-inf"), 0.0, col_max)
    col_lse = col_max + tl.log(tl.maximum(tl.sum(tl.exp(s - col_max[None, :]), axis=0), 1.0))
    tl.store(col_part_ptr + tl.program_id(0) * n + cols, col_lse, mask=cols < n)
