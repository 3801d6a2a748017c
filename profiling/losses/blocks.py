"""Block math: the loss and its gradients over one block of pairs, tiled.

Every strategy reduces to calling these on blocks ``x (m×d)`` against ``y (n×d)`` whose
dtype is the matmul operand dtype (``precision.matmul_dtype``: the half type where the
device multiplies it natively, else the block-math dtype); every product is upcast to the
block-math dtype (that of ``t``: fp32 for half inputs) before any elementwise work, and
``G`` is rounded to the operand dtype only to multiply it. A block is cut into tiles of at most
``tile × tile`` pairs so that the transient buffers (a few ``tile×tile`` matrices) stay
bounded whatever ``b``. ``diag`` is the column offset of row 0's positive pair in the
block (``None``: the block holds negatives only); inside a tile the positives are a
diagonal, found with ``Tensor.diagonal(offset)``.

The logit scale ``t`` and bias ``β`` are 0-d tensors, never read on the host (no device
synchronisation). Gradient accumulators are *unscaled*: ``Dx += G·y``, ``Dy += Gᵀ·x``
with ``G = ∂loss/∂l``; the caller multiplies by ``t`` once at the end, and gets the
scale's gradient from the same sums, ``Σ_ij G_ij·(x_i·y_j) = ⟨x, Dx⟩`` (so no per-tile
pass over ``G⊙cos`` is needed).

Sigmoid, per pair ``l = t·x·y + β``, ``z = +1`` on positives, ``-1`` elsewhere::

    loss  = Σ softplus(l) − Σ_pos l                    (= Σ −log σ(z·l))
    G     = σ(l) − [pos],   dβ = Σ G

Softmax, with ``S = t·x·yᵀ``: :func:`softmax_stats` folds a block into running row and
column log-sum-exps; :func:`softmax_grad` forms
``G = c_row·exp(S − lse_row) + c_col·exp(S − lse_col) − (c_row + c_col)·[pos]`` and
accumulates ``Dx`` and ``Dy``; :func:`softmax_rows_fused` does loss and gradient of the
row term in one pass over a full ``b×N`` block (all-gather methods).

With ``SIGSIM_FUSED_BLOCKS=1`` the sigmoid tile and the softmax ring's statistics and
gradient tiles take one Triton kernel each for the logits and the elementwise work (:mod:`profiling.losses.fused`),
same contract, ``G`` in the operand dtype; the gradient matmuls stay here.

Matmul FLOPs per tile of ``m×n`` pairs: ``2·m·n·d`` for the logits, and as much again for
each of ``Dx`` and ``Dy``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from profiling.losses import fused

_DOT_CHUNK = 2**31 - 1  # cuBLAS dot takes 32-bit lengths


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Σ a⊙b`` over two equal-shape contiguous tensors, without a temporary."""
    a, b = a.reshape(-1), b.reshape(-1)
    if a.numel() <= _DOT_CHUNK:
        return torch.dot(a, b)
    return sum(
        torch.dot(u, v) for u, v in zip(a.split(_DOT_CHUNK), b.split(_DOT_CHUNK), strict=True)
    )


def tile_ranges(n: int, tile: int | None):
    step = n if tile is None else max(1, min(tile, n))
    return [(start, min(start + step, n)) for start in range(0, n, step)]


def _for_each_tile(x, y, tile, diag, operand, work) -> None:
    """Call ``work(rows, cols, k, y_tile)`` for every tile: row and column slices, the
    diagonal offset inside the tile (None where no positive falls in it) and the texts'
    tile as a matmul operand (``operand(y[cols])``, or the slice itself). Columns run
    outer, so each text tile is converted once per block and only one exists at a time."""
    for j0, j1 in tile_ranges(y.shape[0], tile):
        cols = slice(j0, j1)
        y_tile = y[cols] if operand is None else operand(y[cols])
        for i0, i1 in tile_ranges(x.shape[0], tile):
            k = None
            if diag is not None:
                k = i0 + diag - j0
                # the tile holds positives only if the diagonal passes through it
                if not (-(i1 - i0) < k < (j1 - j0)):
                    k = None
            work(slice(i0, i1), cols, k, y_tile)
        del y_tile


def sigmoid_block(x, y, t, bias, *, diag, tile, dx, dy, sums, g_scale=None, operand=None):
    """Add the sigmoid loss of ``x`` vs ``y`` to ``sums[0]``; ``Dx``, ``Dy`` into ``dx``, ``dy``.

    ``sums`` is a 2-vector (loss, dβ), dβ filled when ``dx`` is given; ``dx`` and ``dy``
    None skip the gradient work; ``dx`` None with ``dy`` given computes the text
    gradient alone (the exact second trip of the sigmoid rings' backward), where
    ``g_scale`` (a 0-d tensor) multiplies ``G`` before it is accumulated. ``operand``
    turns a tile of ``y`` into a matmul operand (:func:`profiling.losses.precision.operand`:
    rounded to the wire dtype, cast to ``x``'s); None: ``y`` is one already.
    """

    def work(rows, cols, k, y_tile):
        tile_dx = dx[rows] if dx is not None else None
        tile_dy = dy[cols] if dy is not None else None
        _sigmoid_tile(x[rows], y_tile, t, bias, k, tile_dx, tile_dy, sums, g_scale)

    _for_each_tile(x, y, tile, diag, operand, work)


