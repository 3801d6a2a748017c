"""Fit this machine's jitter (:class:`simulator.variability.Jitter`, per event kind) from
per-call timings, so that the base costs and the jitter count nothing twice.

The base costs of a calibrated profile are lower quartiles
(:data:`simulator.model.STEP_STATISTIC`): the communication fits read the lower quartile
of each microbenchmark case's repetitions, the compute fits the lower quartile of each
calibration point's timed steps. That lower quartile is the jitter-free part. Jitter is
what lies above it, as multipliers ``m = t / q25`` of the same repetitions, so a jittered
event's median is ``base · median(m)`` (above 1) and nothing is counted twice.

* ``p2p`` and ``collective``: each exchange and collective timed on its own
  (:func:`simulator.microbench.comm_worker`: a barrier, then one call, the maximum over
  ranks; one p2p one way and both ways, all-gathers and reduce-scatters, every size),
  at ``W ≤ cores`` (beyond, processor sharing and ``oversubscribed_wait_us`` price the
  extra). Every case's multipliers are pooled per kind and both distributions are fitted
  to their p10, p25, median, p75 and p90 (least squares on the logs); the closer one is
  kept. Where the microbenchmark's ranks filled the cores, to p10..p75 only
  (:data:`BODY_QUANTILES`): the tail above is the scheduler's, priced by ``preemption``.
* ``compute``: the simulator draws one multiplier per compute event (a block, a phase's
  fixed cost), many per step, while a step is timed whole, so a per-event ``σ`` cannot be
  read off the step's spread. It is fitted through the simulator: the calibration's real
  loss steps of one rank alone (``W = 1``: compute only; what busy ranks add on top, the
  waits and their wake-ups, is the communication jitter's and the simulator's to
  predict), each point's samples over its own lower quartile, pooled; for each
  distribution and ``σ`` on :data:`SIGMA_GRID` the same points are simulated on the
  profile, their samples over their own lower quartile pooled the same way, and the ``σ``
  whose pooled median and p90 are closest (log error) wins; its median is then set so
  that the simulated lower quartile equals the closed form's (the base). Each fit says
  how close it came (``log_err``).
* ``preemption`` (:func:`fit_preemption`, shared-core machines): where ranks fill the
  cores, steps also meet whole scheduler stalls, additive, not multipliers (a stalled
  step at ``W = 2`` on the 2-core VM is 3–4 ms late whatever its length). Fitted through
  the simulator like ``compute``, from the calibration's real loss steps at
  ``W = min(2, cores)``, every rank busy: stall length and rates on grids, pooled
  median, p75 and p90 over each process group's lower quartile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from simulator.variability import Jitter

SIGMA_GRID: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 1.4, 2.0)
"""Per-event σ tried for the compute fit."""
COMPUTE_POINTS = 12
"""Calibration points the compute fit simulates (spread evenly over the set)."""
SIM_STEPS = 200
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
BODY_QUANTILES = (0.1, 0.25, 0.5, 0.75)
"""What a communication jitter is fitted to where the microbenchmark's ranks filled the
cores: there a call's upper tail is the scheduler's stalls, which the preemption fit
(:func:`fit_preemption`) prices; fitting the jitter to it as well would count them twice."""
COMM_KINDS = {"p2p": "p2p", "p2p_bidir": "p2p", "all_gather": "collective",
              "reduce_scatter": "collective"}  # fmt: skip


def multipliers(samples: Sequence[float]) -> np.ndarray:
    """``t / q25`` of one case's repetitions (the lower quartile: the base cost)."""
    t = np.asarray(samples, dtype=np.float64)
    if t.size < 3 or not np.all(t > 0):
        raise ValueError(f"a jitter fit needs 3 or more positive timings per case, got {t.size}")
    return t / np.quantile(t, 0.25)


def _jitter_quantiles(jitter: Jitter, qs=QUANTILES) -> np.ndarray:
    """Exact quantiles of one event's multiplier."""
    q = np.asarray(qs)
    if jitter.constant:
        return np.full(q.shape, jitter.median)
    if jitter.distribution == "lognormal":
        z = np.array([NormalDist().inv_cdf(v) for v in q])
        return jitter.median * np.exp(jitter.sigma * z)
    tail = -np.log1p(-q) * jitter.sigma  # exponential of mean σ
    return jitter.median * (1.0 + tail) / (1.0 + jitter.sigma * math.log(2))


