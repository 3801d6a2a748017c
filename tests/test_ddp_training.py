"""The losses inside real DDP training equal single-process training on the global batch.

A tiny two-tower model (two linear towers on random data, L2-normalised features, a
learnable ``log t`` initialised at ``log 10`` and, for sigmoid, a learnable bias at
``-10``) is wrapped in ``DistributedDataParallel`` and trained with SGD with momentum on
W = 2 and 4 gloo ranks (one 4-rank process group for the module; each run on a subgroup
given to DDP and to the loss as ``group=``), each rank feeding its ``b`` rows of the
global batch to one of the five methods, and
compared with the same model trained in one process on the global batch with
``reference_loss``:

* fp64, 20 optimizer steps: every parameter equal to the reference's;
* fp64, 20 steps of 2-step gradient accumulation (each micro-batch its own global loss,
  gradients summed, DDP's ``no_sync()`` on the first): likewise;
* fp32, the DDP model under ``torch.compile`` (as open_clip compiles it; the loss stays
  eager), a few steps: equal to the same run in eager mode;
* fp32 under ``torch.autocast("cpu", dtype=torch.bfloat16)``: one step's gradients equal
  the reference's computed under the same autocast, within :data:`AUTOCAST_TOLERANCE`.

Tolerance of the fp64 runs (:data:`FP64_TOLERANCE`: rtol = atol = 1e-10). DDP's gradient
is the mean over ranks of the per-rank gradients, which the loss contract makes the
reference gradient exactly, so the runs differ only in the order of floating-point sums:
unit roundoff 1.1e-16 and sums of at most N·d = 128 products per entry give ~1e-14
relative per step; momentum SGD (lr 0.03, μ 0.9) carries one step's error into later
updates with weight at most lr/(1−μ) = 0.3, and 20 steps of a smooth model grow it by a
modest factor, so a correct method stays orders of magnitude below 1e-10. A wrong one
does not: the control run (each rank's loss over its own rows only, i.e. forgetting the
other ranks' negatives) is asserted to miss by more than :data:`CONTROL_MIN_DIFFERENCE`.

compile: inductor reorders fp32 sums (a few ulp, 1e-7 relative), amplified as above over
:data:`COMPILE_STEPS` steps: rtol 1e-4, atol 1e-5. autocast: bf16 keeps 8 bits of
mantissa (unit roundoff 3.9e-3). Under autocast the towers themselves run in bf16, and a
weight's gradient is a bf16 product summed over b rows per rank (W partial sums that DDP
then averages) in the distributed run but over all N rows in one product in the
reference, so the two round different sums: their difference scales with the gradient
tensor's magnitude, not each entry's. Hence rtol 2e-2 and an atol of 2e-3 times the
largest entry of each gradient tensor (measured need at W = 2: 3.0e-3 on a softmax
``text.weight`` gradient whose largest entry is 5; the reference's own bf16 vs fp32
gradients differ by up to 0.028 there).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist
from spawn import run_world

from profiling.losses import METHODS, build_loss, get_method, reference_loss

IN_IMAGE, IN_TEXT, DIM, BATCH = 12, 10, 8, 3
"""Tower input widths, embedding width d, rows per rank b."""
STEPS, COMPILE_STEPS = 20, 3
LR, MOMENTUM = 0.03, 0.9
WORLDS = (2, 4)
FP64_TOLERANCE = (1e-10, 1e-10)
"""(rtol, atol) of parameters after :data:`STEPS` fp64 steps (see the module docstring)."""
COMPILE_TOLERANCE = (1e-4, 1e-5)
CONTROL_MIN_DIFFERENCE = 1e-4
"""Smallest parameter difference the local-loss control must show (a wrong loss)."""
AUTOCAST_TOLERANCE = (2e-2, 2e-3)
"""(rtol, atol) of one step's bf16-autocast gradients against the autocast reference; atol
relative to each gradient tensor's largest entry (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class Run:
    method: str
    world: int
    mode: str
    """"fp64" (20 steps), "accum" (20 steps of 2 micro-batches), "control" (fp64, 20 steps,
    each rank's ``reference_loss`` over its own rows instead of the method), "compile"
    (fp32, a few steps, compiled against eager), "autocast" (fp32, one step's gradients)."""


