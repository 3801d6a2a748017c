"""Hardware profiles: small validated classes loaded from JSON files with units in their keys.

A profile says how fast one rank computes and how fast ranks talk. Every number in the
file is an object ``{"value": <number>, "source": "<where it comes from>"}`` (a datasheet,
NCCL's ``tuning.cc``, or "calibrated on <host> at <time> by <command>"), and every key
carries its unit (``_us``, ``_GBps``, ``_GiB``, ``_TFLOPs``, ``_Gelem_per_s``,
``_us_per_MB``). Units are converted once, here, to seconds, bytes and FLOP/s. The Greek letters are the
symbols of :mod:`simulator.model`'s docstring, which uses each for one thing.

Layout (see ``simulator/hardware/h100-sxm.json``)::

    name, summary, backend ("nccl" | "gloo"), device ("cuda" | "cpu")
    memory_GiB            memory of one device (GiB = 2^30 bytes)
    memory_shared         true when the ranks of a node share it (host RAM on CPU)
    cores                 compute units per node that ranks share (CPU cores; GPUs)
    threads_per_rank      torch threads per rank on CPU (1 for GPUs); value null: the
                          profiler's policy, one thread per rank (``profiling.launch``)
    ranks_per_node        ranks on one node; value null: every rank on one host
    comm_uses_cores       true when moving bytes needs the same cores (gloo on CPU)
    compute.matmul_TFLOPs.<dtype>, compute.pointwise_Gelem_per_s.<dtype>
    compute.phase_overhead_us   fixed cost of one phase repetition (dispatch, Python)
    compute.step_overhead_us    fixed cost of one step outside the phases (checks,
                                autograd, zeroing gradients)
    compute.collective_call_us  host cost of an all-gather / reduce-scatter call on one
                                rank (W = 1: the call moves nothing but still runs)
    compute.parallel_efficiency ε: n threads run the block math 1 + (n − 1)·ε times
                                faster than one (in [−1, 1]; negative: slower, as on a
                                busy machine)
    compute.thread_overhead_growth  γ ≥ 0: with n threads the fixed costs are
                                1 + (n − 1)·γ times the one-thread ones
    compute.busy_rank_slowdown  κ ≥ 0 (optional, absent: 0): with q ≤ cores ranks busy
                                on a node each computes 1 + (q − 1)·κ times slower
    compute.softmax_pointwise_ratio  ρ > 0 (optional, absent: 1): the softmax losses'
                                elementwise rate is ρ times pointwise_Gelem_per_s
    intra_node / inter_node:    one network level each (inter_node may be null)
        link.latency_us, link.bandwidth_GBps          (per direction, line rate)
        all_gather / reduce_scatter: base_us, alpha_us, beta_us_per_MB
        p2p: alpha_us, beta_us_per_MB, duplex_efficiency
        oversubscribed_wait_us   extra latency per α when ranks outnumber cores
        sync_us     (optional, absent: 0) exposed cost per collective call and per p2p
                    exchange waited on at W ≥ 2 (a sleeping rank woken by its peer)
    jitter (optional, absent: none): per event kind (compute, p2p, collective) the
        multiplier distribution calibration fitted (``simulator.jitter_fit``):
        ``{"distribution": "lognormal" | "exponential", "median": <num>, "sigma": <num>}``,
        median and sigma as ``{value, source}``; ``simulator.simulate`` draws it when
        its caller gives no jitter
    preemption (optional, absent: none; shared-core machines): stalls of a rank whose
        node has no idle core (``simulator.variability.Preemption``, fitted by
        ``simulator.jitter_fit.fit_preemption``): ``stall_us``, ``per_compute_s`` (stalls
        per second of compute), ``per_wake`` (stalls per wait slept through), each
        ``{value, source}``; ``simulator.simulate`` adds them when its caller gives none
    memory_reserve (optional, absent: zeros): device memory outside the loss's peak
        context_GiB              CUDA context, cuBLAS workspace, NCCL at W = 1, inputs
        nccl_peer_buffers_GiB    NCCL's buffers for its peers, from W = 2 on
        fragmentation_fraction   allocator reservation beyond its peak, per byte

MB is 10^6 bytes and GB 10^9 bytes; ``beta_us_per_MB = 1e3 / bandwidth_GBps``.
A file with a missing key, an unknown key or a wrong unit suffix is refused with one
line naming the key and the file (:class:`HardwareError`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from profiling.losses.registry import DTYPES
from simulator.variability import KINDS, Jitter, Preemption

BUNDLED_DIR = Path(__file__).with_name("hardware")
CACHE_DIR = Path.home() / ".cache" / "sigsim" / "hardware"
DEFAULT_PROFILE = "h100-sxm"
"""Used when no hardware is named and this machine has no calibrated profile."""


class HardwareError(ValueError):
    """A profile that cannot be used; the message names the key and the file."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Link:
    """One direction of a link: line rate and one-way latency."""

    latency_s: float
    bandwidth_Bps: float


