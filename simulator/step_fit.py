"""Calibration from real loss steps: the fixed costs and block-math rates the model prices.

Bare matmul microbenchmarks miss most of what a short CPU step pays: the loss module's
checks, the autograd ``Function`` and engine, a dozen eager operators per block, and
threads that do not scale on small blocks. So this module times the registered losses
themselves, through ``profiling.measure.measure_point`` (the profiler's own method: a
barrier before each step, ``perf_counter``, max over ranks, then the model's
:data:`~simulator.model.STEP_STATISTIC` over steps: the lower quartile), on
*calibration* configurations, and fits the model's compute parameters by least squares
on each method's own schedule. With ``P = Σ_p r_p·[phase p computes]``, ``F = Σ_p r_p·F_p``
and ``E = Σ_p r_p·E_p`` read from the schedule at ``W = 1``::

    W = 1:  t = o_step + o·P + h·K + F / R_mm + E_sig / R_pw + E_soft / (ρ·R_pw)
                                                       → o_step, o, h, R_mm, R_pw, ρ

(``E_sig``, ``E_soft``: the elements of the sigmoid and of the softmax losses: their
elementwise passes cost differently per pair, so the two losses get their own rate;
``ρ`` is ``compute.softmax_pointwise_ratio``.)

The fit is weighted by ``1/t`` (relative error), with no negative term; points
whose relative residual exceeds :data:`OUTLIER_FACTOR` times the median one (a step
that met a busy machine) are dropped once and the fit repeated, and the count is written
into the sources.

Then the same configurations at ``W = min(2, cores)``, every rank busy, one thread each
(as ``profiling.launch`` runs them), in :data:`BUSY_LAUNCHES` fresh process groups, give
what one rank alone does not show: how much slower each rank computes when its
neighbours are busy too (``busy_rank_slowdown``) and the exposed cost of each exchange
or collective a rank waits on (``sync_us``), fitted by :func:`fit_busy_ranks` on the
model itself with every other number held.

Calibration set (:data:`CALIBRATION_BATCHES`, :data:`CALIBRATION_DIMS`, every registered
method, ``W = 1`` and ``W = min(2, cores)``): none of it is in the default experiment's validation grid
(``experiments/configs/default.toml``: ``b ∈ {32, 128, 512}``, ``d = 64``), so the
validation table measures prediction, not the fit.

At ``W = 1`` every point's timed steps (``measured.step_samples_s``) are kept beside its
statistic: the compute jitter fit (:mod:`simulator.jitter_fit`) reads their spread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

CALIBRATION_BATCHES: tuple[int, ...] = (16, 48, 96, 192, 384)
CALIBRATION_DIMS: tuple[int, ...] = (32, 128)
QUICK_BATCHES: tuple[int, ...] = (16, 96)
STEPS_ONE_RANK = 40
"""Timed steps per calibration point at ``W = 1``: as many as the default experiment
times, so that the lower quartile the fit reads (``simulator.model.STEP_STATISTIC``) is
the statistic the validation compares."""
STEPS_BUSY = 20
BUSY_LAUNCHES = 3
"""At ``W = min(2, cores)``: each point's lower quartile over ``STEPS_BUSY`` steps in each
of ``BUSY_LAUNCHES`` fresh process groups, then the median over groups. A two-rank
group keeps the scheduler's luck of its start for its whole life (fresh groups of one
point spread wider than windows of one group: ``docs/cost-model.md``), and a run's
validation points of one W share one group (``profiling.workers``), which may be any
group: the fit wants the typical one."""
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
    softmax: bool = False
    """Whether the method's loss is the softmax one (its elementwise rate is fitted apart:
    ``compute.softmax_pointwise_ratio``)."""


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
                    calls += repeat * sum(t.called_alone for t in phase.transfers)
                softmax = method.kind == "softmax"
                points.append(StepPoint(name, b, d, dtype, phases, flops, elems, calls, softmax))
    return points


def step_worker(rank: int, world: int, points: list[dict], steps: int, warmup: int):
    """Inside a process group: the profiler's step time of every point (the model's
    statistic over ``steps`` timed steps) and its timed steps' samples; rank 0 returns
    ``[(seconds, samples)]`` in order, others None."""
    from profiling import traffic
    from profiling.measure import DistGroup, PointConfig, measure_point
    from simulator.model import STEP_STATISTIC

    device = torch.device("cpu")
    group, transport = DistGroup(device), traffic.RecordingTransport()
    out = []
    for point in points:
        config = PointConfig(
            **point, world=world, steps=steps, warmup=warmup, profile=False, device="cpu"
        )
        measured = measure_point(config, group, transport, device)
        out.append((measured["step_time_s"][STEP_STATISTIC], measured["step_samples_s"]))
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
    """Columns: 1 (o_step), P (o), K (h), F (1/R_mm), E of the sigmoid losses (1/R_pw),
    E of the softmax losses (1/(ρ·R_pw), ``ρ``: ``softmax_pointwise_ratio``)."""
    return np.array(
        [
            [
                1.0,
                p.compute_phases,
                p.collective_calls,
                p.matmul_flops,
                0.0 if p.softmax else p.pointwise_elems,
                p.pointwise_elems if p.softmax else 0.0,
            ]
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
    """Fit ``t = o_step + o·P + h·K + F/R_mm + E/R_pw`` (``h``: ``collective_call_s``,
    the symbol of :mod:`simulator.model`)."""
    x, y = features(points), np.asarray(seconds, dtype=np.float64)
    if len(points) < x.shape[1]:
        raise ValueError(f"a step fit needs at least {x.shape[1]} points, got {len(points)}")
    coef, keep = _robust_fit(x, y)
    if coef[3] <= 0:
        raise ValueError("the step fit found no matmul cost: the calibration blocks are too small")
    sigmoid_rate = 1.0 / float(coef[4]) if coef[4] > 0 else float("inf")
    softmax_rate = 1.0 / float(coef[5]) if coef[5] > 0 else float("inf")
    has_both = x[:, 4].any() and x[:, 5].any()
    return {
        "step_overhead_s": float(coef[0]),
        "phase_overhead_s": float(coef[1]),
        "collective_call_s": float(coef[2]),
        "matmul_rate": 1.0 / float(coef[3]),
        "pointwise_rate": sigmoid_rate if x[:, 4].any() else softmax_rate,
        "softmax_pointwise_ratio": (
            softmax_rate / sigmoid_rate if has_both and np.isfinite(sigmoid_rate) else 1.0
        ),
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
    pointwise = one_thread["pointwise_rate"]
    softmax = pointwise * one_thread.get("softmax_pointwise_ratio", 1.0)
    rates = x[:, 3] / one_thread["matmul_rate"] + x[:, 4] / pointwise + x[:, 5] / softmax
    return fixed, rates


def fit_busy_ranks(configs: list[dict], seconds, hardware, ranks: int) -> dict[str, Any]:
    """Fit ``busy_rank_slowdown`` κ and ``sync_s`` w to steps timed at ``W = ranks`` (all
    ranks busy on one node, one thread each), holding every other number of ``hardware``.

    The model's step at slowdown ``s = 1 + (ranks − 1)·κ`` is ``T(s) + n·w``, ``n`` the
    exchanges and collective calls that move bytes (sync is exposed, so it adds linearly).
    For each ``s`` on a grid over [1, 5] the best ``w ≥ 0`` is closed-form (least squares
    weighted by ``1/t``); the ``s`` with the smallest weighted residual wins. Points whose
    relative residual exceeds :data:`OUTLIER_FACTOR` times the median are dropped once.
    """
    import dataclasses

    from simulator.model import predict

    if ranks < 2:
        raise ValueError(f"a busy-rank fit needs at least 2 ranks, got {ranks}")
    y = np.asarray(seconds, dtype=np.float64)
    if len(configs) != len(y) or len(y) < 2:
        raise ValueError(f"a busy-rank fit needs 2 or more timed points, got {len(y)}")

    def with_costs(slowdown: float, sync_s: float):
        compute = dataclasses.replace(
            hardware.compute, busy_rank_slowdown=(slowdown - 1.0) / (ranks - 1)
        )
        level = dataclasses.replace(hardware.intra_node, sync_s=sync_s)
        return dataclasses.replace(hardware, compute=compute, intra_node=level)

    def steps(hw) -> np.ndarray:
        out = np.empty(len(configs))
        for i, c in enumerate(configs):
            pred = predict(c["method"], ranks, c["batch"], c["dim"], c["dtype"], hardware=hw)
            out[i] = float(pred.step_time_s)
        return out

    base = steps(with_costs(1.0, 0.0))
    syncs = (steps(with_costs(1.0, 1.0)) - base).round()
    grid = np.arange(1.0, 5.0001, 0.02)
    curves = np.array([steps(with_costs(s, 0.0)) for s in grid])

    def solve(keep):
        best = None
        for slowdown, model in zip(grid, curves, strict=True):
            r, n, t = model[keep], syncs[keep], y[keep]
            denom = float(np.sum((n / t) ** 2))
            w = max(0.0, float(np.sum(n * (t - r) / t**2)) / denom) if denom > 0 else 0.0
            loss = float(np.sum(((r + n * w - t) / t) ** 2))
            if best is None or loss < best[0]:
                best = (loss, float(slowdown), w, model + syncs * w)
        return best[1:]

    keep = np.ones(len(y), dtype=bool)
    slowdown, sync_s, fitted = solve(keep)
    rel = np.abs(fitted - y) / y
    drop = rel > OUTLIER_FACTOR * max(float(np.median(rel)), 1e-3)
    if drop.any() and (~drop).sum() >= 2:
        keep = ~drop
        slowdown, sync_s, fitted = solve(keep)
    return {
        "busy_rank_slowdown": (slowdown - 1.0) / (ranks - 1),
        "slowdown": slowdown,
        "sync_s": sync_s,
        "ranks": ranks,
        **_quality(fitted, y, keep),
    }


RATE_BOUND_SHARE = 0.5
"""A calibration point whose rate-bound seconds (matmul and elementwise) are at least this
share of its fitted step is "rate-bound": the compute jitter is fitted on those."""


def rate_bound_points(configs: list[dict], one_thread: dict[str, Any]) -> list[int]:
    """Indices of the calibration points where the block math is at least
    :data:`RATE_BOUND_SHARE` of the one-thread fit's step (all points if fewer than four
    are). The simulator's compute jitter multiplies each compute event; on the smallest
    steps the fixed costs' noise, which does not grow with the work, would set it."""
    points = [
        next(p for p in step_points([c["method"]], [c["batch"]], [c["dim"]], c["dtype"]))
        for c in configs
    ]
    fixed, rates = split_one_thread(points, one_thread)
    share = rates / np.maximum(fixed + rates, 1e-30)
    chosen = [i for i, s in enumerate(share) if s >= RATE_BOUND_SHARE]
    return chosen if len(chosen) >= 4 else list(range(len(configs)))


