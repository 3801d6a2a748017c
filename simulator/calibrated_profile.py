"""Turn calibration measurements into a profile JSON (see :mod:`simulator.hardware`).

Every number gets a source: "calibrated on <host> at <time> by <command>" plus the fit it
came from (points, R²), or where it was read (psutil, torch.cuda), or, for a one-GPU
calibration's network, "not calibrated (one GPU, W=1: no comm fit): copied from <file>:
<its source>".
"""

from __future__ import annotations

import json
import socket
from typing import Any

import numpy as np
import psutil
import torch

from simulator.hardware import BUNDLED_DIR


def _num(value: float, source: str, digits: int = 4) -> dict[str, Any]:
    return {"value": float(f"{value:.{digits}g}"), "source": source}


def _fit_note(fit: dict[str, Any], what: str) -> str:
    return f"least squares over {fit['points']} {what}, R²={fit['r2']:.4f}"


def _copied_network(base: dict[str, Any], base_name: str) -> dict[str, Any]:
    """A bundled profile's network section, every source saying it was copied."""

    def walk(node):
        if isinstance(node, dict) and set(node) == {"value", "source"}:
            return {
                "value": node["value"],
                "source": f"not calibrated (one GPU, W=1: no comm fit): copied from "
                f"{base_name}.json: {node['source']}",
            }
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        return node

    return walk(base)


def build_profile(
    config, device, backend, compute, comm_fits, cores, stamp, busy=None
) -> dict[str, Any]:
    """The profile JSON (see :mod:`simulator.hardware`) from the measurements; ``busy``
    is :func:`simulator.step_fit.fit_busy_ranks`'s result (None: not measured, 0)."""
    host = socket.gethostname()
    profile: dict[str, Any] = {"schema": 1, "name": host}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        profile["summary"] = f"{props.name} calibrated on {host} ({backend})"
        memory = _num(props.total_memory / 2**30, f"torch.cuda.get_device_properties on {host}")
    else:
        profile["summary"] = f"CPU ({cores} cores, {backend}) calibrated on {host}"
        memory = _num(psutil.virtual_memory().total / 2**30, f"psutil total RAM on {host}")
    base_name = config.comm_from or _closest_gpu_profile(device)
    base = json.loads((BUNDLED_DIR / f"{base_name}.json").read_text()) if base_name else None
    profile |= {"backend": backend, "device": device.type, "memory_GiB": memory}
    profile["memory_shared"] = {
        "value": device.type == "cpu",
        "source": "ranks on one host share its RAM" if device.type == "cpu" else "one GPU per rank",
    }
    if comm_fits is None and base is not None:
        copied = _copied_network(base, base_name)
        for key in ("cores", "ranks_per_node", "intra_node", "inter_node"):
            profile[key] = copied[key]
    elif device.type == "cuda":
        profile["cores"] = _num(cores, "torch.cuda.device_count() on this node")
        profile["ranks_per_node"] = _num(cores, "torch.cuda.device_count() on this node")
    else:
        profile["cores"] = _num(cores, f"len(os.sched_getaffinity(0)) on {host}")
        profile["ranks_per_node"] = {"value": None, "source": "one host: every rank runs on it"}
    if device.type == "cuda":
        profile["threads_per_rank"] = _num(1, "one GPU per rank")
    elif config.threads is None:
        profile["threads_per_rank"] = {
            "value": None,
            "source": "profiling.launch policy: one thread per rank (a rank is one device)",
        }
    else:
        profile["threads_per_rank"] = _num(config.threads, "calibrate --threads")
    profile["comm_uses_cores"] = {
        "value": device.type == "cpu",
        "source": "gloo moves bytes with the cores the ranks compute on"
        if device.type == "cpu"
        else "NCCL runs beside the compute streams",
    }
    profile["compute"] = _compute_section(compute, stamp)
    profile["compute"]["busy_rank_slowdown"] = _busy_number(busy, "busy_rank_slowdown", stamp)
    if comm_fits is not None:
        profile["intra_node"] = _level(comm_fits, stamp)
        profile["intra_node"]["sync_us"] = _busy_number(busy, "sync_s", stamp, scale=1e6)
        if device.type == "cuda" and base is not None:
            profile["inter_node"] = _copied_network(base, base_name)["inter_node"]
        elif device.type == "cuda":
            profile["inter_node"] = None
        else:
            profile["inter_node"] = None
    return profile