@dataclass(frozen=True, kw_only=True, slots=True)
class CollectiveFit:
    """Ring collective cost: ``base + messages·alpha + bytes·beta`` (bytes per rank)."""

    base_s: float
    alpha_s: float
    beta_s_per_byte: float


@dataclass(frozen=True, kw_only=True, slots=True)
class P2PFit:
    """Point-to-point cost ``messages·alpha + bytes·beta``; two directions at once run at
    ``duplex_efficiency`` of full speed each (1: full duplex, 0.5: they share)."""

    alpha_s: float
    beta_s_per_byte: float
    duplex_efficiency: float


@dataclass(frozen=True, kw_only=True, slots=True)
class NetworkLevel:
    """The links and collective fits of one level (inside a node, or between nodes)."""

    link: Link
    all_gather: CollectiveFit
    reduce_scatter: CollectiveFit
    p2p: P2PFit
    oversubscribed_wait_s: float
    """Added to every α when ranks outnumber cores: the wait for a descheduled peer."""
    sync_s: float = 0.0
    """Paid, exposed, per collective call and per p2p exchange that a rank waits on at
    ``W ≥ 2`` (waking a rank that slept on its peer); on top of the α-β time."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Compute:
    matmul_flops_per_s: dict[str, float]
    pointwise_elems_per_s: dict[str, float]
    phase_overhead_s: float
    step_overhead_s: float
    collective_call_s: float
    parallel_efficiency: float
    """ε: speedup of ``n`` threads over one, ``1 + (n − 1)·ε``."""
    thread_overhead_growth: float
    """γ: fixed costs with ``n`` threads are ``1 + (n − 1)·γ`` times one thread's."""
    busy_rank_slowdown: float = 0.0
    """κ: with ``q`` ranks busy on a node (``q ≤ cores``), each computes ``1 + (q − 1)·κ``
    times slower than a rank alone."""
    softmax_pointwise_ratio: float = 1.0
    """ρ: the softmax losses' elementwise rate over ``pointwise_elems_per_s`` (the
    sigmoid losses'), every dtype: their passes cost differently per pair."""

    def pointwise_factor(self, kind: str) -> float:
        """Multiplier of the elementwise rate for a method of loss ``kind``."""
        return self.softmax_pointwise_ratio if kind == "softmax" else 1.0


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryReserve:
    """Device memory a rank cannot give the loss: what the allocator's step peak never
    sees. "Fits" means ``peak·(1 + fragmentation) + reserve(W) ≤ memory`` per device."""

    context_bytes: float = 0.0
    """CUDA context, cuBLAS workspace, NCCL's communicator at W = 1, the inputs: NVML's
    "used" minus the allocator's peak on one GPU."""
    nccl_peer_buffers_bytes: float = 0.0
    """NCCL's buffers for its peers, paid once W > 1."""
    fragmentation_fraction: float = 0.0
    """Memory the caching allocator reserves beyond the peak it hands out, per byte."""

    def reserve_bytes(self, world):
        """Bytes held outside the loss's peak by one rank of a ``world``-rank job."""
        return self.context_bytes + np.where(
            np.asarray(world) > 1, self.nccl_peer_buffers_bytes, 0.0
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Hardware:
    """A loaded profile, in SI units (seconds, bytes, FLOP/s)."""

    name: str
    summary: str
    backend: str
    device: str
    memory_bytes: float
    memory_shared: bool
    """True: the ranks of a node share ``memory_bytes`` (host RAM); False: one device each."""
    cores: int
    threads_per_rank: int | None
    """None: one thread per rank, what ``profiling.launch`` sets on CPU."""
    ranks_per_node: int | None
    """None: every rank runs on one host."""
    comm_uses_cores: bool
    compute: Compute
    intra_node: NetworkLevel
    inter_node: NetworkLevel | None
    memory_reserve: MemoryReserve = field(default_factory=lambda: MemoryReserve())
    path: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    """Dotted key → source string, for every number in the file."""
    quality: dict | None = None
    """A calibrated profile's verdict (``_quality``: "good" or "poor", the reasons, how
    busy the machine was); None for datasheet profiles."""
    machine: dict | None = None
    """The fingerprint of the machine it was calibrated on (``_machine``)."""
    jitter: dict[str, Jitter] = field(default_factory=dict)
    """Event kind → the jitter calibration fitted (empty: none fitted, datasheets)."""
    preemption: Preemption | None = None
    """The stalls calibration fitted where ranks fill the cores (None: none fitted)."""

    @property
    def poor(self) -> bool:
        return bool(self.quality) and self.quality.get("verdict") == "poor"


# -- the schema -------------------------------------------------------------------------
NUM, NUM_OR_NULL, BOOL, STR = "number", "number or null", "bool", "string"
_COLLECTIVE = {"base_us": NUM, "alpha_us": NUM, "beta_us_per_MB": NUM}
_LEVEL = {
    "link": {"latency_us": NUM, "bandwidth_GBps": NUM},
    "all_gather": _COLLECTIVE,
    "reduce_scatter": _COLLECTIVE,
    "p2p": {"alpha_us": NUM, "beta_us_per_MB": NUM, "duplex_efficiency": NUM},
    "oversubscribed_wait_us": NUM,
    "sync_us": NUM,
}
_DTYPE_MAP = "dtype map"
SCHEMA: dict[str, Any] = {
    "name": STR,
    "summary": STR,
    "backend": STR,
    "device": STR,
    "memory_GiB": NUM,
    "memory_shared": BOOL,
    "cores": NUM,
    "threads_per_rank": NUM_OR_NULL,
    "ranks_per_node": NUM_OR_NULL,
    "comm_uses_cores": BOOL,
    "compute": {
        "matmul_TFLOPs": _DTYPE_MAP,
        "pointwise_Gelem_per_s": _DTYPE_MAP,
        "phase_overhead_us": NUM,
        "step_overhead_us": NUM,
        "collective_call_us": NUM,
        "parallel_efficiency": NUM,
        "thread_overhead_growth": NUM,
        "busy_rank_slowdown": NUM,
        "softmax_pointwise_ratio": NUM,
    },
    "intra_node": _LEVEL,
    "inter_node": _LEVEL,
    "memory_reserve": {
        "context_GiB": NUM,
        "nccl_peer_buffers_GiB": NUM,
        "fragmentation_fraction": NUM,
    },
}
_OPTIONAL_NULL = {"inter_node"}
_OPTIONAL_SECTIONS = {"memory_reserve"}
"""Sections added after profiles were first written: absent means every key absent."""
_OPTIONAL_ZERO = {
    "compute.busy_rank_slowdown",
    "intra_node.sync_us",
    "inter_node.sync_us",
    "memory_reserve.context_GiB",
    "memory_reserve.nccl_peer_buffers_GiB",
    "memory_reserve.fragmentation_fraction",
}
"""Keys added after profiles were first written: absent means 0 (not modelled)."""
_OPTIONAL_ONE = {"compute.softmax_pointwise_ratio"}
"""Keys added after profiles were first written: absent means 1 (no difference)."""
_MAY_BE_NEGATIVE = {"compute.parallel_efficiency"}
_UNIT_START = re.compile(r"^(.*?)_(?:[A-Z]|(?:us|ms|ns|s|per)(?:_|$))")


def _stem(key: str) -> str:
    """The key without its unit: ``beta_us_per_MB`` → ``beta``, ``memory_GiB`` → ``memory``."""
    m = _UNIT_START.match(key)
    return m.group(1) if m else key


class _Reader:
    """Walks a parsed file against :data:`SCHEMA`, collecting values and sources."""

    def __init__(self, where: str):
        self.where = where
        self.sources: dict[str, str] = {}

    def fail(self, message: str):
        raise HardwareError(f"{message} in {self.where}")

    def section(self, data: Any, spec: dict, prefix: str) -> dict:
        if not isinstance(data, dict):
            self.fail(f"{prefix or 'profile'} must be an object")
        for key in data:
            if key not in spec and not (key.startswith("_") or key == "schema"):
                expected = [k for k in spec if _stem(k) == _stem(key)]
                if expected:
                    self.fail(
                        f"key '{prefix}{key}' has the wrong unit: expected '{prefix}{expected[0]}'"
                    )
                self.fail(f"unknown key '{prefix}{key}'")
        out = {}
        for key, kind in spec.items():
            path = f"{prefix}{key}"
            if key not in data and path in _OPTIONAL_ZERO | _OPTIONAL_ONE:
                out[key] = 0.0 if path in _OPTIONAL_ZERO else 1.0
                continue
            if key not in data and path in _OPTIONAL_SECTIONS:
                out[key] = self.section({}, kind, f"{path}.")
                continue
            if key not in data:
                self.fail(f"missing key {path!r}")
            value = data[key]
            if value is None and key in _OPTIONAL_NULL:
                out[key] = None
            elif isinstance(kind, dict):
                out[key] = self.section(value, kind, f"{path}.")
            elif kind == _DTYPE_MAP:
                out[key] = self.dtype_map(value, path)
            else:
                out[key] = self.leaf(value, kind, path)
        return out

    def dtype_map(self, data: Any, path: str) -> dict[str, float]:
        if not isinstance(data, dict) or not data:
            self.fail(f"{path!r} must map dtypes ({', '.join(DTYPES)}) to numbers")
        out = {}
        for dtype, value in data.items():
            if dtype not in DTYPES:
                self.fail(f"unknown dtype key {path}.{dtype!r} (known: {', '.join(DTYPES)})")
            out[dtype] = self.positive(self.leaf(value, NUM, f"{path}.{dtype}"), f"{path}.{dtype}")
        return out

    def leaf(self, data: Any, kind: str, path: str):
        if kind == STR:
            if not isinstance(data, str):
                self.fail(f"{path!r} must be a string")
            return data
        if not (isinstance(data, dict) and set(data) == {"value", "source"}):
            self.fail(f"{path!r} must be an object {{'value': ..., 'source': '...'}}")
        source, value = data["source"], data["value"]
        if not isinstance(source, str) or not source.strip():
            self.fail(f"{path!r} has no source string")
        self.sources[path] = source
        if kind == BOOL:
            if not isinstance(value, bool):
                self.fail(f"{path!r} value must be true or false")
            return value
        if value is None and kind == NUM_OR_NULL:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            self.fail(f"{path!r} value must be a number, got {value!r}")
        if value < 0 and path not in _MAY_BE_NEGATIVE:
            self.fail(f"{path!r} must not be negative, got {value}")
        return float(value)

    def positive(self, value: float, path: str) -> float:
        if value <= 0:
            self.fail(f"{path!r} must be positive")
        return value


def _level(raw: dict) -> NetworkLevel:
    def fit(c):
        return CollectiveFit(
            base_s=c["base_us"] * 1e-6,
            alpha_s=c["alpha_us"] * 1e-6,
            beta_s_per_byte=c["beta_us_per_MB"] * 1e-12,
        )

    p2p = raw["p2p"]
    return NetworkLevel(
        link=Link(
            latency_s=raw["link"]["latency_us"] * 1e-6,
            bandwidth_Bps=raw["link"]["bandwidth_GBps"] * 1e9,
        ),
        all_gather=fit(raw["all_gather"]),
        reduce_scatter=fit(raw["reduce_scatter"]),
        p2p=P2PFit(
            alpha_s=p2p["alpha_us"] * 1e-6,
            beta_s_per_byte=p2p["beta_us_per_MB"] * 1e-12,
            duplex_efficiency=p2p["duplex_efficiency"],
        ),
        oversubscribed_wait_s=raw["oversubscribed_wait_us"] * 1e-6,
        sync_s=raw["sync_us"] * 1e-6,
    )


def parse_profile(data: Any, where: str) -> Hardware:
    """Validate parsed JSON against the schema and convert units; ``where`` names the file."""
    reader = _Reader(where)
    jitter_raw = data.get("jitter") if isinstance(data, dict) else None
    preemption_raw = data.get("preemption") if isinstance(data, dict) else None
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in ("jitter", "preemption")}
    raw = reader.section(data, SCHEMA, "")
    jitter = _jitter(jitter_raw, reader)
    preemption = _preemption(preemption_raw, reader)
    for key in ("memory_GiB", "cores", "threads_per_rank"):
        if raw[key] is not None:
            reader.positive(raw[key], key)
    reader.positive(raw["compute"]["softmax_pointwise_ratio"], "compute.softmax_pointwise_ratio")
    for key in ("cores", "threads_per_rank", "ranks_per_node"):
        if raw[key] is not None and raw[key] != int(raw[key]):
            reader.fail(f"{key!r} must be a whole number")
    if raw["ranks_per_node"] is not None and raw["ranks_per_node"] < 1:
        reader.fail("'ranks_per_node' must be at least 1 (or null: one host)")
    if raw["ranks_per_node"] is not None and raw["inter_node"] is None:
        reader.fail("'inter_node' is null but 'ranks_per_node' is set (ranks span nodes)")
    for level in ("intra_node", "inter_node"):
        if raw[level] is None:
            continue
        reader.positive(raw[level]["link"]["bandwidth_GBps"], f"{level}.link.bandwidth_GBps")
        line_GBps = raw[level]["link"]["bandwidth_GBps"]
        for op in ("all_gather", "reduce_scatter", "p2p"):
            beta = raw[level][op]["beta_us_per_MB"]
            if beta > 0 and 1e3 / beta > 1.05 * line_GBps:
                reader.fail(
                    f"'{level}.{op}.beta_us_per_MB' = {beta} means {1e3 / beta:.4g} GB/s, faster "
                    f"than the link's {line_GBps:g} GB/s (a unit slip?)"
                )
        eff = raw[level]["p2p"]["duplex_efficiency"]
        if not 0 < eff <= 1:
            reader.fail(f"'{level}.p2p.duplex_efficiency' must be in (0, 1], got {eff}")
    reserve = raw["memory_reserve"]
    compute = raw["compute"]
    if not -1 <= compute["parallel_efficiency"] <= 1:
        reader.fail(
            f"'compute.parallel_efficiency' must be in [-1, 1], got {compute['parallel_efficiency']}"
        )
    return Hardware(
        name=raw["name"],
        summary=raw["summary"],
        backend=raw["backend"],
        device=raw["device"],
        memory_bytes=raw["memory_GiB"] * 2**30,
        memory_shared=raw["memory_shared"],
        cores=int(raw["cores"]),
        threads_per_rank=None if raw["threads_per_rank"] is None else int(raw["threads_per_rank"]),
        ranks_per_node=None if raw["ranks_per_node"] is None else int(raw["ranks_per_node"]),
        comm_uses_cores=raw["comm_uses_cores"],
        compute=Compute(
            matmul_flops_per_s={k: v * 1e12 for k, v in compute["matmul_TFLOPs"].items()},
            pointwise_elems_per_s={k: v * 1e9 for k, v in compute["pointwise_Gelem_per_s"].items()},
            phase_overhead_s=compute["phase_overhead_us"] * 1e-6,
            step_overhead_s=compute["step_overhead_us"] * 1e-6,
            collective_call_s=compute["collective_call_us"] * 1e-6,
            parallel_efficiency=compute["parallel_efficiency"],
            thread_overhead_growth=compute["thread_overhead_growth"],
            busy_rank_slowdown=compute["busy_rank_slowdown"],
            softmax_pointwise_ratio=compute["softmax_pointwise_ratio"],
        ),
        intra_node=_level(raw["intra_node"]),
        inter_node=None if raw["inter_node"] is None else _level(raw["inter_node"]),
        memory_reserve=MemoryReserve(
            context_bytes=reserve["context_GiB"] * 2**30,
            nccl_peer_buffers_bytes=reserve["nccl_peer_buffers_GiB"] * 2**30,
            fragmentation_fraction=reserve["fragmentation_fraction"],
        ),
        path=where,
        sources=reader.sources,
        quality=data.get("_quality"),
        machine=data.get("_machine"),
        jitter=jitter,
        preemption=preemption,
    )


