"""One measured data point: step time, communication, bytes and peak memory of one loss.

API (small on purpose; ``profiling.grid``, the peer comparison and the GPU check build on it):

* :class:`PointConfig`: what to run (method, W, b, d, dtype, device, emulation, ...);
  :func:`validate_point` refuses a config that cannot run, with one line (both live in
  ``profiling.point`` and are re-exported here).
* :func:`measure_rank`: the ``fn`` given to ``profiling.launch``; on every rank it runs
  :func:`measure_point` (or an emulated run) and returns rank 0's ``measured`` block.
* :func:`measure_point(config, group, transport, loss=None)`: the measurement itself,
  inside an existing process group (or an emulated one); ``loss`` overrides the
  registered method (any module with the same forward signature, e.g. a peer's loss).
* :func:`timed_step`: one forward + backward timed on this rank (CUDA events or
  ``perf_counter``), shared with the open_clip comparison (``experiments.peer_worker``).
* :func:`make_inputs` / :func:`single_step`: seeded inputs of one rank, and one
  forward+backward returning loss, gradients, traffic and live-tensor peak (the
  equivalence probe of ``profiling.emulate``).

Method, per point: ``warmup`` untimed steps, then ``steps`` timed steps. Each timed step
starts at a barrier; forward, backward and total are timed with ``time.perf_counter``
on CPU and CUDA events on GPU, then reduced across ranks by the maximum (the slowest
rank sets the step); the record holds median / p10 / p25 / p90 / min / max over steps. Peak
memory comes from one separate untimed step under both trackers of ``profiling.memory``
(the live-tensor tracker slows every operator down and is never active while timing):
``peak_alloc_bytes``, the allocator's peak above the step's starting level (the ground
truth the cost model is validated against), and ``peak_live_bytes`` beside it. On CPU
the counting allocator (``profiling.cpu_allocator``) is installed before warm-up, so
every step runs through it. Traffic and its cross-checks are in ``profiling.traffic``.
Inputs: per rank, ``b×d`` standard normal rows from a generator seeded by (seed, rank),
L2-normalised, cast to the dtype, ``requires_grad``;
``logit_scale = exp(log 10)`` from a learnable 0-d tensor; ``logit_bias = -10`` (learnable)
for sigmoid methods. Ranks keep freed host memory (``profiling.host_allocator``; the
record's ``host_allocator`` says what was set).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import psutil
import torch
import torch.distributed as dist

from profiling import comm, cpu_allocator, host_allocator, traffic
from profiling.losses import build_loss, get_method
from profiling.losses.precision import TORCH_DTYPES
from profiling.memory import AllocatorTracker, LiveTensorTracker
from profiling.point import EXACT_MAX_WORLD, PointConfig, parse_fault, validate_point

__all__ = [  # the measurement API in one import (config and validation from point)
    "EXACT_MAX_WORLD",
    "DistGroup",
    "PointConfig",
    "SoloGroup",
    "make_inputs",
    "measure_point",
    "measure_rank",
    "single_step",
    "timed_step",
    "validate_point",
]

# -- groups: the few cross-rank operations the measurement itself needs ------------------


class DistGroup:
    """The default ``torch.distributed`` process group."""

    def __init__(self, device: torch.device):
        self.rank, self.world, self.device = dist.get_rank(), dist.get_world_size(), device

    def barrier(self) -> None:
        dist.barrier()

    def reduce(self, values: list[float], op: str = "max") -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t.tolist()

    def gather(self, values: list[float]) -> list[list[float]]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t)
        return [o.tolist() for o in out]


class SoloGroup:
    """Rank 0 measured alone (stand-in emulation): every reduction is the identity."""

    rank, world = 0, 1

    def barrier(self) -> None:
        pass

    def reduce(self, values, op="max"):
        return list(values)

    def gather(self, values):
        return [list(values)]


# -- inputs and one step ------------------------------------------------------------------


@dataclass(slots=True)
class StepInputs:
    image: torch.Tensor
    text: torch.Tensor
    log_scale: torch.Tensor
    bias: torch.Tensor | None
    autocast: str | None = None
    """The loss runs inside ``torch.autocast`` of this dtype (:func:`forward`)."""

    @property
    def leaves(self) -> list[torch.Tensor]:
        return [t for t in (self.image, self.text, self.log_scale, self.bias) if t is not None]


def make_inputs(config: PointConfig, rank: int, device) -> StepInputs:
    """This rank's seeded inputs; identical whoever generates them (peers, emulation)."""
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + rank)
    dtype = TORCH_DTYPES[config.dtype]

    def features():
        x = torch.randn(config.batch, config.dim, generator=gen, dtype=torch.float64)
        x = x / x.norm(dim=1, keepdim=True)
        return x.to(device=device, dtype=dtype).requires_grad_(True)

    image, text = features(), features()
    log_scale = torch.tensor(math.log(10.0), device=device).requires_grad_(True)
    sigmoid = get_method(config.method).kind == "sigmoid"
    bias = torch.tensor(-10.0, device=device).requires_grad_(True) if sigmoid else None
    return StepInputs(image, text, log_scale, bias, config.autocast)


