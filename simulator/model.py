"""The analytic cost model: a method's own cost description, priced on a hardware profile.

What is counted comes from the method, unchanged: FLOPs, bytes and messages are sums
over its :class:`~profiling.losses.registry.Schedule`, peak memory is the sum of its
``Method.peak_terms``. This module adds time, from a :class:`~simulator.hardware.Hardware`,
and whether the peak fits the device beside the profile's memory reserve.

Symbols (each used for one thing; profile keys in brackets). Per point ``(W, b, d)``: a
schedule is a list of phases ``p``, each repeated ``r_p`` times per step, with matmul
FLOPs ``F_p``, elementwise elements ``E_p``, ``K_p`` all-gather / reduce-scatter calls
that the code makes even at ``W = 1`` (``Transfer.called_alone``) and transfers ``t``.

* ``R_mm``, ``R_pw``: matmul and elementwise rates [``compute.matmul_TFLOPs``,
  ``compute.pointwise_Gelem_per_s``], read for the matmul operand dtype and the
  block-math dtype of the point (``Shape.operand_bytes``, ``Shape.compute_bytes``:
  ``profiling.losses.precision``); a softmax method's elementwise rate is ``ρ·R_pw``
  [``ρ``: ``compute.softmax_pointwise_ratio``, absent 1];
* ``o``, ``o_step``, ``h``: fixed cost per phase repetition, per step outside the phases
  (checks, the autograd Function and engine), and per collective call at ``W = 1``
  [``phase_overhead_us``, ``step_overhead_us``, ``collective_call_us``];
* ``q = min(W, ranks_per_node)`` ranks on a node of ``cores`` cores; ``f = max(1, q /
  cores)``, the core share; ``f_c = f`` where moving bytes needs the cores
  [``comm_uses_cores``], else 1;
* ``u = 1 + (min(q, cores) − 1)·κ``: how much slower every rank computes when ``q``
  ranks are busy [``κ``: ``busy_rank_slowdown``, calibrated from real steps at
  ``W = min(2, cores)``; interpolated linearly up to the core count, held beyond];
* a rank's ``n = min(t_r, max(1, cores / q))`` threads [``t_r``: ``threads_per_rank``]
  speed its math up by ``v = clip(1 + (n − 1)·ε, 1/n, n) · min(1, cores / q)``
  [``ε``: ``parallel_efficiency``] and stretch its fixed costs by ``a = 1 + (n − 1)·γ``
  [``γ``: ``thread_overhead_growth``];
* ``base``, ``α``, ``β``, ``e₂`` per network level [``all_gather``/``reduce_scatter``/
  ``p2p`` fits, ``duplex_efficiency``], ``s_sync`` [``sync_us``], ``w_over``
  [``oversubscribed_wait_us``].

One repetition of phase ``p``::

    compute_p = u·f·a·(o + [W=1]·K_p·h) + u·(F_p / R_mm + E_p / R_pw) / v
                                                      (o only if F_p + E_p > 0)
    comm_p    = f_c · Σ_t T(t)

    T(all_gather | reduce_scatter) = base·[m>0] + m·α + B·β     (m = W−1 messages,
                                                                B = (W−1)·n ring bytes)
    T(p2p)                         = (m/D)·α + (B/D)·β / e_D    (D = directions,
                                                                e_1 = 1, e_2 = duplex eff.)

    overlapped phase:  time_p = max(compute_p, A_p + max(compute_p / D_p, comm_p − A_p))
                                + sync_p,
                       exposed_p = time_p − compute_p
    otherwise:         time_p = compute_p + comm_p + sync_p,  exposed_p = comm_p + sync_p
    sync_p = s_sync · (transfers of the phase that move bytes)   (W ≥ 2)

    A_p = f_c · Σ T(t) over the phase's accumulator exchanges (p2p ``<pass>.acc``,
          :func:`is_accumulator`) where the accumulator is exposed, D_p their
          directions (1 without any: A_p = 0)

A ring round (``profiling.losses.ring``) posts its next payload before its block, so
the payload hides behind compute. Its accumulator follows the ring's accumulator policy
(``Shape.hide_accumulator``; default True on CUDA, False on CPU):

* exposed (two buffers): each chain's block adds into the accumulator the previous rank
  sent after its own block, so the chain waits for that transfer first: it is exposed,
  except behind the blocks of the chains computed before it in the round (the round's
  last chain starts its block ``compute_p·(D_p−1)/D_p`` in, and ends no sooner than
  ``A_p + compute_p/D_p``). The next payload queues on its chain's link behind that
  accumulator, so the round also takes at least ``comm_p``.
* hidden (three buffers): the block computes its contribution apart and waits for the
  accumulator after it, so the accumulator hides behind the block like the payload:
  ``A_p = 0``, and the round takes ``max(compute_p, comm_p)``.

Without accumulators the phase takes ``max(compute_p, comm_p)``, its exposed part
``max(0, comm_p − compute_p)``.

    step_time = f·a·o_step + Σ_p r_p · time_p = compute_s + exposed_comm_s

``B = max(sent, received)`` per repetition. An overlapped phase counts as not overlapped
where the bytes need the cores and the ranks occupy all of them (``q ≥ cores`` with
``comm_uses_cores``): the threads that move the bytes and the rank's compute then take
turns on the same cores. Points with ``q > cores`` are flagged ``oversubscribed``: they
are priced, never hidden, and every α there waits ``w_over`` longer (a rank waiting on a
peer that the scheduler has switched out).

Topology: ranks fill nodes of ``ranks_per_node``; when ``W > ranks_per_node`` every
collective and every ring round crosses a node boundary somewhere, and since a ring
round or a ring collective is as slow as its slowest hop, the whole transfer is priced
on the inter-node fits. ``directions = 2`` (a bidirectional ring) sends half the bytes
each way at once; on full-duplex links (``e₂ = 1``) the two directions do not share
bandwidth.

Memory: ``fits`` is ``peak·(1 + fragmentation) + reserve(W) ≤ memory`` per device
(``Hardware.memory_reserve``: CUDA context, NCCL's peer buffers, allocator
fragmentation, each with its source), or ``q ×`` that where the ranks of a node share
the memory (host RAM).

What ``step_time_s`` predicts (:data:`STEP_STATISTIC`): the lower quartile of the
profiler's timed steps (each step timed as its slowest rank), the step as it typically
runs when the host's scheduler delays no rank; calibration fits the same statistic and
validation reports the median beside it, never instead of it. Why the lower quartile,
with the measurements behind that choice: ``docs/cost-model.md``.

Assumptions: every rank does the same work (the slowest rank sets the step, and they
are all equal); transfers of one phase run one after the other on the link; a phase's
compute time is linear in its FLOPs and elements at the profile's rates, plus ``o``;
the first round of an overlapped ring (no accumulator to wait for) is priced like the
others, and so is the last (its accumulator goes home after the block); an exposed
accumulator's transfer is exposed in full even where a wait's ``sync_p`` could cover part
of it. The event simulator (:func:`simulator.simulate`, ``docs/simulator.md``) runs every
rank's timeline on these same prices and is the reference where the assumptions part: it
counts a ring's fill and drain (on GPU profiles a one-way ring with the accumulator
exposed differs from the closed form by exactly ``P − max(C, P) + max(C, A) − A`` per
pass: the code's first round waits for its payload ``P`` with nothing to hide it, and its
own block ``C``, computed last, covers the accumulator ``A`` coming home, which the first
round did not wait for; with it hidden, and on the bidirectional ring, it stays within
one round per ring pass), prices each
hop on its own network level, shares a node's cores among the ranks busy at the time
(processor sharing), and, without overlap, waits for the two chains of a bidirectional
ring one after the other, as the code does, where this form lets them run at once.

Not modelled: contention with traffic outside the loss (gradient all-reduce of the
model), NCCL protocol switches with message size (LL / LL128 / Simple), congestion in
the inter-node fabric, cache effects of block sizes, thermal or frequency changes, and
stragglers (the event simulator has them).

Numbers: ``world``, ``batch`` and ``dim`` broadcast together; counts are int64 while
exact and fall back to float64 where int64 would overflow (e.g. a ``b×N`` block at
``N = 10^8``), so every quantity is finite to ``W = 10^5`` and ``N = 10^8`` and beyond.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np

from profiling.losses.registry import Method, Schedule, Shape, Transfer, wire_dtype
from simulator.hardware import Hardware, NetworkLevel, resolve_hardware

STEP_STATISTIC = "p25"
"""Which statistic of the profiler's ``step_time_s`` the model predicts and calibration
fits (module docstring): the lower quartile of the timed steps."""

_SHAPE_ARGS = ("world", "batch", "dim", "dtype")
_FROM_HARDWARE = ("device", "half_matmul")  # ``shape_for`` takes them from the profile
OPTIONS: tuple[str, ...] = tuple(
    name
    for name in inspect.signature(Shape.of).parameters
    if name not in _SHAPE_ARGS + _FROM_HARDWARE
)
"""Keyword options of :func:`predict`: those of ``Shape.of`` (tile, overlap, ...) that
describe the loss, not the device (the hardware profile gives those)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Prediction:
    """What :func:`predict` returns; every array has the broadcast shape of the inputs."""

    method: str
    hardware: str
    dtype: str
    options: dict[str, Any]
    world: np.ndarray
    batch: np.ndarray
    dim: np.ndarray
    flops: np.ndarray
    """Matmul FLOPs per rank per step, forward + backward."""
    flops_forward: np.ndarray
    flops_backward: np.ndarray
    bytes_sent: np.ndarray
    """Per rank per step, as ``profiling.comm`` counts them."""
    bytes_received: np.ndarray
    messages: np.ndarray
    bytes_by_op: dict[str, dict[str, np.ndarray]]
    """``op:label`` → bytes_sent, bytes_received, messages."""
    peak_memory_bytes: np.ndarray
    """Sum of ``memory_terms``: peak bytes of tensors created in one step (inputs excluded)."""
    memory_terms: dict[str, np.ndarray]
    compute_s: np.ndarray
    comm_s: np.ndarray
    """All communication time, hidden or not."""
    exposed_comm_s: np.ndarray
    """The part of ``comm_s`` not hidden behind compute."""
    step_time_s: np.ndarray
    """compute_s + exposed_comm_s."""
    forward_time_s: np.ndarray
    backward_time_s: np.ndarray
    memory_reserve_bytes: np.ndarray
    """Memory a rank holds outside the loss's peak (``Hardware.memory_reserve``: CUDA
    context, NCCL's buffers; 0 where the profile gives none)."""
    fits: np.ndarray
    """``peak·(1 + fragmentation) + reserve ≤ device memory`` (× ranks on the node, if
    they share it)."""
    crosses_nodes: np.ndarray
    """W > ranks_per_node: transfers priced on the inter-node link."""
    core_share: np.ndarray
    """f ≥ 1: how many times slower one thread runs because ranks share cores."""
    oversubscribed: np.ndarray
    """More ranks on a node than it has cores."""

    def point(self, index) -> dict[str, Any]:
        """One point as plain numbers (``index`` into the broadcast shape)."""
        out: dict[str, Any] = {"method": self.method, "hardware": self.hardware}
        out["dtype"] = self.dtype
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                out[f.name] = value[index].item()
        out["memory_terms"] = {k: v[index].item() for k, v in self.memory_terms.items()}
        return out