def _preemption(data: Any, reader: _Reader) -> Preemption | None:
    """The optional ``preemption`` section (module docstring)."""
    if data is None:
        return None
    keys = {"stall_us", "per_compute_s", "per_wake"}
    if not isinstance(data, dict) or set(data) != keys:
        reader.fail(f"'preemption' must hold {', '.join(sorted(keys))}")
    values = {key: reader.leaf(data[key], NUM, f"preemption.{key}") for key in sorted(keys)}
    try:
        return Preemption(
            stall_s=values["stall_us"] * 1e-6,
            per_compute_s=values["per_compute_s"],
            per_wake=values["per_wake"],
        )
    except ValueError as err:
        reader.fail(f"'preemption': {err}")


def _jitter(data: Any, reader: _Reader) -> dict[str, Jitter]:
    """The optional ``jitter`` section (module docstring) as :class:`Jitter` per kind."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        reader.fail("'jitter' must map event kinds to distributions")
    out = {}
    for kind, spec in data.items():
        path = f"jitter.{kind}"
        if kind not in KINDS:
            reader.fail(f"unknown jitter kind {path!r} (known: {', '.join(KINDS)})")
        if not isinstance(spec, dict) or set(spec) != {"distribution", "median", "sigma"}:
            reader.fail(f"{path!r} must hold 'distribution', 'median' and 'sigma'")
        distribution = reader.leaf(spec["distribution"], STR, f"{path}.distribution")
        median = reader.leaf(spec["median"], NUM, f"{path}.median")
        sigma = reader.leaf(spec["sigma"], NUM, f"{path}.sigma")
        try:
            out[kind] = Jitter(distribution=distribution, median=median, sigma=sigma)
        except ValueError as err:
            reader.fail(f"{path!r}: {err}")
    return out


def load_profile(path: str | Path) -> Hardware:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise HardwareError(f"cannot read hardware profile {path}: {err.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise HardwareError(f"{path} is not valid JSON: {err}") from None
    return parse_profile(data, str(path))


def host_profile_path(key: str | None = None) -> Path:
    """Where calibration writes this machine's profile by default: filed under the
    machine's key (``simulator.machine``: CPU model and kernel flags, cores, torch,
    backend), not its host name."""
    from simulator.machine import machine_key

    return CACHE_DIR / f"{key or machine_key()}.json"


def available_profiles() -> dict[str, Path]:
    """Profile name → file: the bundled ones, then calibrated ones in the cache."""
    found = {p.stem: p for p in sorted(BUNDLED_DIR.glob("*.json"))}
    if CACHE_DIR.is_dir():
        found.update({p.stem: p for p in sorted(CACHE_DIR.glob("*.json"))})
    return found


def resolve_hardware(hardware: Hardware | str | Path | None = None) -> Hardware:
    """A profile object, a profile name, a path to a JSON file, or None (the default:
    this host's calibrated profile if one exists, else :data:`DEFAULT_PROFILE`)."""
    if isinstance(hardware, Hardware):
        return hardware
    if hardware is None:
        own = host_profile_path()
        return load_profile(own if own.is_file() else BUNDLED_DIR / f"{DEFAULT_PROFILE}.json")
    text = str(hardware)
    profiles = available_profiles()
    if text in profiles:
        return load_profile(profiles[text])
    if text.endswith(".json") or Path(text).is_file():
        return load_profile(text)
    raise HardwareError(
        f"unknown hardware {text!r}; known profiles: {', '.join(profiles)} (or a .json path)"
    )
