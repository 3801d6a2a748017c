"""The rank side of the peer benchmark: every contender on the same inputs, interleaved.

:func:`peers_rank` is the ``fn`` given to ``profiling.launch`` (and called directly by
``sigsim gpu-check``'s peers part on its one-rank group); on each rank of a gloo (or
NCCL) process group it runs, for every contender of ``experiments.open_clip_peers``
that the caller found able to run here (``split_available``):

* inputs: ``profiling.measure.make_inputs`` of a registered method of the same kind
  (same seed, so all sigmoid contenders see identical tensors, all softmax ones too);
* warm-up: ``warmup`` untimed steps of each contender, interleaved;
* timing: ``steps`` repetitions; in each, every contender runs one forward+backward,
  starting at a barrier, timed with ``time.perf_counter`` (CPU) or CUDA events, the
  order rotated by one each repetition (A B C, B C A, ...) so that neither side always
  runs after the other. Per step the slowest rank sets the time (max over ranks);
* memory: one untimed step under ``profiling.memory.AllocatorTracker`` (the allocator's
  peak above its level before the step: every allocation, operator scratch included, the
  same definition for both sides) and one under ``LiveTensorTracker`` (bytes held by
  tensors the step creates);
* autocast: with ``autocast`` set, every step of every contender (warm-up, timed, memory,
  bytes, check) runs inside ``torch.autocast`` of that dtype, as open_clip's
  ``--precision amp`` runs its loss;
* bytes: one untimed step counted twice: ``profiling.comm`` for ours,
  ``experiments.dist_counter`` (wrapped ``torch.distributed``) for open_clip's, both in
  ``profiling.comm``'s ring convention; and, as a cross-check for both, the collectives
  ``torch.profiler`` recorded (``profiling.traffic.profiler_bytes``);
* check: loss and gradients against ``profiling.losses.reference_loss`` on the global
  batch (rank 0 rebuilds every rank's inputs, on the rank's device): loss as the mean
  over ranks, rank 0's feature gradients against ``W ×`` the reference's rows,
  scale/bias gradients as the mean over ranks; a contender's own tolerance
  (``Contender.tolerance``) replaces the dtype's where it has one;
* fused: a ``+fused`` contender's every step runs with ``SIGSIM_FUSED_BLOCKS=1``, ours
  others' with it unset;
* failures: a contender that raises (out of memory included) is a result, ``oom`` or
  ``error`` with the one-line message, and leaves the rotation; the others go on. (At
  W > 1 a failure on one rank only can still stall the others in a collective.)
* profile (``profile=True``): three more untimed steps under ``torch.profiler`` on
  every rank; rank 0's self time per step, per operator group (:data:`OP_GROUPS`: matmuls,
  communication, copies and casts, other ATen operators, the rest) and its top
  operators go into the record (``time_breakdown``): CPU time of the rank's thread on
  CPU, kernel time on CUDA;
* deadline: with ``deadline_epoch_s`` (W = 1 only), no repetition starts that would
  leave too little time for the memory, bytes and check steps (about four repetitions'
  worth) before it; the records say how many repetitions ran.

Rank 0 returns ``{contender: {"status", "message", "measured"}}``.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile

from experiments import dist_counter
from experiments.open_clip_peers import CONTENDER_NAMES, Contender, contender
from experiments.reference_check import RankResult, reference_errors
from profiling import comm, traffic
from profiling.launch import classify_failure
from profiling.losses import fused
from profiling.losses.precision import TORCH_DTYPES
from profiling.measure import (
    PointConfig,
    StepInputs,
    forward,
    make_inputs,
    rank_device,
    spread,
    timed_step,
)
from profiling.memory import AllocatorTracker, LiveTensorTracker

OP_GROUPS = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul")),
    ("communication", ("gloo", "nccl", "c10d", "send", "recv", "wait", "all_gather",
                       "reduce_scatter", "all_reduce", "broadcast", "barrier")),
    ("copies and casts", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::clone",
                          "aten::contiguous", "aten::cat", "aten::stack")),
)  # fmt: skip
"""How ``profile`` groups operators (``time_breakdown``): an operator joins the first
group that names it (matmul, copies; its in-place form too) or one of whose patterns it
contains (communication, lower case); other ``aten::`` operators are "elementwise and reductions", the rest
(Python-level ranges, autograd's bookkeeping) "other"."""
OTHER_ATEN, OTHER = "elementwise and reductions", "other"

KIND_METHOD = {"sigmoid": "sigmoid-ring", "softmax": "softmax-ring"}
"""A registered method of each kind, whose inputs (bias or not) every contender shares."""


@dataclass(kw_only=True, slots=True)
class PeerConfig:
    """One world size of the peer benchmark (``sigsim peers --help``): a point's fields
    (:meth:`point` gives them as a :class:`PointConfig`) for several contenders at once."""

    world: int
    """W, ranks (gloo processes on CPU; NCCL, one GPU per rank, on CUDA)."""
    batch: int = 512
    """b, examples per rank."""
    dim: int = 512
    """d, embedding width."""
    dtype: str = "fp32"
    autocast: str | None = None
    """Run every contender inside ``torch.autocast`` with this dtype ("bf16", "fp16")."""
    device: str = "cpu"
    steps: int = 10
    """Timed repetitions; each runs every contender once."""
    warmup: int = 2
    seed: int = 0
    contenders: tuple[str, ...] = CONTENDER_NAMES
    check: bool = True
    """Compare each contender's loss and gradients with the reference."""
    profile: bool = False
    """Record where one step's time goes (``time_breakdown``: torch.profiler, rank 0)."""
    timeout_s: float = 1800.0
    pg_timeout_s: float = 300.0
    deadline_epoch_s: float | None = None
    """W = 1 only: start no timed repetition that would end the run after this time
    (``time.time()``); None: all ``steps``."""
    extra: dict = field(default_factory=dict)
    """Free-form notes carried into the records (e.g. the command line)."""

    def point(self, kind: str) -> PointConfig:
        """The point fields as a :class:`PointConfig` of ``kind``'s registered method: the
        inputs every contender of that kind shares (``make_inputs``), and what
        ``experiments.peers.validate`` checks. ``autocast`` stays out: the benchmark enters
        it around every contender's step itself, the same way for both sides."""
        return PointConfig(
            method=KIND_METHOD[kind],
            world=self.world,
            batch=self.batch,
            dim=self.dim,
            dtype=self.dtype,
            device=self.device,
            steps=self.steps,
            warmup=self.warmup,
            seed=self.seed,
            timeout_s=self.timeout_s,
            pg_timeout_s=self.pg_timeout_s,
        )

    def as_dict(self) -> dict:
        data = asdict(self)
        data["contenders"] = list(self.contenders)
        return data


def _bytes_step(c: Contender, loss, inputs: StepInputs, world: int) -> dict:
    """One step counted by our counter of that side, and by torch.profiler."""
    counter = comm.record(comm.current()) if c.side == "ours" else dist_counter.count_traffic()
    with (
        counter as rec,
        traffic._stderr_silenced(),  # kineto's per-rank "USDT ... profiler_start/stop" lines
        profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof,
    ):
        forward(loss, inputs).backward()
    theirs = traffic.profiler_bytes(traffic.trace_events(prof), world)
    mine = traffic.comm_bytes_by_kind(rec.as_dict())
    unsized = sorted(k.removeprefix("other:") for k, v in theirs.items() if v["bytes_sent"] is None)
    theirs = {k: v for k, v in theirs.items() if v["bytes_sent"] is not None}
    diffs = [f"the profiler records {k} without sizes it converts; not compared" for k in unsized]
    for kind in sorted((set(mine) | set(theirs)) - set(unsized)):
        a = mine.get(kind, {"bytes_sent": 0, "bytes_received": 0})
        b = theirs.get(kind, {"bytes_sent": 0, "bytes_received": 0})
        if (a["bytes_sent"], a["bytes_received"]) != (b["bytes_sent"], b["bytes_received"]):
            diffs.append(
                f"{kind}: counted {(a['bytes_sent'], a['bytes_received'])} vs profiler "
                f"{(b['bytes_sent'], b['bytes_received'])} (sent, received)"
            )
    return {
        "bytes_sent": rec.bytes_sent,
        "bytes_received": rec.bytes_received,
        "messages": rec.messages,
        "comm_ops": {
            k: {n: v for n, v in s.items() if n != "exposed_s"} for k, s in rec.as_dict().items()
        },
        "byte_counter": "profiling.comm" if c.side == "ours" else "experiments.dist_counter",
        "profiler_bytes": theirs or None,
        "profiler_agrees": (len(diffs) == len(unsized)) if theirs else None,
        "profiler_note": "; ".join(diffs) or (None if theirs else "no collectives recorded"),
    }


def _memory_step(loss, inputs: StepInputs, device) -> dict:
    with AllocatorTracker(device) as allocator:
        forward(loss, inputs).backward()
    with LiveTensorTracker() as tracker:
        forward(loss, inputs).backward()
    return {
        "peak_alloc_bytes": allocator.peak_bytes,
        "peak_reserved_bytes": allocator.peak_reserved_bytes,
        "peak_live_bytes": tracker.peak_bytes,
    }


def op_group(name: str) -> str:
    """The :data:`OP_GROUPS` group of the operator called ``name``."""
    for group, patterns in OP_GROUPS:
        if group == "communication":
            if any(p in name.lower() for p in patterns):
                return group
        elif any(name.rstrip("_") == p.rstrip("_") for p in patterns):  # in place too
            return group
    return OTHER_ATEN if name.startswith("aten::") else OTHER


def _time_breakdown(loss, inputs: StepInputs, device, steps: int = 3, top: int = 8) -> dict:
    """``steps`` steps under torch.profiler: self time per step, per operator group and
    of the ``top`` operators, seconds (``profile`` in the module docstring)."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with traffic._stderr_silenced(), profile(activities=activities) as prof:
        for _ in range(steps):
            forward(loss, inputs).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [
        (e.key, getattr(e, attr, 0.0) / 1e6 / steps, e.count / steps) for e in prof.key_averages()
    ]
    groups = dict.fromkeys([g for g, _ in OP_GROUPS] + [OTHER_ATEN, OTHER], 0.0)
    for name, seconds, _ in events:
        groups[op_group(name)] += seconds
    events.sort(key=lambda e: e[1], reverse=True)
    return {
        "time_breakdown": {
            "clock": "kernel time (CUDA)" if device.type == "cuda" else "self CPU time, rank 0",
            "steps": steps,
            "groups_s": groups,
            "top": [
                {"op": n, "group": op_group(n), "self_s": t, "count": k}
                for n, t, k in events[:top]
                if t > 0
            ],
        }
    }


def check_against_reference(config: PeerConfig, c: Contender, loss, rank, world, device) -> dict:
    """Loss and gradients of this contender against the reference (collective call)."""
    point = config.point(c.kind)
    inputs = make_inputs(point, rank, device)
    value = forward(loss, inputs)
    value.backward()
    scalars = [value.detach().double()] + [
        leaf.grad.detach().double() for leaf in (inputs.log_scale, inputs.bias) if leaf is not None
    ]
    summed = torch.stack(scalars).to(device)
    if world > 1:
        dist.all_reduce(summed)
    mean = (summed / world).cpu()
    if rank != 0:
        return {}
    mine = RankResult(
        rank=0,
        loss=value,
        image_grad=inputs.image.grad,
        text_grad=inputs.text.grad,
        log_scale_grad=inputs.log_scale.grad,
        bias_grad=None if inputs.bias is None else inputs.bias.grad,
    )
    check = reference_errors(
        c.kind,
        point,
        [mine],
        loss_mean=mean[0],
        log_scale_grad_mean=mean[1],
        bias_grad_mean=mean[2] if inputs.bias is not None else None,
        autocast=config.autocast,
        device=device,
    )
    own = c.tolerance_for(config.autocast or config.dtype)
    if own is not None:
        check["tolerance"] = own
        check["passed"] = all(e <= own for e in check["rel_errors"].values())
    return check


@contextlib.contextmanager
def blocks_switch(c: Contender):
    """``SIGSIM_FUSED_BLOCKS`` as contender ``c`` runs: 1 for ``+fused``, unset for ours."""
    if not c.ours:
        yield
        return
    before = os.environ.get(fused.SWITCH)
    os.environ[fused.SWITCH] = "1" if c.fused else ""
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(fused.SWITCH, None)
        else:
            os.environ[fused.SWITCH] = before


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def peers_rank(rank: int, world: int, config_dict: dict) -> dict | None:
    """``profiling.launch`` entry; rank 0 returns ``{contender: outcome}``."""
    config = PeerConfig(**{**config_dict, "contenders": tuple(config_dict["contenders"])})
    device = rank_device(config)
    chosen = [contender(name) for name in config.contenders]
    failed: dict[str, tuple[str, str]] = {}  # name -> (status, one-line message)

    def amp():
        dtype = TORCH_DTYPES[config.autocast] if config.autocast else None
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def attempt(c: Contender, fn):
        """``fn()`` as ``c`` runs; a failure is recorded and ``c`` leaves the rotation."""
        if c.name in failed:
            return None
        try:
            with blocks_switch(c), amp():
                return fn()
        except Exception as exc:
            failed[c.name] = (classify_failure(exc), _one_line(exc))
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return None

    if not chosen:
        return {} if rank == 0 else None
    inputs = {kind: make_inputs(config.point(kind), rank, device) for kind in KIND_METHOD}
    losses = {}
    for c in chosen:
        built = attempt(c, lambda c=c: c.build(rank, world))
        if built is not None:
            losses[c.name] = built
    run = {c.name: (losses.get(c.name), inputs[c.kind]) for c in chosen}

    def step(c: Contender):
        forward(*run[c.name]).backward()
        return True

    for _ in range(config.warmup):
        for c in chosen:
            attempt(c, lambda c=c: step(c))
    local = {c.name: [] for c in chosen}  # per repetition: (fwd, bwd, total)
    repetitions, round_s = 0, 0.0
    while repetitions < config.steps:
        began = time.time()
        # a repetition, then the memory, bytes and check steps: about five rounds
        deadline = config.deadline_epoch_s
        if repetitions and deadline is not None and began + 5 * round_s > deadline:
            break
        shift = repetitions % len(chosen)
        for c in chosen[shift:] + chosen[:shift]:
            if c.name in failed:
                continue
            dist.barrier()
            sample = attempt(c, lambda c=c: timed_step(*run[c.name], device))
            if sample is not None:
                local[c.name].append(sample)
        repetitions += 1
        round_s = time.time() - began
    rows = [
        [t for sample in local[c.name] for t in sample]
        + [math.nan] * (3 * (repetitions - len(local[c.name])))
        for c in chosen
    ]
    flat = torch.tensor(rows, dtype=torch.float64).reshape(-1).to(device)
    if world > 1:
        dist.all_reduce(flat, dist.ReduceOp.MAX)
    slowest = flat.cpu().view(len(chosen), repetitions, 3)

    out = {}
    for index, c in enumerate(chosen):
        measured = None
        if c.name not in failed:
            fwd, bwd, total = (slowest[index, :, j].tolist() for j in range(3))
            measured = {
                "side": c.side,
                "kind": c.kind,
                "fused_blocks": c.fused if c.ours else None,
                "repetitions": repetitions,
                "step_time_s": spread(total),
                "step_time_samples_s": total,
                "forward_time_s": spread(fwd),
                "backward_time_s": spread(bwd),
                "timing_reduction": "max over ranks per step, then over steps",
            }
            for part in (
                lambda c=c: _memory_step(*run[c.name], device),
                lambda c=c: _bytes_step(c, *run[c.name], world),
                *([lambda c=c: _time_breakdown(*run[c.name], device)] if config.profile else []),
            ):
                measured.update(attempt(c, part) or {})
            if config.check:
                check = attempt(
                    c,
                    lambda c=c: check_against_reference(
                        config, c, losses[c.name], rank, world, device
                    ),
                )
                measured["check"] = check
        status, message = failed.get(c.name, ("ok", None))
        out[c.name] = {
            "status": status,
            "message": message,
            "measured": measured if status == "ok" else None,
        }
    return out if rank == 0 else None