def resolve_method(method: Method | str) -> Method:
    if isinstance(method, Method):
        return method
    if not isinstance(method, str):
        raise ValueError(f"method must be a registered name or a Method, got {method!r}")
    from profiling.losses import get_method  # importing registers every method
    from simulator import incumbents  # noqa: F401  (registers the incumbents)

    return get_method(method)


def _grid(world, batch, dim) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = []
    for name, value in (("world", world), ("batch", batch), ("dim", dim)):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number or an array of numbers") from None
        if arr.size == 0:
            raise ValueError(f"{name} is empty")
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must be whole numbers, got {value!r}")
        if np.any(arr < 1):
            raise ValueError(f"{name} must be at least 1, got {arr.min():g}")
        if np.any(arr > 2**53):
            raise ValueError(f"{name} is too large ({arr.max():g})")
        arrays.append(arr)
    try:
        grid = np.broadcast_arrays(*arrays)
    except ValueError:
        shapes = ", ".join(str(a.shape) for a in arrays)
        raise ValueError(f"world, batch and dim do not broadcast together: {shapes}") from None
    world, batch, dim = (a.astype(np.int64) for a in grid)
    return world, batch, dim


def _exact(int_value, float_value, shape) -> np.ndarray:
    """int64 where the int64 evaluation did not overflow, else the float64 one."""
    i = np.broadcast_to(np.asarray(int_value), shape)
    f = np.broadcast_to(np.asarray(float_value, dtype=np.float64), shape)
    if np.issubdtype(i.dtype, np.integer) and np.allclose(i, f, rtol=1e-9, atol=0.5):
        return np.array(i, dtype=np.int64)
    if np.all(np.isfinite(f)) and np.all(np.abs(f) < 2**53) and np.all(f == np.round(f)):
        return f.astype(np.int64)  # whole numbers computed in floats: exact as int64
    return np.array(f, dtype=np.float64)


