"""Calibrate a hardware profile on this machine: measure, fit, write a profile JSON.

Run ``sigsim calibrate`` (its wall time on the kept runs: README.md's time budget). It measures
with :mod:`simulator.microbench` and fits the forms :mod:`simulator.model` prices with:

* real loss steps (CPU, :mod:`simulator.step_fit`): every registered method at ``W = 1``
  on a calibration set of ``(b, d)`` disjoint from the default validation grid, timed
  by the profiler's own method on one thread; fits the fp32 ``matmul_TFLOPs`` and
  ``pointwise_Gelem_per_s`` (the block math of fp32, bf16 and fp16 inputs; the sigmoid
  losses') and ``softmax_pointwise_ratio`` (the softmax losses' elementwise rate over it),
  ``step_overhead_us``, ``phase_overhead_us``, ``collective_call_us``; then the same
  configurations at ``W = min(2, cores)``, every rank busy, fitted on the model with
  the communication fits below: ``busy_rank_slowdown`` and ``intra_node.sync_us``;
* matmul microbenchmark: ``t = t0 + F / R_mm`` per dtype over a few shapes; gives
  ``matmul_TFLOPs`` for the other dtypes (and for fp32 on GPUs);
* block elementwise: ``t − F / R_mm = o + b² / R_pw`` for a sigmoid block of ``b×b``
  pairs at width 8; gives ``pointwise_Gelem_per_s`` for the other dtypes, and on GPUs
  ``o`` (fp32) → ``phase_overhead_us``;
* collectives, over every W and size: ``t / g = base + (W−1)·α + B·β`` with
  ``B = (W−1)·n`` the ring bytes per rank and ``g`` the model's core share (``W / cores``
  when above 1 on a CPU backend), so oversubscribed points fit the same form
  the model uses to predict them;
* p2p one way: ``t / g = α + n·β``; both ways at once (``n`` each way):
  ``t / g = α + n·β / e`` gives the duplex efficiency ``e``;
* jitter per event kind (:mod:`simulator.jitter_fit`): ``p2p`` and ``collective`` from
  the microbenchmark's per-call timings over their lower quartile (the base the fits
  above read), ``compute`` from one rank's real loss steps through the simulator; the
  profile's ``jitter`` section, which :func:`simulator.simulate` draws by default.

Fits are least squares weighted by ``1/t`` (relative error), with no negative term;
R² (on ``t / g``) is printed and written into each number's source string. With one GPU
(W = 1) there is nothing to fit for communication: the profile says so and copies the
network of a bundled profile (``--comm-from``, by default the closest GPU's), naming it
in every copied source.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from rich.console import Console
from rich.table import Table

from profiling import host_allocator
from profiling.launch import launch_or_raise
from simulator import jitter_fit, microbench, step_fit
from simulator.calibrated_profile import build_profile, jitter_section, preemption_section
from simulator.hardware import host_profile_path, load_profile, parse_profile
from simulator.machine import fingerprint, machine_key


@dataclass(kw_only=True, slots=True)
class CalibrationConfig:
    """What to measure; the defaults take about a minute on a 2-core CPU box."""

    output: Path | None = None
    """Profile file to write (None: ``~/.cache/sigsim/hardware/<machine key>.json``,
    ``simulator.machine``)."""
    worlds: tuple[int, ...] = (2, 4)
    """Process-group sizes for the communication fits (one group each, spawned once)."""
    message_bytes: tuple[int, ...] = (4096, 65536, 524288, 4194304)
    """Bytes per rank per message (all-gather input, reduce-scatter output, p2p send)."""
    warmup: int = 2
    repeats: int = 12
    dtypes: tuple[str, ...] = ("fp32", "fp64", "bf16")
    threads: int | None = None
    """torch threads per rank in the communication benchmarks and the profile (CPU); None:
    one, as ``profiling.launch`` sets. Compute is always measured on one
    thread (rates per core)."""
    backend: str = "auto"
    """"gloo", "nccl" or "auto" (nccl with two or more GPUs, gloo on CPU)."""
    quick: bool = False
    """Small shapes only (tests, smoke runs)."""
    comm_from: str | None = None
    """Bundled profile whose network a one-GPU calibration copies (None: by GPU name)."""
    timeout_s: float = 180.0
    command: str | None = None
    attempts: int = 2
    """Calibrations at most: a poor one (:func:`quality`) is measured again."""
    """Recorded in the sources (None: this process's command line)."""


def fit_least_squares(x: np.ndarray, y: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Non-negative least squares of ``y ≈ x @ c`` weighted by ``1/y``; coefficients, R²."""
    active = list(range(x.shape[1]))
    weights = 1.0 / np.maximum(y, 1e-12)
    coef = np.zeros(x.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(x[:, active] * weights[:, None], y * weights, rcond=None)
        if np.all(sol >= 0):
            coef[:] = 0.0
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    fitted = x @ coef
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((y - fitted) ** 2)) / ss_tot if ss_tot > 0 else 1.0
    max_rel = float(np.max(np.abs(fitted - y) / y))
    return {**dict(zip(names, coef.tolist(), strict=True)), "r2": r2, "max_rel_err": max_rel}


def _core_share(world: int, cores: int, uses_cores: bool) -> float:
    return max(1.0, world / cores) if uses_cores else 1.0


def _units(op: str, world: np.ndarray) -> np.ndarray:
    """How many α one repetition pays in the model: W−1 for collectives, 1 for p2p (a
    both-ways exchange sends 2 messages over 2 directions at once)."""
    return world - 1 if op in ("all_gather", "reduce_scatter") else np.ones_like(world)


def fit_comm(rows, cores: int, uses_cores: bool) -> dict[str, dict[str, Any]]:
    """Fits per op from ``[(op, world, bytes_per_rank, seconds)]`` (module docstring).

    α and β come from the points where ranks do not outnumber cores (all points if there
    are none); the oversubscribed points then give ``oversubscribed_wait_s``, the median
    extra latency per α unit that a rank waits for a descheduled peer.
    """
    data = {
        op: np.array(
            [
                (w, n, t / _core_share(w, cores, uses_cores), w > cores)
                for o, w, n, t in rows
                if o == op
            ],
            dtype=np.float64,
        )
        for op in microbench.COMM_OPS
    }
    fits: dict[str, dict[str, Any]] = {}

    def within(op):
        d = data[op]
        keep = d[:, 3] == 0
        return d[keep] if keep.any() else d

    for op in ("all_gather", "reduce_scatter"):
        d = within(op)
        steps = d[:, 0] - 1
        x = np.column_stack([np.ones(len(d)), steps, steps * d[:, 1]])
        names = ["base_s", "alpha_s", "beta_s_per_byte"]
        if len(set(d[:, 0])) < 2:  # one W: base and per-step latency are not separable
            x, names = x[:, 1:], names[1:]
        fits[op] = {"base_s": 0.0, **fit_least_squares(x, d[:, 2], names), "points": len(d)}
    one, both = within("p2p"), within("p2p_bidir")
    fit = fit_least_squares(
        np.column_stack([np.ones(len(one)), one[:, 1]]), one[:, 2], ["alpha_s", "beta_s_per_byte"]
    )
    excess = np.maximum(both[:, 2] - fit["alpha_s"], 1e-12)
    slope = float(np.sum(both[:, 1] * excess) / np.sum(both[:, 1] ** 2))
    duplex = float(np.clip(fit["beta_s_per_byte"] / slope, 0.05, 1.0)) if slope > 0 else 1.0
    predicted = fit["alpha_s"] + both[:, 1] * fit["beta_s_per_byte"] / duplex
    fit["duplex_efficiency"] = duplex
    fit["duplex_max_rel_err"] = float(np.max(np.abs(predicted - both[:, 2]) / both[:, 2]))
    fits["p2p"] = {"base_s": 0.0, **fit, "points": len(one) + len(both)}

    waits = []
    for op, d in data.items():
        over = d[d[:, 3] == 1]
        if not len(over):
            continue
        f = fits["p2p" if op.startswith("p2p") else op]
        eff = f.get("duplex_efficiency", 1.0) if op == "p2p_bidir" else 1.0
        units = _units(op, over[:, 0])
        model = f["base_s"] + units * f["alpha_s"] + over[:, 1] * units * f["beta_s_per_byte"] / eff
        waits.extend(((over[:, 2] - model) / units).tolist())
    fits["oversubscribed"] = {
        "wait_s": max(0.0, float(np.median(waits))) if waits else 0.0,
        "points": len(waits),
    }
    return fits


def _shapes(device: torch.device, quick: bool):
    if device.type == "cuda":
        matmuls = [(1024, 1024, 1024), (2048, 2048, 2048), (4096, 1024, 4096), (4096, 4096, 4096)]
        return matmuls[:2] if quick else matmuls, [256, 1024, 4096, 8192]
    matmuls = [(64, 64, 64), (256, 256, 256), (256, 512, 256), (512, 512, 512), (512, 1024, 512)]
    return (matmuls[:3], [32, 128, 256]) if quick else (matmuls, [32, 128, 512, 1024])


def measure_compute(config: CalibrationConfig, device: torch.device, console: Console):
    """Matmul and block fits per dtype (rates in FLOP/s and pairs/s, overhead in s)."""
    matmul_shapes, sides = _shapes(device, config.quick)
    host_allocator.keep_freed_memory()  # as every measured rank runs (profiling.launch)
    out: dict[str, Any] = {"matmul": {}, "pointwise": {}}
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for dtype in config.dtypes:
            with console.status(f"matmul {dtype} at {len(matmul_shapes)} shapes"):
                data = np.array(microbench.matmul_times(dtype, matmul_shapes, device))
            fit = fit_least_squares(
                np.column_stack([np.ones(len(data)), data[:, 0]]),
                data[:, 1],
                ["t0_s", "s_per_flop"],
            )
            fit["rate"] = 1.0 / fit["s_per_flop"]
            out["matmul"][dtype] = {**fit, "points": len(data)}
            with console.status(f"sigmoid block {dtype} at b = {sides}"):
                blocks = np.array(microbench.block_times(dtype, sides, 8, device))
            pairs = blocks[:, 0] ** 2
            elementwise = blocks[:, 1] - 6 * pairs * 8 / fit["rate"]
            pw = fit_least_squares(
                np.column_stack([np.ones(len(blocks)), pairs]),
                np.maximum(elementwise, 1e-9),
                ["overhead_s", "s_per_elem"],
            )
            pw["rate"] = 1.0 / pw["s_per_elem"] if pw["s_per_elem"] > 0 else float("inf")
            out["pointwise"][dtype] = {**pw, "points": len(blocks)}
            console.print(
                f"  {dtype}: matmul {fit['rate'] / 1e9:.3g} GFLOP/s (R² {fit['r2']:.4f}); "
                f"block elementwise {pw['rate'] / 1e9:.3g} Gpair/s, "
                f"fixed {pw['overhead_s'] * 1e6:.1f} us per block (R² {pw['r2']:.4f})"
            )
    finally:
        torch.set_num_threads(previous)
    return out


def measure_comm(config: CalibrationConfig, backend: str, worlds, console: Console):
    """``[(op, world, bytes_per_rank, seconds, [per-call seconds])]`` over the worlds."""
    rows = []
    for world in worlds:
        with console.status(f"{backend} process group of {world}: p2p, all-gather, reduce-scatter"):
            results = launch_or_raise(
                microbench.comm_worker,
                (list(config.message_bytes), config.warmup, config.repeats, True),
                world=world,
                backend=backend,
                threads=config.threads or 1,
                timeout_s=config.timeout_s,
            )
        rows.extend(results[0])
        console.print(f"  W={world}: {len(results[0])} timings")
    return rows


POOR_R2 = 0.9
"""A communication fit with a lower R² (or no bandwidth term) is poor."""
POOR_BUSY_FIT_ERROR = 0.25
"""A busy-rank fit whose median relative error is larger is poor."""
BUSY_SHARE_LIMIT = 0.2
"""Share of the cores' time other processes may use while calibration measures."""


class OtherLoad:
    """CPU time that other processes (and the hypervisor's steal) took while the block
    ran, as a share of all cores' time: ``(busy(system) − busy(this process and its
    finished children)) / (wall × cores)``."""

    def __enter__(self) -> OtherLoad:
        self.share = None
        self._start = (time.perf_counter(), _system_busy_s(), _own_busy_s())
        return self

    def __exit__(self, *exc) -> None:
        wall, system, own = (now - then for now, then in zip(
            (time.perf_counter(), _system_busy_s(), _own_busy_s()), self._start, strict=True
        ))  # fmt: skip
        cores = psutil.cpu_count() or 1
        # the kernel counts CPU time in scheduler ticks: over a short block the share is
        # coarse, so it is clamped to [0, 1] (calibration's blocks last tens of seconds)
        share = (system - own) / (wall * cores) if wall > 0 else 0.0
        self.share = min(1.0, max(0.0, share))


def _system_busy_s() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _own_busy_s() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def quality(comm_fits, busy, other_share: float) -> dict:
    """The verdict on one calibration: "good", or "poor" with the reasons."""
    reasons = []
    for op, fit in (comm_fits or {}).items():
        if "r2" in fit and (fit["r2"] < POOR_R2 or not fit["beta_s_per_byte"]):
            reasons.append(f"{op} fit R² {fit['r2']:.3f} (or no bandwidth term)")
    if busy is not None and busy["median_rel_err"] > POOR_BUSY_FIT_ERROR:
        reasons.append(f"busy-rank fit median error {busy['median_rel_err']:.2f}")
    if other_share > BUSY_SHARE_LIMIT:
        reasons.append(f"other processes used {other_share:.0%} of the cores")
    return {
        "verdict": "poor" if reasons else "good",
        "reasons": reasons,
        "other_processes_core_share": round(other_share, 4),
        "limits": {
            "r2": POOR_R2,
            "busy_fit_median_error": POOR_BUSY_FIT_ERROR,
            "other_core_share": BUSY_SHARE_LIMIT,
        },
    }


def calibrate(config: CalibrationConfig, console: Console | None = None) -> tuple[Path, dict]:
    """Measure, fit and write the profile; returns its path and the fits.

    The profile is marked with its :func:`quality`; a poor calibration (poor fits, or a
    machine other processes kept busy) is measured again once, and a second poor one is
    saved marked "poor" (``sigsim run`` recalibrates instead of using it)."""
    console = console or Console(stderr=True)
    for attempt in range(1, config.attempts + 1):
        with OtherLoad() as load:
            profile, fits, busy = _measure_and_fit(config, console)
        verdict = quality(fits["comm"], busy, load.share)
        if verdict["verdict"] == "good" or attempt == config.attempts:
            break
        console.print(
            f"[yellow]calibration {attempt} was poor ({'; '.join(verdict['reasons'])}): "
            "measuring again[/]"
        )
    if verdict["verdict"] == "poor":
        console.print(
            f"[yellow]saving a profile marked poor ({'; '.join(verdict['reasons'])}); "
            "rerun `sigsim calibrate` on a quiet machine[/]"
        )
    facts = fingerprint(fits["backend"], fits["accelerator"])
    profile["name"] = machine_key(facts)
    profile["_quality"] = verdict | {"attempts": attempt}
    profile["_machine"] = facts
    path = Path(config.output) if config.output else host_profile_path(machine_key(facts))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile, indent=2) + "\n")
    load_profile(path)  # what we wrote must load
    console.print(f"wrote {path} in {fits['seconds']:.1f} s ({verdict['verdict']})")
    return path, fits | {"quality": profile["_quality"]}


