"""The fused tile kernels (``profiling.losses.fused``, Triton) against the fp64 reference.

On CPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``), so these
tests pin the kernels' math, masks and diagonal handling in CI; their speed is a GPU
question (``sigsim gpu-check``). Block level: the 70×50 block as one tile (two programs,
masked edges) and cut into 33-tiles (ragged), positives on and off the main diagonal or
absent, loss-only, both gradients and the sigmoid rings' second trip (``g_scale``), for fp32 and
bf16 operands, against the torch block math run in fp64 on the same (rounded) operands;
the softmax ring's statistics tiles (running row and column log-sum-exps, positives) too.
With bf16 operands the fused logits are accumulated in fp32, so the loss must also beat
the torch path's, whose product is rounded to bf16 first. Loss level: the rings and
sigmoid-allgather on two gloo ranks, per-rank upstream scalars and bf16 autocast included,
against the single-process reference (``loss_cases``).
"""

from __future__ import annotations

import importlib.util
import os
import traceback

import pytest
import torch
from loss_cases import Case, run_cases
from spawn import run_world

from profiling.losses import blocks, fused

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="needs triton (pip install triton)"
)
M, N, D = 70, 50, 40


def _operands(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(M, D, generator=gen), dim=1).to(dtype)
    y = torch.nn.functional.normalize(torch.randn(N, D, generator=gen), dim=1).to(dtype)
    return x, y


def _sigmoid(x, y, t, bias, *, diag, tile, grads, g_scale=None):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    dx = torch.zeros(M, D, dtype=acc) if grads == "both" else None
    dy = torch.zeros(N, D, dtype=acc) if grads != "none" else None
    sums = torch.zeros(2, dtype=acc)
    tt, bb, gs = (v.to(acc) if v is not None else None for v in (t, bias, g_scale))
    blocks.sigmoid_block(x, y, tt, bb, diag=diag, tile=tile, dx=dx, dy=dy, sums=sums, g_scale=gs)
    return sums, dx, dy


def _close(got, want, rtol, what):
    scale = float(want.abs().max()) or 1.0
    err = float((got.double() - want).abs().max())
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol} x {scale:.3g}"
    return err


TOL = {torch.float32: 1e-5, torch.bfloat16: 1.5e-2}
"""Relative to the reference's largest element. fp32: fp32 arithmetic. bf16 operands: the
logits are exact fp32 sums of exact bf16 products; ``G`` is rounded once to bf16
(relative ``2^-9``) for the gradient matmuls, and their product once more."""


def sigmoid_tiles_match_fp64(dtype):
    x, y = _operands(dtype)
    t, bias = torch.tensor(12.0), torch.tensor(-9.0)
    for tile in (None, 33):
        for diag in (None, 0, 7, -5):
            for grads in ("none", "both"):
                case = f"tile={tile} diag={diag} grads={grads}"
                got = _sigmoid(x, y, t, bias, diag=diag, tile=tile, grads=grads)
                want = _sigmoid(x.double(), y.double(), t, bias, diag=diag, tile=tile, grads=grads)
                _close(got[0][:1], want[0][:1], 1e-6, f"loss {case}")
                if grads == "both":
                    _close(got[0][1:], want[0][1:], TOL[dtype], f"sum G {case}")
                    _close(got[1], want[1], TOL[dtype], f"Dx {case}")
                    _close(got[2], want[2], TOL[dtype], f"Dy {case}")
    # the second trip: text gradient alone, G scaled by this rank's upstream scalar
    g_scale = torch.tensor(-0.7)
    got = _sigmoid(x, y, t, bias, diag=3, tile=33, grads="dy", g_scale=g_scale)
    want = _sigmoid(x.double(), y.double(), t, bias, diag=3, tile=33, grads="dy", g_scale=g_scale)
    _close(got[2], want[2], TOL[dtype], "Dy, second trip")
    assert float(got[0].abs().sum()) == 0.0  # the second trip adds no loss or ΣG


def bf16_logits_are_not_rounded():
    """The fused loss over bf16 operands is far closer to fp64 than the torch path's,
    which rounds each product to bf16 before the fp32 elementwise work."""
    x, y = _operands(torch.bfloat16, seed=4)
    t, bias = torch.tensor(15.0), torch.tensor(-8.0)
    want = _sigmoid(x.double(), y.double(), t, bias, diag=0, tile=None, grads="none")[0][0]
    fused_loss = _sigmoid(x, y, t, bias, diag=0, tile=None, grads="none")[0][0]
    os.environ[fused.SWITCH] = ""
    try:
        torch_loss = _sigmoid(x, y, t, bias, diag=0, tile=None, grads="none")[0][0]
    finally:
        os.environ[fused.SWITCH] = "1"
    fused_err, torch_err = (abs(float(v) - float(want)) for v in (fused_loss, torch_loss))
    assert fused_err * 10 < torch_err, (fused_err, torch_err)