class TwoTower(torch.nn.Module):
    """Two linear towers, normalised features, ``t = exp(log t)`` and (sigmoid) a bias."""

    def __init__(self, kind: str, dtype: torch.dtype, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.image = torch.nn.Linear(IN_IMAGE, DIM, dtype=dtype)
        self.text = torch.nn.Linear(IN_TEXT, DIM, dtype=dtype)
        self.log_t = torch.nn.Parameter(torch.tensor(math.log(10), dtype=dtype))
        self.bias = (
            torch.nn.Parameter(torch.tensor(-10.0, dtype=dtype)) if kind == "sigmoid" else None
        )

    def forward(self, images, texts):
        x = torch.nn.functional.normalize(self.image(images), dim=1)
        y = torch.nn.functional.normalize(self.text(texts), dim=1)
        return x, y, self.log_t.exp(), self.bias


def global_batch(world: int, step: int, micro: int, dtype: torch.dtype):
    """Images and texts of the global batch (the same on every rank)."""
    gen = torch.Generator().manual_seed(1000 * step + micro)
    n = world * BATCH
    images = torch.randn(n, IN_IMAGE, generator=gen, dtype=torch.float64)
    texts = torch.randn(n, IN_TEXT, generator=gen, dtype=torch.float64)
    return images.to(dtype), texts.to(dtype)


def train(model, loss_of, world, steps, accum, dtype, rows=None, sync=None, autocast=False):
    """``steps`` SGD-with-momentum steps of ``accum`` micro-batches (gradients summed).

    ``sync``: DDP's ``no_sync``, entered for every micro-batch but the last. ``autocast``:
    forward and loss under bf16 autocast, backward outside it (as ``torch.amp`` says).
    """
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    for step in range(steps):
        opt.zero_grad()
        for micro in range(accum):
            images, texts = global_batch(world, step, micro, dtype)
            if rows is not None:
                images, texts = images[rows], texts[rows]
            last = micro == accum - 1
            with contextlib.nullcontext() if sync is None or last else sync():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    loss = loss_of(*model(images, texts))
                loss.backward()
        opt.step()


def params_of(model) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v.detach().clone() for k, v in model.named_parameters()}


def grads_of(model) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v.grad.clone() for k, v in model.named_parameters()}


def largest_difference(got: dict, want: dict, rtol: float, atol: float, relative=False):
    """Largest ``|got − want|`` over all parameters, whether all are within tolerance, and
    the names of those that are not. ``relative``: atol times each tensor's largest entry."""
    worst, bad = 0.0, []
    for name, w in want.items():
        g = got[name].to(w.dtype)
        worst = max(worst, (g - w).abs().max().item())
        scale = max(1.0, w.abs().max().item()) if relative else 1.0
        if not torch.allclose(g, w, rtol=rtol, atol=atol * scale):
            bad.append(name)
    return worst, not bad, bad


def run_one(run: Run, group) -> dict:
    kind = get_method(run.method).kind
    rank = dist.get_rank(group)
    rows = slice(rank * BATCH, (rank + 1) * BATCH)
    dtype = torch.float64 if run.mode in ("fp64", "accum", "control") else torch.float32
    accum = 2 if run.mode == "accum" else 1
    steps = COMPILE_STEPS if run.mode == "compile" else 1 if run.mode == "autocast" else STEPS
    loss_fn = build_loss(run.method, group=group)
    if run.mode == "control":
        loss_fn = lambda *a: reference_loss(kind, *a)  # noqa: E731
    autocast = run.mode == "autocast"

    def ddp_run(compiled: bool):
        model = TwoTower(kind, dtype)
        ddp = torch.nn.parallel.DistributedDataParallel(model, process_group=group)
        forward = torch.compile(ddp) if compiled else ddp
        train(forward, loss_fn, run.world, steps, accum, dtype, rows, ddp.no_sync, autocast)
        return model

    reference = TwoTower(kind, dtype)
    initial = params_of(reference)
    if run.mode == "compile":
        want = params_of(ddp_run(compiled=False))
        got = params_of(ddp_run(compiled=True))
        rtol, atol = COMPILE_TOLERANCE
    else:
        loss_of = lambda *a: reference_loss(kind, *a)  # noqa: E731
        train(reference, loss_of, run.world, steps, accum, dtype, autocast=autocast)
        model = ddp_run(compiled=False)
        want, got = params_of(reference), params_of(model)
        rtol, atol = FP64_TOLERANCE
        if autocast:
            want, got = grads_of(reference), grads_of(model)
            initial = {k: torch.zeros_like(v) for k, v in want.items()}
            rtol, atol = AUTOCAST_TOLERANCE
    worst, ok, bad = largest_difference(got, want, rtol, atol, relative=autocast)
    moved = max((want[k] - initial[k]).abs().max().item() for k in initial)  # autocast: |grad|
    out = {"run": run, "rank": rank, "difference": worst, "ok": ok, "bad": bad, "moved": moved}
    if autocast:  # what the tolerance would need, and bf16's own effect on the reference
        out["atol_needed"] = max(
            (got[k] - want[k]).abs().sub(rtol * want[k].abs()).max().item() for k in want
        )
        fp32 = TwoTower(kind, dtype)
        train(fp32, loss_of, run.world, steps, accum, dtype)
        out["bf16_vs_fp32"] = largest_difference(grads_of(fp32), want, rtol, atol)[0]
    return out