def fit_direct(m: np.ndarray, quantiles: Sequence[float] = QUANTILES) -> dict[str, Any]:
    """The distribution of multipliers ``m`` themselves (one draw per event): each
    candidate's median and σ by least squares on the log of the quantiles
    :data:`QUANTILES` (lognormal: a line in the normal scores; exponential: σ on a grid,
    the median in closed form), the closer one (RMS log error) kept."""
    observed = np.quantile(m, quantiles)
    logs = np.log(observed)
    z = np.array([NormalDist().inv_cdf(q) for q in quantiles])
    sigma, intercept = np.polyfit(z, logs, 1)
    candidates = [Jitter(distribution="lognormal", median=float(np.exp(intercept)),
                         sigma=float(max(sigma, 0.0)))]  # fmt: skip
    best_exp = None
    for s in np.geomspace(1e-3, 50.0, 400):
        shape = np.log(
            _jitter_quantiles(Jitter(distribution="exponential", sigma=float(s)), quantiles)
        )
        log_median = float(np.mean(logs - shape))
        err = float(np.mean((shape + log_median - logs) ** 2))
        if best_exp is None or err < best_exp[0]:
            best_exp = (err, float(s), log_median)
    candidates.append(
        Jitter(distribution="exponential", median=float(np.exp(best_exp[2])), sigma=best_exp[1])
    )
    scored = [
        (float(np.sqrt(np.mean(np.log(_jitter_quantiles(j, quantiles) / observed) ** 2))), j)
        for j in candidates
    ]
    err, best = min(scored, key=lambda s: s[0])
    return {"jitter": best, "log_err": err, "samples": int(m.size), "observed": observed.tolist()}


def fit_comm_jitter(cases, cores: int) -> dict[str, dict[str, Any]]:
    """Per kind from ``[(op, world, bytes_per_rank, [per-call seconds])]`` (module doc)."""
    pooled: dict[str, list[np.ndarray]] = {}
    within = [c for c in cases if c[1] <= cores] or list(cases)
    for op, _world, _nbytes, samples in within:
        pooled.setdefault(COMM_KINDS[op], []).append(multipliers(samples))
    out = {}
    for kind, parts in sorted(pooled.items()):
        fills = any(c[1] >= cores for c in within if COMM_KINDS[c[0]] == kind)
        fit = fit_direct(np.concatenate(parts), BODY_QUANTILES if fills else QUANTILES)
        fit["quantiles"] = list(BODY_QUANTILES if fills else QUANTILES)
        fit["cases"] = len(parts)
        fit["worlds"] = sorted({c[1] for c in within if COMM_KINDS[c[0]] == kind})
        out[kind] = fit
    return out


def _pooled(per_point: Sequence[Sequence[float]]) -> np.ndarray:
    return np.concatenate([multipliers(s) for s in per_point])


