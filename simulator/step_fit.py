"""Calibration from real loss steps: the fixed costs and block-math rates the model prices.

Bare matmul microbenchmarks miss most of what a short CPU step pays: the loss module's
checks, the autograd ``Function`` and engine, a dozen eager operators per block, and
threads that do not scale on small blocks. So this module times the registered losses
themselves, through ``profiling.measure.measure_point`` (the profiler's own method: a
barrier before each step, ``perf_counter``, max over ranks, median over steps), on
*calibration* configurations, and fits the model's compute parameters by least squares
on each method's own schedule. With ``P = Σ_p r_p·[phase p computes]``, ``F = Σ_p r_p·F_p``
and ``E = Σ_p r_p·E_p`` read from the schedule at ``W = 1``::

    one thread:     t = o_step + o·P + F / R_mm + E / R_pw     → o_step, o, R_mm, R_pw
    cores threads:  t = o_step + o·P + (F / R_mm + E / R_pw) / c  → c, e = (c − 1)/(cores − 1)

(the model's ``c = 1 + (n − 1)·e`` with ``n`` threads; see :mod:`simulator.model`). The
one-thread fit is weighted by ``1/t`` (relative error), with no negative term; points
whose relative residual exceeds :data:`OUTLIER_FACTOR` times the median one (a step
that met a busy machine) are dropped once and the fit repeated, and the count is written
into the sources. ``c`` is the median over points of the ratio of the predicted rate
terms to the measured time less the fixed terms, over the points where the rate terms
are at least half the step (a robust estimate: one descheduled thread cannot move it).

Calibration set (:data:`CALIBRATION_BATCHES`, :data:`CALIBRATION_DIMS`, every registered
method, ``W = 1``): none of it is in the default experiment's validation grid
(``experiments/configs/default.toml``: ``b ∈ {32, 128, 512}``, ``d = 64``), so the
validation table measures prediction, not the fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

CALIBRATION_BATCHES: tuple[int, ...] = (16, 48, 96, 192, 384)
CALIBRATION_DIMS: tuple[int, ...] = (32, 128)
QUICK_BATCHES: tuple[int, ...] = (16, 96)
RANK_CHECK_LABEL = "rank_check"
OUTLIER_FACTOR = 4.0
"""A point whose |relative residual| exceeds this times the median one is dropped once."""


@dataclass(frozen=True, slots=True)
class StepPoint:
    """One calibration configuration and what the schedule says it does at ``W = 1``."""

    method: str
    batch: int
    dim: int
    dtype: str
    compute_phases: float
    """P: phase repetitions that compute (each pays the per-phase overhead)."""
    matmul_flops: float
    """F: matmul FLOPs of the step."""
    pointwise_elems: float
    """E: elementwise elements of the step."""
    collective_calls: float = 0.0
    """K: all-gather / reduce-scatter calls that move nothing at ``W = 1`` (the rank
    check is skipped there by the code, so it is not counted)."""


def step_points(methods, batches, dims, dtype: str) -> list[StepPoint]:
    """The calibration points with their schedule features (``W = 1``, defaults options)."""
    from profiling.losses import get_method
    from profiling.losses.registry import Shape

    points = []
    for name in methods:
        method = get_method(name)
        for b in batches:
            for d in dims:
                schedule = method.schedule(Shape.of(1, b, d, dtype))
                phases = flops = elems = calls = 0.0
                for phase in schedule.phases:
                    repeat = float(np.asarray(phase.repeat))
                    f = float(np.asarray(phase.matmul_flops))
                    e = float(np.asarray(phase.pointwise_elems))
                    phases += repeat * (f + e > 0)
                    flops += repeat * f
                    elems += repeat * e
                    calls += repeat * sum(called_at_world_one(t) for t in phase.transfers)
                points.append(StepPoint(name, b, d, dtype, phases, flops, elems, calls))
    return points


def called_at_world_one(transfer) -> bool:
    """Whether the code calls this collective at ``W = 1`` (every one but the rank check,
    which ``profiling.losses.checks.check_ranks`` skips on one rank)."""
    return transfer.op != "p2p" and transfer.label != RANK_CHECK_LABEL


def step_worker(rank: int, world: int, points: list[dict], steps: int, warmup: int):
    """Inside a process group: the profiler's step time of every point; rank 0 returns
    ``[(median_s, min_s)]`` in order, other ranks None."""
    from profiling import traffic
    from profiling.measure import DistGroup, PointConfig, measure_point

    device = torch.device("cpu")
    group, transport = DistGroup(device), traffic.RecordingTransport()
    out = []
    for point in points:
        config = PointConfig(
            **point, world=world, steps=steps, warmup=warmup, profile=False, device="cpu"
        )
        measured = measure_point(config, group, transport, device)
        out.append((measured["step_time_s"]["median"], measured["step_time_s"]["min"]))
    return out if rank == 0 else None


def _weighted_nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares of ``y ≈ x @ c`` weighted by ``1/y`` (active set)."""
    active = list(range(x.shape[1]))
    weights = 1.0 / np.maximum(y, 1e-12)
    coef = np.zeros(x.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(x[:, active] * weights[:, None], y * weights, rcond=None)
        if np.all(sol >= 0):
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return coef


def features(points: list[StepPoint]) -> np.ndarray:
    """Columns: 1 (o_step), P (o), K (k), F (1/R_mm), E (1/R_pw)."""
    return np.array(
        [
            [1.0, p.compute_phases, p.collective_calls, p.matmul_flops, p.pointwise_elems]
            for p in points
        ]
    )


def _robust_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted NNLS, then once more without the points far off the first fit."""
    coef = _weighted_nnls(x, y)
    rel = np.abs(x @ coef - y) / y
    keep = rel <= OUTLIER_FACTOR * max(float(np.median(rel)), 1e-3)
    if keep.sum() >= x.shape[1] and not keep.all():
        coef = _weighted_nnls(x[keep], y[keep])
    else:
        keep = np.ones(len(y), dtype=bool)
    return coef, keep


def _quality(fitted: np.ndarray, y: np.ndarray, keep: np.ndarray) -> dict[str, Any]:
    rel = np.abs(fitted - y) / y
    return {
        "points": int(keep.sum()),
        "dropped": int((~keep).sum()),
        "median_rel_err": float(np.median(rel[keep])),
        "max_rel_err": float(np.max(rel[keep])),
    }


def fit_one_thread(points: list[StepPoint], seconds) -> dict[str, Any]:
    """Fit ``t = o_step + o·P + k·K + F/R_mm + E/R_pw`` (module docstring)."""
    x, y = features(points), np.asarray(seconds, dtype=np.float64)
    if len(points) < x.shape[1]:
        raise ValueError(f"a step fit needs at least {x.shape[1]} points, got {len(points)}")
    coef, keep = _robust_fit(x, y)
    if coef[3] <= 0:
        raise ValueError("the step fit found no matmul cost: the calibration blocks are too small")
    return {
        "step_overhead_s": float(coef[0]),
        "phase_overhead_s": float(coef[1]),
        "collective_call_s": float(coef[2]),
        "matmul_rate": 1.0 / float(coef[3]),
        "pointwise_rate": 1.0 / float(coef[4]) if coef[4] > 0 else float("inf"),
        **_quality(x @ coef, y, keep),
    }


def split_one_thread(points: list[StepPoint], one_thread: dict[str, Any]):
    """Per point, the one-thread fit's fixed seconds and rate-bound seconds."""
    x = features(points)
    fixed = (
        x[:, 0] * one_thread["step_overhead_s"]
        + x[:, 1] * one_thread["phase_overhead_s"]
        + x[:, 2] * one_thread["collective_call_s"]
    )
    rates = x[:, 3] / one_thread["matmul_rate"] + x[:, 4] / one_thread["pointwise_rate"]
    return fixed, rates


def fit_threads(points: list[StepPoint], seconds, one_thread: dict[str, Any], threads: int):
    """Fit ``t = A·fixed₁ + rates₁ / c`` on steps timed with ``threads`` threads.

    ``A = 1 + (n − 1)·g`` (fixed costs grow with threads: fork/join, spinning workers)
    and ``c = 1 + (n − 1)·e`` (the rate terms' speedup; ``e < 0`` when more threads are
    slower, as on a busy machine). Returns ``thread_overhead_growth`` g ≥ 0 and
    ``parallel_efficiency`` e, clipped so that ``c`` stays in [1/n, n].
    """
    if threads <= 1:
        return {"thread_overhead_growth": 0.0, "parallel_efficiency": 1.0, "points": 0}
    y = np.asarray(seconds, dtype=np.float64)
    fixed, rates = split_one_thread(points, one_thread)
    coef, keep = _robust_fit(np.column_stack([fixed, rates]), y)
    growth = max(0.0, (coef[0] - 1.0) / (threads - 1))
    speedup = 1.0 / coef[1] if coef[1] > 0 else float(threads)
    speedup = float(np.clip(speedup, 1.0 / threads, threads))
    return {
        "thread_overhead_growth": growth,
        "parallel_efficiency": (speedup - 1.0) / (threads - 1),
        "speedup": speedup,
        "threads": threads,
        **_quality(np.column_stack([fixed, rates]) @ coef, y, keep),
    }


def measure_steps(*, quick: bool, cores: int, timeout_s: float, console) -> dict[str, Any]:
    """Time the calibration set at ``W = 1`` on one thread and on ``cores`` threads (the
    launcher's policy for one rank), fit both; fp32 only (block math of fp32, bf16 and
    fp16 inputs)."""
    from profiling.losses import METHODS
    from simulator.procgroup import run_group

    batches = QUICK_BATCHES if quick else CALIBRATION_BATCHES
    points = step_points(METHODS, batches, CALIBRATION_DIMS, "fp32")
    configs = [
        {"method": p.method, "batch": p.batch, "dim": p.dim, "dtype": p.dtype} for p in points
    ]
    timed = {}
    for threads in sorted({1, cores}):
        with console.status(f"{len(points)} real loss steps at W=1 on {threads} thread(s)"):
            rows = run_group(1, step_worker, configs, 5, 2, threads=threads, timeout_s=timeout_s)[0]
        timed[threads] = [median for median, _ in rows]
    one = fit_one_thread(points, timed[1])
    threaded = fit_threads(points, timed[cores], one, cores)
    console.print(
        f"  real steps (W=1, 1 thread): per step {one['step_overhead_s'] * 1e6:.0f} us, per "
        f"phase {one['phase_overhead_s'] * 1e6:.1f} us, per collective call "
        f"{one['collective_call_s'] * 1e6:.1f} us, matmul {one['matmul_rate'] / 1e9:.3g} "
        f"GFLOP/s, elementwise {one['pointwise_rate'] / 1e9:.3g} Gelem/s; median rel err "
        f"{one['median_rel_err']:.3f}, max {one['max_rel_err']:.3f} over {one['points']} "
        f"points ({one['dropped']} dropped)"
    )
    if cores > 1:
        console.print(
            f"  real steps (W=1, {cores} threads): block-math speedup "
            f"{threaded['speedup']:.2f}, fixed costs x{1 + (cores - 1) * threaded['thread_overhead_growth']:.2f}; "
            f"median rel err {threaded['median_rel_err']:.3f} ({threaded['dropped']} dropped)"
        )
    return {"one_thread": one, "threads": threaded, "points": len(points)}