def _busy_number(busy, key: str, stamp: str, scale: float = 1.0) -> dict[str, Any]:
    if busy is None:
        return _num(0.0, f"{stamp}; not measured (one core, or no real-step fit): 0")
    return _num(
        busy[key] * scale,
        f"{stamp}; real loss steps at W={busy['ranks']} (every rank busy, one thread each) "
        f"fitted on the model with the other numbers held, {busy['points']} points "
        f"({busy['dropped']} dropped), median rel err {busy['median_rel_err']:.3f}, "
        f"max {busy['max_rel_err']:.3f}",
    )


def _level(fits: dict[str, dict[str, Any]], stamp: str) -> dict[str, Any]:
    def us(s):
        return s * 1e6

    def us_per_mb(beta):
        return beta * 1e12

    level: dict[str, Any] = {}
    for op in ("all_gather", "reduce_scatter"):
        f = fits[op]
        note = f"{stamp}; {_fit_note(f, 'timings')}"
        level[op] = {
            "base_us": _num(us(f["base_s"]), note),
            "alpha_us": _num(us(f["alpha_s"]), note),
            "beta_us_per_MB": _num(us_per_mb(f["beta_s_per_byte"]), note),
        }
    f = fits["p2p"]
    note = f"{stamp}; {_fit_note(f, 'timings')}"
    level["p2p"] = {
        "alpha_us": _num(us(f["alpha_s"]), note),
        "beta_us_per_MB": _num(us_per_mb(f["beta_s_per_byte"]), note),
        "duplex_efficiency": _num(
            f["duplex_efficiency"],
            f"{stamp}; both-way p2p vs one-way fit, max rel. err {f['duplex_max_rel_err']:.3f}",
        ),
    }
    fastest = max(1e3 / max(level[op]["beta_us_per_MB"]["value"], 1e-9) for op in level)
    over = fits["oversubscribed"]
    level["oversubscribed_wait_us"] = _num(
        us(over["wait_s"]),
        f"{stamp}; median excess per α over {over['points']} timings with more ranks than cores"
        if over["points"]
        else f"{stamp}; no timing had more ranks than cores: not measured, 0",
    )
    level = {
        "link": {
            "latency_us": _num(us(f["alpha_s"]), f"{stamp}; the p2p α (no separate line latency)"),
            "bandwidth_GBps": _num(
                fastest * 1.01, f"{stamp}; fastest fitted bandwidth (no separate line rate)"
            ),
        },
        **level,
    }
    return level


def _closest_gpu_profile(device: torch.device) -> str | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return "a100-sxm-80gb" if "A100" in name else "h100-sxm"