def measure_steps(*, quick: bool, cores: int, timeout_s: float, console) -> dict[str, Any]:
    """Time the calibration set at ``W = 1`` and, with two or more cores, at ``W = min(2,
    cores)`` (every rank busy), one thread per rank as ``profiling.launch`` runs them; fit
    the one-rank step. fp32 only (block math of fp32, bf16 and fp16 inputs). The busy
    timings are returned for :func:`fit_busy_ranks`, which needs the communication fits."""
    from profiling.launch import launch_or_raise
    from profiling.losses import METHODS

    batches = QUICK_BATCHES if quick else CALIBRATION_BATCHES
    points = step_points(METHODS, batches, CALIBRATION_DIMS, "fp32")
    configs = [
        {"method": p.method, "batch": p.batch, "dim": p.dim, "dtype": p.dtype} for p in points
    ]
    with console.status(f"{len(points)} real loss steps at W=1"):
        rows = launch_or_raise(
            step_worker, (configs, STEPS_ONE_RANK, 2), world=1, threads=1, timeout_s=timeout_s
        )[0]
    one = fit_one_thread(points, [row[0] for row in rows])
    console.print(
        f"  real steps (W=1, 1 thread): per step {one['step_overhead_s'] * 1e6:.0f} us, per "
        f"phase {one['phase_overhead_s'] * 1e6:.1f} us, per collective call "
        f"{one['collective_call_s'] * 1e6:.1f} us, matmul {one['matmul_rate'] / 1e9:.3g} "
        f"GFLOP/s, elementwise {one['pointwise_rate'] / 1e9:.3g} Gelem/s (softmax x"
        f"{one['softmax_pointwise_ratio']:.2f}); median rel err "
        f"{one['median_rel_err']:.3f}, max {one['max_rel_err']:.3f} over {one['points']} "
        f"points ({one['dropped']} dropped)"
    )
    out: dict[str, Any] = {
        "one_thread": one,
        "points": len(points),
        "configs": configs,
        "one_thread_samples": [row[1] for row in rows],
    }
    ranks = min(2, cores)
    if ranks >= 2:
        per_launch = []
        for group in range(BUSY_LAUNCHES):
            with console.status(
                f"{len(points)} real loss steps at W={ranks}, every rank busy "
                f"(process group {group + 1} of {BUSY_LAUNCHES})"
            ):
                per_launch.append(
                    launch_or_raise(
                        step_worker,
                        (configs, STEPS_BUSY, 2),
                        world=ranks,
                        threads=1,
                        timeout_s=timeout_s,
                    )[0]
                )
        seconds = np.median(np.array([[row[0] for row in rows] for rows in per_launch]), axis=0)
        out["busy"] = {
            "ranks": ranks,
            "seconds": [float(t) for t in seconds],
            "samples": [[rows[i][1] for rows in per_launch] for i in range(len(points))],
        }
    return out