def forward(loss: torch.nn.Module, inputs: StepInputs) -> torch.Tensor:
    """The loss of these inputs (gradients cleared), inside autocast if they ask for it."""
    for leaf in inputs.leaves:
        leaf.grad = None
    if inputs.autocast is None:  # not autocast(enabled=False): that would switch off a
        # caller's autocast (the peer benchmark runs both sides inside its own)
        return loss(inputs.image, inputs.text, inputs.log_scale.exp(), inputs.bias)
    amp = TORCH_DTYPES[inputs.autocast]
    with torch.autocast(inputs.image.device.type, dtype=amp):
        return loss(inputs.image, inputs.text, inputs.log_scale.exp(), inputs.bias)


def single_step(config: PointConfig, rank: int, transport: comm.Transport, device) -> dict:
    """One forward+backward under the live-tensor tracker: loss, gradients, bytes, peak."""
    inputs = make_inputs(config, rank, device)
    loss_module = build_loss(config.method, **config.loss_options())
    with (
        comm.use_transport(transport),
        comm.record(transport) as rec,
        LiveTensorTracker() as tracker,
    ):
        value = forward(loss_module, inputs)
        value.backward()
        peak = tracker.peak_bytes
    return {
        "loss": value.detach(),
        "grads": [leaf.grad.detach().clone() for leaf in inputs.leaves],
        "comm_ops": rec.as_dict(),
        "peak_live_bytes": peak,
    }


# -- the measurement ------------------------------------------------------------------------


def spread(values: list[float] | None) -> dict | None:
    """Median, p10, p25, p90, min and max of a list of times (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)

    def pct(q):
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {
        "median": statistics.median(ordered),
        "p10": pct(0.1),
        "p25": pct(0.25),
        "p90": pct(0.9),
        "min": ordered[0],
        "max": ordered[-1],
    }


def _inject(fault: str | None, rank: int, device) -> None:
    parsed = parse_fault(fault)
    if parsed is None or parsed[1] != rank:
        return
    kind = parsed[0]
    if kind == "raise":
        raise RuntimeError(f"injected fault: rank {rank} raised")
    if kind == "oom":  # a real allocation far beyond any machine's memory
        torch.empty(1 << 60, dtype=torch.uint8, device=device)
    if kind == "hang":
        time.sleep(1e6)


def timed_step(loss: torch.nn.Module, inputs: StepInputs, device) -> tuple[float, float, float]:
    """One forward + backward on this rank: (forward, backward, total) seconds, by CUDA
    events on GPU and ``time.perf_counter`` on CPU."""
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        events[0].record()
        value = forward(loss, inputs)
        events[1].record()
        value.backward()
        events[2].record()
        torch.cuda.synchronize(device)
        fwd = events[0].elapsed_time(events[1]) / 1e3
        bwd = events[1].elapsed_time(events[2]) / 1e3
        return fwd, bwd, events[0].elapsed_time(events[2]) / 1e3
    t0 = time.perf_counter()
    value = forward(loss, inputs)
    t1 = time.perf_counter()
    value.backward()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, t2 - t0


def _timed_steps(config, group, transport, loss_module, inputs, device):
    """Per step the cross-rank maxima ``[fwd, bwd, total, exposed]``, the last step's
    recorder, and this rank's per-step samples (:func:`_per_call`)."""
    per_step, bytes_seen, compute, calls = [], set(), [], {}
    for _ in range(config.steps):
        group.barrier()
        with comm.record(transport) as rec:
            fwd, bwd, total = timed_step(loss_module, inputs, device)
        bytes_seen.add((rec.bytes_sent, rec.bytes_received, rec.messages))
        compute.append(total - rec.exposed_s)  # plain floats: nothing the allocator sees
        for key, seconds in rec.call_seconds().items():
            calls.setdefault(key, []).append(seconds)
        per_step.append(group.reduce([fwd, bwd, total, rec.exposed_s], "max"))
    if len(bytes_seen) != 1:
        raise RuntimeError(f"traffic differed between timed steps: {sorted(bytes_seen)}")
    return per_step, rec, _per_call(per_step, compute, calls)


def _per_call(per_step, compute, calls) -> dict:
    """The record's sample fields (``docs/results-schema.md``), microseconds rounded to
    0.1 us: the step times (max over ranks), this rank's host time outside communication
    per step, and per ``op:label`` this rank's per-call seconds of every timed step."""

    def r(values):
        return [round(v, 7) for v in values]

    return {
        "step_samples_s": r(row[2] for row in per_step),
        "compute_samples_s": r(compute),
        "comm_calls_s": {key: [r(step) for step in steps] for key, steps in calls.items()},
    }