def _measure_and_fit(config: CalibrationConfig, console: Console):
    """One calibration: (profile dict, fits, busy-rank fit or None)."""
    start = dt.datetime.now(dt.UTC)
    command = config.command or " ".join(shlex.quote(a) for a in sys.argv)
    host = socket.gethostname()
    stamp = f"calibrated on {host} at {start:%Y-%m-%dT%H:%M:%SZ} by {command}"
    cuda = torch.cuda.is_available() and config.backend in ("auto", "nccl")
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    gpus = torch.cuda.device_count() if cuda else 0
    backend = "nccl" if cuda else "gloo"
    if config.backend == "nccl" and not cuda:
        raise ValueError("backend nccl needs a CUDA device; none is visible")
    cores = gpus if cuda else len(os.sched_getaffinity(0))
    console.print(
        f"[bold]calibrating[/] {host}: {device.type}, {backend}, {cores} "
        f"{'GPUs' if cuda else 'cores'}; compute on 1 thread, ranks on "
        f"{config.threads or 1} thread(s)"
    )
    compute = measure_compute(config, device, console)
    if device.type == "cpu":
        compute["steps"] = step_fit.measure_steps(
            quick=config.quick, cores=cores, timeout_s=config.timeout_s, console=console
        )
    worlds = [w for w in config.worlds if w >= 2 and (not cuda or w <= gpus)]
    comm_fits, comm_jitter = None, {}
    if worlds:
        timed = measure_comm(config, backend, worlds, console)
        comm_fits = fit_comm([row[:4] for row in timed], cores, uses_cores=not cuda)
        _print_comm(console, comm_fits)
        comm_jitter = jitter_fit.fit_comm_jitter(
            [(op, w, n, calls) for op, w, n, _, calls in timed], cores
        )
    else:
        console.print(
            "no communication fit: W=1 (one GPU); the network is copied from a "
            "bundled profile and says so in its sources"
        )
    profile = build_profile(config, device, backend, compute, comm_fits, cores, stamp)
    busy = None
    busy_steps = compute.get("steps", {}).get("busy")
    if busy_steps is not None and comm_fits is not None:
        hardware = parse_profile(profile, "the profile being calibrated")
        busy = step_fit.fit_busy_ranks(
            compute["steps"]["configs"], busy_steps["seconds"], hardware, busy_steps["ranks"]
        )
        console.print(
            f"  real steps (W={busy['ranks']}, every rank busy): compute x"
            f"{busy['slowdown']:.2f} of one rank alone, {busy['sync_s'] * 1e6:.0f} us per "
            f"exchange or collective waited on; median rel err {busy['median_rel_err']:.3f}, "
            f"max {busy['max_rel_err']:.3f} ({busy['dropped']} dropped)"
        )
        profile = build_profile(config, device, backend, compute, comm_fits, cores, stamp, busy)
    jitter = _fit_jitter(profile, compute, comm_jitter, console)
    if jitter:
        profile["jitter"] = jitter_section(jitter, stamp)
    if busy is not None:
        preemption = _fit_preemption(profile, compute, console)
        profile["preemption"] = preemption_section(preemption, stamp)
    seconds = (dt.datetime.now(dt.UTC) - start).total_seconds()
    accelerator = torch.cuda.get_device_name(device) if cuda else None
    fits = {
        "compute": compute,
        "comm": comm_fits,
        "jitter": {
            kind: fit | {"jitter": dataclasses.asdict(fit["jitter"])}
            for kind, fit in jitter.items()
        },
        "seconds": seconds,
        "backend": backend,
        "accelerator": accelerator,
    }
    return profile, fits, busy