def worker(rank: int, world: int, runs: list[Run]) -> list[dict]:
    """Every run on this rank (ranks outside a run's world skip it); errors are recorded.

    Each run has its own subgroup (ranks ``0..W−1``): a method that raises between posting
    a send and waiting for it leaves its messages on that group, not for the next run.
    """
    groups = [dist.new_group(list(range(run.world))) for run in runs]
    results = []
    for run, group in zip(runs, groups, strict=True):
        if rank >= run.world:
            continue
        try:
            results.append(run_one(run, group))
        except Exception as exc:  # recorded, so one failing mode leaves the others' verdicts
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            results.append({"run": run, "rank": rank, "error": message})
    return results


RUNS = [Run(m, w, mode) for mode in ("fp64", "accum") for m in METHODS for w in WORLDS]
RUNS += [Run(m, 2, "control") for m in ("sigmoid-ring", "softmax-ring")]
RUNS += [Run(m, 2, "compile") for m in METHODS]
RUNS += [Run(m, w, "autocast") for m in METHODS for w in WORLDS]


@pytest.fixture(scope="module")
def results():
    per_rank = run_world(max(WORLDS), worker, RUNS, timeout_s=600)
    return [r for rank_results in per_rank for r in rank_results]


def _check(results, mode: str, min_moved: float) -> None:
    mine = [r for r in results if r["run"].mode == mode]
    assert len(mine) == sum(r.world for r in RUNS if r.mode == mode)
    errors = [f"{r['run']} rank {r['rank']}: {r['error']}" for r in mine if "error" in r]
    worst, scale = {}, {}
    for r in mine:
        if "error" not in r:
            key = r["run"].method
            worst[key] = max(worst.get(key, 0.0), r["difference"])
            scale[key] = max(scale.get(key, 0.0), r["moved"])
            if not r["ok"]:
                errors.append(
                    f"{r['run']} rank {r['rank']}: largest difference {r['difference']:.3g}, "
                    f"out of tolerance: {', '.join(r['bad'])}"
                )
            if r["moved"] < min_moved:
                errors.append(f"{r['run']}: parameters moved only {r['moved']:.3g}")
    print(
        f"\n{mode}: largest |difference| per method (largest |change| of the reference): "
        + ", ".join(f"{m} {v:.2g} ({scale[m]:.2g})" for m, v in worst.items())
    )
    assert not errors, "\n".join(errors)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ddp_fp64_matches_single_process_training(results):
    _check(results, "fp64", min_moved=0.1)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ddp_control_with_a_wrong_loss_misses_the_reference(results):
    mine = [r for r in results if r["run"].mode == "control"]
    assert len(mine) == 4 and not any("error" in r for r in mine), mine
    print("\ncontrol: " + ", ".join(f"{r['run'].method} {r['difference']:.2g}" for r in mine))
    for r in mine:
        assert r["difference"] > CONTROL_MIN_DIFFERENCE, r
        assert not r["ok"], r


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ddp_gradient_accumulation_matches_single_process_training(results):
    _check(results, "accum", min_moved=0.1)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ddp_compiled_towers_match_eager(results):
    _check(results, "compile", min_moved=1e-2)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ddp_autocast_bf16_one_step_gradients_match_reference(results):
    for r in results:
        if r["run"].mode == "autocast" and "error" not in r and r["rank"] == 0:
            print(
                f"{r['run']}: atol needed at rtol {AUTOCAST_TOLERANCE[0]}: "
                f"{r['atol_needed']:.2g}; reference bf16 vs fp32: {r['bf16_vs_fp32']:.2g}"
            )
    _check(results, "autocast", min_moved=1e-3)