def _compute_section(compute: dict[str, Any], stamp: str) -> dict[str, Any]:
    """Rates and fixed costs: from real loss steps where measured (CPU, fp32), else from
    the microbenchmarks; every number says which."""
    mm, pw = compute["matmul"], compute["pointwise"]
    section: dict[str, Any] = {
        "matmul_TFLOPs": {
            d: _num(f["rate"] / 1e12, f"{stamp}; matmul microbenchmark; {_fit_note(f, 'shapes')}")
            for d, f in mm.items()
        },
        "pointwise_Gelem_per_s": {
            d: _num(f["rate"] / 1e9, f"{stamp}; sigmoid-block pairs; {_fit_note(f, 'sizes')}")
            for d, f in pw.items()
            if np.isfinite(f["rate"])
        },
    }
    steps = compute.get("steps")
    if steps is None:  # GPU: no step fit; the block fit's intercept is the phase overhead
        note = f"{stamp}; not measured on this device (no real-step fit)"
        section |= {
            "phase_overhead_us": _num(
                pw["fp32" if "fp32" in pw else next(iter(pw))]["overhead_s"] * 1e6,
                f"{stamp}; intercept of the sigmoid-block fit",
            ),
            "step_overhead_us": _num(0.0, note + ": 0"),
            "collective_call_us": _num(0.0, note + ": 0"),
            "parallel_efficiency": _num(1.0, "one GPU per rank: host threads do not scale it"),
            "thread_overhead_growth": _num(0.0, "one GPU per rank: no host-thread cost"),
        }
        return section
    one = steps["one_thread"]
    note = (
        f"{stamp}; real loss steps at W=1 on 1 thread, least squares over {one['points']} "
        f"points ({one['dropped']} outliers dropped), median rel err "
        f"{one['median_rel_err']:.3f}, max {one['max_rel_err']:.3f}"
    )
    section["matmul_TFLOPs"]["fp32"] = _num(one["matmul_rate"] / 1e12, note)
    if np.isfinite(one["pointwise_rate"]):
        section["pointwise_Gelem_per_s"]["fp32"] = _num(one["pointwise_rate"] / 1e9, note)
    section["softmax_pointwise_ratio"] = _num(
        one.get("softmax_pointwise_ratio", 1.0),
        note + "; the softmax losses' elementwise rate over the sigmoid losses' (fp32 steps)",
    )
    section["phase_overhead_us"] = _num(one["phase_overhead_s"] * 1e6, note)
    section["step_overhead_us"] = _num(one["step_overhead_s"] * 1e6, note)
    section["collective_call_us"] = _num(one["collective_call_s"] * 1e6, note)
    single = f"{stamp}; profiling.launch runs one thread per rank: thread scaling not used"
    section["parallel_efficiency"] = _num(1.0, single)
    section["thread_overhead_growth"] = _num(0.0, single)
    return section


def jitter_section(fits: dict[str, dict[str, Any]], stamp: str) -> dict[str, Any]:
    """The profile's ``jitter`` section from :mod:`simulator.jitter_fit`'s fits."""
    section = {}
    for kind, fit in sorted(fits.items()):
        j = fit["jitter"]
        if kind == "compute":
            how = (
                f"per-event compute jitter fitted through the simulator to {fit['samples']} "
                f"timed steps of {fit['points']} calibration points at W={fit['world']} "
                f"(pooled t/q25, median and p90 log error {fit['log_err']:.3f})"
            )
        else:
            how = (
                f"{fit['samples']} per-call timings of {fit['cases']} microbenchmark cases "
                f"at W={','.join(map(str, fit['worlds']))}, t/q25 pooled, fitted to their "
                f"p10..p90 by least squares on the logs (RMS log error {fit['log_err']:.3f})"
            )
        source = f"{stamp}; {how}; simulator.jitter_fit"
        section[kind] = {
            "distribution": j.distribution,
            "median": _num(j.median, source),
            "sigma": _num(j.sigma, source),
        }
    return section


def preemption_section(fit: dict[str, Any], stamp: str) -> dict[str, Any]:
    """The profile's ``preemption`` section from :func:`simulator.jitter_fit.fit_preemption`."""
    p = fit["preemption"]
    source = (
        f"{stamp}; fitted through the simulator to {fit['samples']} timed steps of "
        f"{fit['points']} calibration points at W={fit['world']}, every core busy (pooled "
        f"t/q25 per process group, median/p75/p90 log error {fit['log_err']:.3f}); "
        "simulator.jitter_fit.fit_preemption"
    )
    return {
        "stall_us": _num(p.stall_s * 1e6, source),
        "per_compute_s": _num(p.per_compute_s, source),
        "per_wake": _num(p.per_wake, source),
    }