def fit_compute_jitter(
    configs: Sequence[dict], samples: Sequence[Sequence[float]], hardware, world: int,
    comm: dict[str, Jitter], *, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Per-event compute jitter that makes the simulated steps spread as the measured ones
    (module docstring); ``configs``: ``{method, batch, dim, dtype}`` per point, ``samples``
    its timed steps at ``world`` ranks; ``comm``: the communication jitter to hold."""
    from simulator.simulate import simulate

    if len(configs) != len(samples) or not configs:
        raise ValueError(f"a compute jitter fit needs samples per point, got {len(samples)}")
    pick = np.unique(np.linspace(0, len(configs) - 1, min(COMPUTE_POINTS, len(configs))).round())
    points = [configs[int(i)] for i in pick]
    observed = np.quantile(_pooled([samples[int(i)] for i in pick]), QUANTILES)

    def run(jitter: Jitter):
        kinds = {**comm, "compute": jitter}
        sims = [
            simulate(
                c["method"],
                world,
                c["batch"],
                c["dim"],
                c["dtype"],
                hardware,
                steps=SIM_STEPS,
                seed=seed,
                jitter=kinds,
            )
            for c in points
        ]
        return sims, np.quantile(_pooled([s.step_time_s for s in sims]), QUANTILES)

    best = None
    for distribution in ("lognormal", "exponential"):
        for sigma in SIGMA_GRID:
            if sigma == 0 and distribution == "exponential":
                continue
            jitter = Jitter(distribution=distribution, sigma=sigma)
            sims, simulated = run(jitter)
            err = float(np.sqrt(np.mean(np.log(simulated[[2, 4]] / observed[[2, 4]]) ** 2)))
            if best is None or err < best[0]:
                best = (err, jitter, sims, simulated)
    err, jitter, sims, simulated = best
    # the median that puts the simulated lower quartile on the closed form (the base)
    ratio = np.median([np.quantile(s.step_time_s, 0.25) / s.predicted_s for s in sims])
    median = float(1.0 / ratio) if ratio > 0 else 1.0
    fitted = Jitter(distribution=jitter.distribution, sigma=jitter.sigma, median=median)
    return {
        "jitter": fitted,
        "log_err": err,
        "samples": int(sum(len(samples[int(i)]) for i in pick)),
        "points": len(points),
        "world": int(world),
        "observed": observed.tolist(),
        "simulated": simulated.tolist(),
    }


STALL_GRID_S: tuple[float, ...] = (0.002, 0.003, 0.004, 0.005, 0.006)
"""Stall lengths tried by :func:`fit_preemption` (a scheduler tick is 1–10 ms)."""
PER_COMPUTE_GRID: tuple[float, ...] = (0.0, 10.0, 20.0, 40.0, 80.0)
PER_WAKE_GRID: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2)
PREEMPTION_POINTS = 8


def fit_preemption(
    configs: Sequence[dict], samples: Sequence[Sequence[Sequence[float]]], hardware,
    world: int, *, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Preemption (:class:`simulator.variability.Preemption`) that makes the simulated steps
    of ``world`` busy ranks (every core taken) spread as the measured ones.

    ``samples[i]``: point ``i``'s timed steps in each process group it ran in (each
    group's steps over their own lower quartile: a group keeps its start's luck). For
    every stall length, rate per compute second and rate per wake on the grids above,
    the same points are simulated on ``hardware`` (its fitted jitter held) and their
    pooled ``t / q25`` compared at the median, p75 and p90 (log error); the closest wins.
    """
    from simulator.simulate import simulate
    from simulator.variability import Preemption

    if len(configs) != len(samples) or not configs:
        raise ValueError(f"a preemption fit needs samples per point, got {len(samples)}")
    pick = np.unique(np.linspace(0, len(configs) - 1, min(PREEMPTION_POINTS, len(configs))).round())
    points = [configs[int(i)] for i in pick]
    observed = np.quantile(_pooled([group for i in pick for group in samples[int(i)]]), QUANTILES)[
        2:
    ]

    def spread(preemption: Preemption) -> np.ndarray:
        sims = [
            simulate(
                c["method"], world, c["batch"], c["dim"], c["dtype"], hardware,
                steps=SIM_STEPS, seed=seed, preemption=preemption,
            )
            for c in points
        ]  # fmt: skip
        return np.quantile(_pooled([s.step_time_s for s in sims]), QUANTILES)[2:]

    best = None
    for stall in STALL_GRID_S:
        for per_compute in PER_COMPUTE_GRID:
            for per_wake in PER_WAKE_GRID:
                if (per_compute == 0 and per_wake == 0) and stall != STALL_GRID_S[0]:
                    continue  # no stalls: one candidate
                candidate = Preemption(stall_s=stall, per_compute_s=per_compute, per_wake=per_wake)
                simulated = spread(candidate)
                err = float(np.sqrt(np.mean(np.log(simulated / observed) ** 2)))
                if best is None or err < best[0]:
                    best = (err, candidate, simulated)
    err, preemption, simulated = best
    return {
        "preemption": preemption,
        "log_err": err,
        "samples": int(sum(len(g) for i in pick for g in samples[int(i)])),
        "points": len(points),
        "world": int(world),
        "observed": observed.tolist(),
        "simulated": simulated.tolist(),
    }