def reset_rss_peak() -> bool:
    """Restart this process's resident-set high-water mark (``VmHWM``) from its resident
    set now (``/proc/self/clear_refs``, "5"), so that a worker serving many points reports
    each point's own peak; False where the kernel offers no such reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _rss_peak_bytes() -> int | None:
    """``VmHWM`` of ``/proc/self/status`` in bytes (None where unreadable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _memory_views(loss_module, inputs, device, own_device: bool, rss_reset: bool) -> dict:
    """Peak memory of one untimed step: the allocator's and the live tensors' (both
    trackers around the same forward + backward), then NVML and RSS after it; the RSS
    peak is the process's since ``rss_reset`` (None if it could not be reset)."""
    for leaf in inputs.leaves:  # last step's gradients go before the starting level
        leaf.grad = None
    with (
        AllocatorTracker(device, own_device=own_device) as allocator,
        LiveTensorTracker() as tracker,
    ):
        value = forward(loss_module, inputs)
        value.backward()
    cuda = device.type == "cuda"
    return {
        "peak_alloc_bytes": allocator.peak_bytes,
        "peak_reserved_bytes": allocator.peak_reserved_bytes,
        "peak_live_bytes": tracker.peak_bytes,
        "peak_cuda_allocated_bytes": allocator.peak_bytes if cuda else None,
        "nvml_used_bytes": traffic.nvml_used_bytes(device) if cuda else None,
        "loss": float(value.detach()),
        "rss_bytes": psutil.Process().memory_info().rss,
        "rss_peak_bytes": _rss_peak_bytes() if rss_reset else None,
    }


def measure_point(config, group, transport, device, loss=None, real_comm=True) -> dict:
    """Measure one point on this rank; every rank returns the same reduced numbers.

    ``real_comm`` False (emulation): no byte cross-check, no replay, no overlap.
    """
    rss_reset = reset_rss_peak()  # the RSS peak is this point's, whatever ran before
    if device.type == "cuda":  # reserved blocks and NVML as in a fresh process, not
        torch.cuda.empty_cache()  # what earlier points on these ranks left cached
    loss_module = loss if loss is not None else build_loss(config.method, **config.loss_options())
    inputs = make_inputs(config, group.rank, device)
    # Thread ranks (exact emulation) share the process's allocator: no allocator view.
    own_device = isinstance(group, (DistGroup, SoloGroup))
    if own_device and device.type == "cpu":
        cpu_allocator.counter()  # built and installed before warm-up: every step the same
    with comm.use_transport(transport):
        for _ in range(config.warmup):
            forward(loss_module, inputs).backward()
        _inject(config.fault, group.rank, device)
        per_step, rec, samples = _timed_steps(config, group, transport, loss_module, inputs, device)
        memory = _memory_views(loss_module, inputs, device, own_device, rss_reset)
        if config.profile and real_comm:
            cross = traffic.cross_check(
                lambda: forward(loss_module, inputs).backward(), transport, rec, group, device
            )
        else:
            cross = traffic.not_measured("emulated ranks: no real communication to replay")
    fwd, bwd, total, exposed = (list(col) for col in zip(*per_step, strict=True))
    loss_sum = group.reduce([memory.pop("loss")], "sum")[0]
    agree = group.gather(
        [rec.bytes_sent, rec.bytes_received, rec.messages, memory["peak_live_bytes"]]
    )
    measured = {
        "loss": loss_sum / group.world,
        "step_time_s": spread(total),
        "forward_time_s": spread(fwd),
        "backward_time_s": spread(bwd),
        "comm_exposed_s": spread(exposed),
        "bytes_sent": rec.bytes_sent,
        "bytes_received": rec.bytes_received,
        "messages": rec.messages,
        "comm_ops": rec.as_dict(),
        **samples,
        **cross,
        **memory,
        "torch_threads": torch.get_num_threads(),
        "host_allocator": host_allocator.keep_freed_memory(),
        "ranks_agree": _ranks_agree(agree),
        "rank_values": None if _ranks_agree(agree) else agree,
    }
    measured.update(traffic.overlap(measured["comm_exposed_s"], cross))
    return measured


PEAK_SLACK_BYTES = 4096
"""How far ranks' live peaks may differ and still agree: gloo can hold a finished
collective's small buffers (the 32-byte rank check's output, say) a moment after it
returns, so a tiny step's peak may differ by a few hundred bytes between ranks."""


def _ranks_agree(rows: list[list[int]]) -> bool:
    """Bytes and messages equal on every rank; live peaks within :data:`PEAK_SLACK_BYTES`."""
    first = rows[0]
    return all(row[:3] == first[:3] and abs(row[3] - first[3]) <= PEAK_SLACK_BYTES for row in rows)


def rank_device(config) -> torch.device:
    """This rank's torch device for a config's ``device`` ("cpu" or "cuda"): a
    :class:`PointConfig`, or the open_clip comparison's ``PeerConfig``."""
    if config.device == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def measure_rank(rank: int, world: int, config_dict: dict) -> dict | None:
    """``profiling.launch`` entry: measure one point; rank 0 returns ``measured``."""
    config = PointConfig.from_dict(config_dict)
    device = rank_device(config)
    if config.emulate:
        from profiling import emulate  # emulation imports this module

        return emulate.emulate_point(config, device)
    transport = traffic.RecordingTransport()
    measured = measure_point(config, DistGroup(device), transport, device)
    return measured if rank == 0 else None