def _fit_jitter(profile: dict, compute: dict, comm_jitter: dict, console: Console) -> dict:
    """Per event kind the fitted jitter (:mod:`simulator.jitter_fit`); the compute fit
    needs real loss steps (CPU), the communication fit two or more ranks."""
    fits = dict(comm_jitter)
    steps = compute.get("steps")
    if steps is not None:
        hardware = parse_profile(profile, "the profile being calibrated")
        chosen = step_fit.rate_bound_points(steps["configs"], steps["one_thread"])
        fits["compute"] = jitter_fit.fit_compute_jitter(
            [steps["configs"][i] for i in chosen],
            [steps["one_thread_samples"][i] for i in chosen],
            hardware,
            1,
            {kind: f["jitter"] for kind, f in fits.items()},
        )
    for kind, fit in sorted(fits.items()):
        j = fit["jitter"]
        console.print(
            f"  jitter {kind}: {j.distribution} median x{j.median:.3f}, sigma {j.sigma:.3f} "
            f"({fit['samples']} samples, log error {fit['log_err']:.3f})"
        )
    return fits


def _fit_preemption(profile: dict, compute: dict, console: Console) -> dict:
    """Stalls of busy ranks (:func:`simulator.jitter_fit.fit_preemption`) from the real
    loss steps at ``W = min(2, cores)``, on the profile with its jitter."""
    busy = compute["steps"]["busy"]
    hardware = parse_profile(profile, "the profile being calibrated")
    with console.status("preemption of busy ranks, through the simulator"):
        fit = jitter_fit.fit_preemption(
            compute["steps"]["configs"], busy["samples"], hardware, busy["ranks"]
        )
    p = fit["preemption"]
    console.print(
        f"  preemption (W={fit['world']}, every core busy): stalls of {p.stall_s * 1e3:.1f} ms, "
        f"{p.per_compute_s:g} per compute second, {p.per_wake:g} per wake "
        f"({fit['samples']} samples, log error {fit['log_err']:.3f})"
    )
    return fit


def _print_comm(console: Console, fits: dict[str, dict[str, Any]]) -> None:
    table = Table(title="communication fits: t = base + messages·α + bytes·β")
    for col in ("op", "base (us)", "α (us)", "β (us/MB)", "GB/s", "R²", "max rel err", "points"):
        table.add_column(col, justify="right")
    for op, f in fits.items():
        if op == "oversubscribed":
            continue
        beta = f["beta_s_per_byte"]
        table.add_row(
            op,
            f"{f.get('base_s', 0) * 1e6:.1f}",
            f"{f['alpha_s'] * 1e6:.1f}",
            f"{beta * 1e12:.1f}",
            f"{1e-9 / beta:.3g}" if beta > 0 else "inf",
            f"{f['r2']:.4f}",
            f"{f['max_rel_err']:.3f}",
            str(f["points"]),
        )
    console.print(table)
    if "p2p" in fits:
        console.print(
            f"p2p both ways at once: duplex efficiency {fits['p2p']['duplex_efficiency']:.2f} "
            f"(1 = no sharing), max rel err {fits['p2p']['duplex_max_rel_err']:.3f}"
        )