def _counts(method: Method, shape: Shape):
    """Schedule and memory terms, evaluated in int64 and in float64 (overflow guard)."""
    with np.errstate(over="ignore"):
        schedule = method.schedule(shape)
        terms = method.peak_terms(shape)
        as_float = dataclasses.replace(
            shape,
            world=shape.world.astype(np.float64),
            batch=shape.batch.astype(np.float64),
            dim=shape.dim.astype(np.float64),
        )
        float_schedule = method.schedule(as_float)
        float_terms = method.peak_terms(as_float)
    return schedule, terms, float_schedule, float_terms


def shape_for(hw: Hardware, world, batch, dim, dtype: str, **options) -> Shape:
    """The cost functions' :class:`Shape` of a point on ``hw``: half features are
    multiplied in their own dtype on CUDA and upcast elsewhere (``precision``)."""
    return Shape.of(world, batch, dim, dtype, device=hw.device, **options)


def _compute_dtype(dtype: str, shape: Shape) -> tuple[str, str]:
    """Dtypes whose rates price (the matmuls, the elementwise work) of ``shape``."""
    matmul = dtype if shape.operand_bytes == shape.elem_bytes else "fp32"
    return matmul, (dtype if shape.compute_bytes == shape.elem_bytes else "fp32")


def _rate(table: dict[str, float], dtype: str, what: str, hw: Hardware) -> float:
    try:
        return table[dtype]
    except KeyError:
        raise ValueError(
            f"hardware {hw.name!r} has no {what} rate for {dtype} (has: {', '.join(table)})"
        ) from None