def _logits(x, y, t):
    """``t·x·yᵀ`` in the block-math dtype (``t``'s), from operands of any dtype."""
    return (x @ y.T).to(t.dtype).mul_(t)


def _accumulate(dx, dy, g, x, y) -> None:
    """``dx += G·y``, ``dy += Gᵀ·x``, with ``G`` rounded once to the operands' dtype."""
    gm = g if g.dtype == y.dtype else g.to(y.dtype)
    for acc, a, b in ((dx, gm, y), (dy, gm.T, x)):
        if acc is None:
            continue
        if acc.dtype == gm.dtype:
            acc.addmm_(a, b)
        else:  # half operands, block-math accumulator: the product is upcast as it is added
            acc.add_(a @ b)


def _sigmoid_tile(x, y, t, bias, k, dx, dy, sums, g_scale) -> None:
    # One function per tile: its scratch (logits, softplus; G in the operand dtype and a
    # product for half operands) is freed on return.
    if fused.use_fused(x):
        want_g = dx is not None or dy is not None
        g, loss, g_sum = fused.sigmoid_tile(x, y, t, bias, k, g_scale, want_g=want_g)
        if dx is not None or dy is None:
            sums[0] += loss
        if dx is not None:
            sums[1] += g_sum
        if want_g:
            _accumulate(dx, dy, g, x, y)
        return
    logits = _logits(x, y, t).add_(bias)
    if dx is not None or dy is None:
        sums[0] += F.softplus(logits).sum()
        if k is not None:
            sums[0] -= logits.diagonal(k).sum()
    if dx is None and dy is None:
        return
    g = logits.sigmoid_()
    if k is not None:
        g.diagonal(k).sub_(1)
    if dx is not None:
        sums[1] += g.sum()
    elif g_scale is not None:
        g.mul_(g_scale)
    _accumulate(dx, dy, g, x, y)


def softmax_stats(x, y, t, *, tile, row_lse, col_lse, diag=None, sums=None, operand=None):
    """Fold ``S = t·x·yᵀ`` into running log-sum-exps over rows and columns (in place);
    with ``diag``, add the positives ``Σ S_ii`` to ``sums[0]``. ``operand``: as in
    :func:`sigmoid_block`."""

    def work(rows, cols, k, y_tile):
        if fused.use_fused(x):
            row, col, positives = fused.softmax_stats_tile(x[rows], y_tile, t, k)
        else:
            s = _logits(x[rows], y_tile, t)
            row, col = torch.logsumexp(s, 1), torch.logsumexp(s, 0)
            positives = s.diagonal(k).sum() if k is not None else None
            del s
        torch.logaddexp(row_lse[rows], row, out=row_lse[rows])
        torch.logaddexp(col_lse[cols], col, out=col_lse[cols])
        if k is not None:
            sums[0] += positives

    _for_each_tile(x, y, tile, diag, operand, work)


def softmax_grad(
    x, y, t, *, tile, row_lse, row_coef, col_lse, col_coef, diag, dx, dy, operand=None
):
    """Accumulate the softmax loss's ``Dx``, ``Dy`` over one block (unscaled by ``t``).

    ``row_coef``/``col_coef`` are 0-d tensors: upstream gradient / (2b) of the rank that
    owns the rows (images) and of the rank that owns the columns (texts). ``operand``:
    as in :func:`sigmoid_block`.
    """

    def work(rows, cols, k, y_tile):
        lse = (row_lse[rows], row_coef, col_lse[cols], col_coef)
        _softmax_grad_tile(x[rows], y_tile, t, lse, k, dx[rows], dy[cols])

    _for_each_tile(x, y, tile, diag, operand, work)


def _softmax_grad_tile(x, y, t, lse, k, dx, dy) -> None:
    row_lse, row_coef, col_lse, col_coef = lse
    if fused.use_fused(x):
        g = fused.softmax_grad_tile(x, y, t, row_lse, row_coef, col_lse, col_coef, k)
        _accumulate(dx, dy, g, x, y)
        return
    s = _logits(x, y, t)
    g = (s - row_lse[:, None]).exp_().mul_(row_coef)
    g.add_(s.sub_(col_lse[None, :]).exp_().mul_(col_coef))
    del s
    if k is not None:
        g.diagonal(k).sub_(row_coef + col_coef)
    _accumulate(dx, dy, g, x, y)


def softmax_rows_fused(x, y, t, *, diag: int, dx, dy, sums) -> None:
    """Row term of the softmax loss over a full block, one pass; unscaled (coefficient 1).

    ``sums[0] += Σ_rows (lse − S_pos)`` with ``G = softmax − onehot``: ``Dx += G·y``,
    ``Dy += Gᵀ·x``. Used by the all-gather method on ``b×N`` blocks.
    """
    s = _logits(x, y, t)
    # log-sum-exp in place (torch.logsumexp would allocate a b×N temporary):
    # lse = m + log Σ exp(S − m), m the row max; G = exp(S − m) / Σ exp(S − m) − onehot.
    m = s.amax(1)
    sums[0] -= s.diagonal(diag).sum()
    g = s.sub_(m[:, None]).exp_()
    total = g.sum(1)
    sums[0] += total.log().add_(m).sum()
    g.div_(total[:, None])
    g.diagonal(diag).sub_(1)
    _accumulate(dx, dy, g, x, y)