def softmax_grad_tiles_match_fp64(dtype):
    x, y = _operands(dtype, seed=1)
    gen = torch.Generator().manual_seed(2)
    row_lse, col_lse = 2 + torch.rand(M, generator=gen), 2 + torch.rand(N, generator=gen)
    t, row_coef, col_coef = torch.tensor(11.0), torch.tensor(0.25), torch.tensor(-0.5)

    def grad(xx, yy, acc):
        dx, dy = torch.zeros(M, D, dtype=acc), torch.zeros(N, D, dtype=acc)
        stats = dict(row_lse=row_lse.to(acc), row_coef=row_coef.to(acc))
        stats.update(col_lse=col_lse.to(acc), col_coef=col_coef.to(acc))
        blocks.softmax_grad(xx, yy, t.to(acc), tile=tile, **stats, diag=diag, dx=dx, dy=dy)
        return dx, dy

    for tile in (None, 33):
        for diag in (None, 0, 9, -4):
            got = grad(x, y, torch.float32)
            want = grad(x.double(), y.double(), torch.float64)
            for name, g, w in zip(("Dx", "Dy"), got, want, strict=True):
                _close(g, w, TOL[dtype], f"{name} tile={tile} diag={diag}")


def test_switch_refuses_cpu_without_the_interpreter_and_leaves_fp64_alone(monkeypatch):
    monkeypatch.setenv(fused.SWITCH, "1")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(fused.FusedBlocksUnavailable, match="TRITON_INTERPRET=1"):
        fused.use_fused(torch.zeros(2, 2))
    assert fused.use_fused(torch.zeros(2, 2, dtype=torch.float64)) is False
    monkeypatch.setenv(fused.SWITCH, "")
    assert fused.use_fused(torch.zeros(2, 2)) is False


def softmax_stats_tiles_match_fp64(dtype):
    x, y = _operands(dtype, seed=3)
    gen = torch.Generator().manual_seed(4)
    start_row, start_col = torch.randn(M, generator=gen), torch.randn(N, generator=gen)
    t = torch.tensor(13.0)

    def stats(xx, yy, acc):
        row_lse, col_lse = start_row.to(acc, copy=True), start_col.to(acc, copy=True)
        sums = torch.zeros(1, dtype=acc)
        blocks.softmax_stats(
            xx, yy, t.to(acc), tile=tile, row_lse=row_lse, col_lse=col_lse, diag=diag, sums=sums
        )
        return row_lse, col_lse, sums

    for tile in (None, 33):
        for diag in (None, 0, 9, -4):
            got = stats(x, y, torch.float32)
            want = stats(x.double(), y.double(), torch.float64)
            for name, g, w in zip(("row lse", "column lse", "positives"), got, want, strict=True):
                _close(g, w, 1e-5, f"{name} tile={tile} diag={diag}")


BLOCK_CHECKS = {
    "sigmoid tiles fp32": lambda: sigmoid_tiles_match_fp64(torch.float32),
    "sigmoid tiles bf16": lambda: sigmoid_tiles_match_fp64(torch.bfloat16),
    "bf16 logits not rounded": bf16_logits_are_not_rounded,
    "softmax stats tiles fp32": lambda: softmax_stats_tiles_match_fp64(torch.float32),
    "softmax stats tiles bf16": lambda: softmax_stats_tiles_match_fp64(torch.bfloat16),
    "softmax grad tiles fp32": lambda: softmax_grad_tiles_match_fp64(torch.float32),
    "softmax grad tiles bf16": lambda: softmax_grad_tiles_match_fp64(torch.bfloat16),
}

LOSS_CASES = [
    Case("sigmoid-ring", 2, 24, 16, "fp32", upstream=(0.5, 3.0), seed=5),
    Case("sigmoid-ring-bidir", 2, 24, 16, "fp32", seed=7),
    Case("sigmoid-allgather", 2, 24, 16, "fp32", seed=8),
    Case("softmax-ring", 2, 24, 16, "fp32", seed=9),
    Case("sigmoid-ring", 2, 24, 16, "fp32", autocast="bf16", half_matmul=True, seed=10),
    Case("softmax-ring", 2, 24, 16, "fp32", autocast="bf16", half_matmul=True, seed=11),
]


def _worker(rank: int, world: int, cases: list) -> dict:
    """Triton reads TRITON_INTERPRET when it is first imported: set it before, in a fresh
    process (the test process may have imported Triton for another test)."""
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ[fused.SWITCH] = "1"
    blocks_checked = {}
    if rank == 0:
        for name, check in BLOCK_CHECKS.items():
            try:
                check()
                blocks_checked[name] = None
            except Exception:  # reported by the test, with its traceback
                blocks_checked[name] = traceback.format_exc(limit=3)
    return {"blocks": blocks_checked, "losses": run_cases(rank, world, cases)}


@pytest.fixture(scope="module")
def results():
    return run_world(2, _worker, LOSS_CASES, timeout_s=300)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("check", BLOCK_CHECKS)
def test_tile_kernels_match_fp64(results, check):
    error = results[0]["blocks"][check]
    assert error is None, error


@pytest.mark.slow
@pytest.mark.multiprocess
def test_losses_with_fused_tiles_match_reference(results):
    per_rank = [r["losses"] for r in results]
    errors = [e for rank_results in per_rank for r in rank_results for e in r["errors"]]
    assert not errors, "\n".join(errors[:10])
    assert sum(len(r) for r in per_rank) == 2 * len(LOSS_CASES)