def is_accumulator(transfer: Transfer) -> bool:
    """Whether ``transfer`` is a ring accumulator's exchange (p2p ``<pass>.acc``): with
    the accumulator exposed (``Shape.hide_accumulator`` False) the block adds into the
    accumulator received, so it is waited for before the block."""
    return transfer.op == "p2p" and transfer.label.endswith(".acc")


def transfer_time_s(transfer: Transfer, level: NetworkLevel, oversubscribed=False) -> np.ndarray:
    """Seconds for one repetition of ``transfer`` on ``level`` (α-β, see module docstring);
    where ``oversubscribed``, every α waits ``level.oversubscribed_wait_s`` longer."""
    wait = np.where(oversubscribed, level.oversubscribed_wait_s, 0.0)
    messages = np.asarray(transfer.messages, dtype=np.float64)
    nbytes = np.maximum(
        np.asarray(transfer.bytes_sent, dtype=np.float64),
        np.asarray(transfer.bytes_received, dtype=np.float64),
    )
    if transfer.op == "p2p":
        fit = level.p2p
        directions = np.maximum(np.asarray(transfer.directions, dtype=np.float64), 1.0)
        duplex = np.where(directions > 1, fit.duplex_efficiency, 1.0)
        return (
            messages / directions * (fit.alpha_s + wait)
            + nbytes / directions * fit.beta_s_per_byte / duplex
        )
    if transfer.op not in ("all_gather", "reduce_scatter"):
        raise ValueError(f"transfer {transfer.key!r}: unknown op {transfer.op!r}")
    fit = level.all_gather if transfer.op == "all_gather" else level.reduce_scatter
    return (
        np.where(messages > 0, fit.base_s, 0.0)
        + messages * (fit.alpha_s + wait)
        + nbytes * fit.beta_s_per_byte
    )


def predict(
    method: Method | str,
    world,
    batch,
    dim,
    dtype: str = "fp32",
    hardware: Hardware | str | None = None,
    **options,
) -> Prediction:
    """Price ``method`` at every broadcast point of (world, batch, dim) on ``hardware``.

    ``method``: a registered name or a :class:`Method`; ``hardware``: a profile name, a
    path to a profile, a :class:`Hardware`, or None (this host's calibrated profile if
    any, else ``h100-sxm``); ``options``: those of ``Shape.of`` (``tile``, ``overlap``, ...).
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}; known options: {', '.join(OPTIONS)}")
    spec = resolve_method(method)
    hw = resolve_hardware(hardware)
    world, batch, dim = _grid(world, batch, dim)
    shape = shape_for(hw, world, batch, dim, dtype, **options)
    grid = world.shape
    schedule, terms, float_schedule, float_terms = _counts(spec, shape)

    totals = {}
    for name, fn in (
        ("flops", Schedule.flops),
        ("bytes_sent", Schedule.bytes_sent),
        ("bytes_received", Schedule.bytes_received),
        ("messages", Schedule.messages),
    ):
        totals[name] = _exact(fn(schedule), fn(float_schedule), grid)
    flops_forward = _exact(schedule.flops("forward"), float_schedule.flops("forward"), grid)
    flops_backward = _exact(schedule.flops("backward"), float_schedule.flops("backward"), grid)
    by_op_float = float_schedule.bytes_by_op()
    bytes_by_op = {
        key: {k: _exact(v, by_op_float[key][k], grid) for k, v in row.items()}
        for key, row in schedule.bytes_by_op().items()
    }
    memory_terms = {k: _exact(v, float_terms[k], grid) for k, v in terms.items()}
    peak = _exact(sum(terms.values()), sum(float_terms.values()), grid)

    wire = wire_dtype(dtype, options.get("autocast"))
    times = _times(float_schedule, shape, hw, _compute_dtype(wire, shape), world, spec.kind)
    reserve = np.broadcast_to(hw.memory_reserve.reserve_bytes(world), grid).astype(np.float64)
    return Prediction(
        method=spec.name,
        hardware=hw.name,
        dtype=dtype,
        options=dict(options),
        world=world,
        batch=batch,
        dim=dim,
        flops=totals["flops"],
        flops_forward=flops_forward,
        flops_backward=flops_backward,
        bytes_sent=totals["bytes_sent"],
        bytes_received=totals["bytes_received"],
        messages=totals["messages"],
        bytes_by_op=bytes_by_op,
        peak_memory_bytes=peak,
        memory_terms=memory_terms,
        memory_reserve_bytes=reserve,
        fits=(
            np.asarray(peak, dtype=np.float64) * (1 + hw.memory_reserve.fragmentation_fraction)
            + reserve
        )
        * times.pop("memory_sharers")
        <= hw.memory_bytes,
        **times,
    )


def _times(schedule: Schedule, shape: Shape, hw: Hardware, compute_dtype: str, world, kind: str):
    """Time terms of every phase, summed (module docstring); ``kind``: the method's loss,
    "sigmoid" or "softmax" (the elementwise rate is ``ρ·R_pw`` for softmax)."""
    matmul_dtype, pointwise_dtype = compute_dtype
    matmul_rate = _rate(hw.compute.matmul_flops_per_s, matmul_dtype, "matmul", hw)
    pointwise_rate = _rate(hw.compute.pointwise_elems_per_s, pointwise_dtype, "pointwise", hw)
    pointwise_rate = pointwise_rate * hw.compute.pointwise_factor(kind)
    w = world.astype(np.float64)
    on_node = w if hw.ranks_per_node is None else np.minimum(w, hw.ranks_per_node)
    threads = 1.0 if hw.threads_per_rank is None else float(hw.threads_per_rank)
    core_share = np.maximum(1.0, on_node / hw.cores)
    usable = np.minimum(threads, np.maximum(1.0, hw.cores / on_node))
    speedup = np.clip(1.0 + (usable - 1.0) * hw.compute.parallel_efficiency, 1.0 / usable, usable)
    busy = 1.0 + (np.minimum(on_node, hw.cores) - 1.0) * hw.compute.busy_rank_slowdown
    parallel_cores = speedup / (core_share * busy)
    fixed_scale = core_share * busy * (1.0 + (usable - 1.0) * hw.compute.thread_overhead_growth)
    comm_share = core_share if hw.comm_uses_cores else np.ones_like(core_share)
    crosses = np.zeros(w.shape, dtype=bool) if hw.ranks_per_node is None else w > hw.ranks_per_node
    oversubscribed = on_node > hw.cores
    cores_free = ~(hw.comm_uses_cores & (on_node >= hw.cores))
    zeros = np.zeros(w.shape)
    acc = {k: zeros.copy() for k in ("compute", "comm", "exposed", "forward", "backward")}
    acc["compute"] = acc["compute"] + fixed_scale * hw.compute.step_overhead_s
    acc["forward"] = acc["forward"] + fixed_scale * hw.compute.step_overhead_s
    for phase in schedule.phases:
        repeat = np.asarray(phase.repeat, dtype=np.float64)
        flops = np.asarray(phase.matmul_flops, dtype=np.float64)
        elems = np.asarray(phase.pointwise_elems, dtype=np.float64)
        overhead = np.where(flops + elems > 0, hw.compute.phase_overhead_s, 0.0)
        calls = sum(float(t.called_alone) for t in phase.transfers)
        overhead = overhead + np.where(w == 1, calls * hw.compute.collective_call_s, 0.0)
        compute = fixed_scale * overhead + (flops / matmul_rate + elems / pointwise_rate) / (
            parallel_cores
        )
        comm, sync, before_block, chains = zeros.copy(), zeros.copy(), zeros.copy(), 1.0
        for transfer in phase.transfers:
            t = transfer_time_s(transfer, hw.intra_node, oversubscribed)
            waited = np.asarray(transfer.messages, dtype=np.float64) > 0
            s = np.where(waited, hw.intra_node.sync_s, 0.0)
            if hw.inter_node is not None and crosses.any():
                t = np.where(crosses, transfer_time_s(transfer, hw.inter_node, oversubscribed), t)
                s = np.where(crosses & waited, hw.inter_node.sync_s, s)
            comm, sync = comm + t, sync + s
            if is_accumulator(transfer) and not shape.hide_accumulator:
                before_block = before_block + t
                chains = max(chains, float(transfer.directions))
        comm, before_block = comm * comm_share, before_block * comm_share
        if phase.overlapped:
            hidden = np.maximum(
                compute, before_block + np.maximum(compute / chains, comm - before_block)
            )
            step = np.where(cores_free, hidden, compute + comm)
            exposed = np.where(cores_free, np.maximum(0.0, hidden - compute), comm)
        else:
            step, exposed = compute + comm, comm
        step, exposed, comm = step + sync, exposed + sync, comm + sync
        acc["compute"] = acc["compute"] + repeat * compute
        acc["comm"] = acc["comm"] + repeat * comm
        acc["exposed"] = acc["exposed"] + repeat * exposed
        acc[phase.pass_] = acc[phase.pass_] + repeat * step
    return {
        "compute_s": acc["compute"],
        "comm_s": acc["comm"],
        "exposed_comm_s": acc["exposed"],
        "step_time_s": acc["compute"] + acc["exposed"],
        "forward_time_s": acc["forward"],
        "backward_time_s": acc["backward"],
        "crosses_nodes": crosses,
        "core_share": core_share,
        "oversubscribed": oversubscribed,
        "memory_sharers": on_node if hw.memory_shared else 1.0,
    }
