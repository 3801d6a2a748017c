"""A measured step as one Chrome-trace JSON, beside the simulated one (``sigsim trace``).

:func:`measure_trace` runs ``W`` local ranks (``profiling.launch``: gloo, one thread per
rank), takes ``warmup`` untimed steps, then one step under ``torch.profiler`` on every
rank, and merges the ranks' traces into one file laid out like
:func:`simulator.trace.chrome_trace`'s: one process per rank (``pid`` = rank, named
``rank r``), the rank's main thread as ``tid`` 0 and any other thread of it after.

Labels. Every call into ``profiling.comm`` is wrapped in a ``record_function`` named as
the simulator names it: ``all_gather:<label>`` and ``reduce_scatter:<label>`` (the call,
its wait included), ``p2p:<label>`` (posting the exchange) and ``wait p2p:<label>``
(waiting for it); the step is ``sigsim.step``. Only events inside each rank's
``sigsim.step`` are kept.

One clock. Kineto's CPU timestamps are the host's wall clock less a constant
(``baseTimeNanoseconds``), the same in every process of one host, so the ranks' events
are already on one clock; the merged trace is shifted as a whole so that the earliest
rank's step starts at 0. Ranks on several hosts would need their clocks aligned first;
this runs on one host only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STEP = "sigsim.step"


def _labelled_transport():
    """``profiling.comm``'s transport with a ``record_function`` around every operation."""
    from torch.profiler import record_function

    from profiling import comm

    class Pending:
        def __init__(self, pending, name):
            self.pending, self.name = pending, name

        def wait(self):
            with record_function(self.name):
                return self.pending.wait()

    class Labelled(comm.TorchDistributedTransport):
        def all_gather(self, tensor, label):
            with record_function(f"all_gather:{label}"):
                return super().all_gather(tensor, label)

        def reduce_scatter(self, tensor, label):
            with record_function(f"reduce_scatter:{label}"):
                return super().reduce_scatter(tensor, label)

        def start_p2p(self, sends, recvs, label):
            with record_function(f"p2p:{label}"):
                pending = super().start_p2p(sends, recvs, label)
            return Pending(pending, f"wait p2p:{label}")

    return Labelled()


def _rank_trace(rank, world, method, batch, dim, dtype, options, warmup, seed) -> list[dict]:
    """One rank: warm up, profile one step, return its events inside the step."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile, record_function

    from profiling import comm
    from profiling.losses import build_loss, get_method
    from profiling.losses.precision import TORCH_DTYPES
    from profiling.traffic import trace_events

    loss = build_loss(method, **options)
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    feats = [F.normalize(torch.randn(batch, dim, generator=gen), dim=1) for _ in range(2)]
    x, y = (f.to(TORCH_DTYPES[dtype]).requires_grad_() for f in feats)
    scale = torch.tensor(10.0, requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True) if get_method(method).kind == "sigmoid" else None

    def step():
        for t in (x, y, scale, bias):
            if t is not None:
                t.grad = None
        loss(x, y, scale, bias).backward()

    with comm.use_transport(_labelled_transport()):
        for _ in range(warmup):
            step()
        dist.barrier()
        with profile(activities=[ProfilerActivity.CPU]) as prof, record_function(STEP):
            step()
        events = trace_events(prof)
    (mark,) = [e for e in events if e.get("name") == STEP and e.get("ph") == "X"]
    start, end = mark["ts"], mark["ts"] + mark["dur"]
    return [e for e in events if e.get("ph") == "X" and start <= e["ts"] <= end]


def merge(per_rank: list[list[dict]], summary: dict[str, Any]) -> dict[str, Any]:
    """The ranks' events as one trace: a process per rank, one clock, step start at 0."""
    steps = [next(e for e in events if e["name"] == STEP) for events in per_rank]
    origin = min(e["ts"] for e in steps)
    out: list[dict[str, Any]] = []
    for rank, events in enumerate(per_rank):
        out.append(
            {"name": "process_name", "ph": "M", "pid": rank, "args": {"name": f"rank {rank}"}}
        )
        out.append(
            {"name": "process_sort_index", "ph": "M", "pid": rank, "args": {"sort_index": rank}}
        )
        main_tid = steps[rank]["tid"]
        tids = {main_tid: 0}
        for e in events:
            tids.setdefault(e["tid"], len(tids))
        for tid, lane in tids.items():
            name = "main thread" if tid == main_tid else f"thread {tid}"
            out.append({"name": "thread_name", "ph": "M", "pid": rank, "tid": lane,
                        "args": {"name": name}})  # fmt: skip
        for e in events:
            out.append(
                {
                    "name": e["name"],
                    "cat": _category(e),
                    "ph": "X",
                    "ts": e["ts"] - origin,
                    "dur": e["dur"],
                    "pid": rank,
                    "tid": tids[e["tid"]],
                }
            )
    return {"traceEvents": out, "displayTimeUnit": "ms", "otherData": summary}


def _category(event: dict) -> str:
    name = event["name"]
    if name.startswith("wait "):
        return "wait"
    op = name.split(":", 1)[0]
    if op == "p2p":
        return "p2p"
    if op in ("all_gather", "reduce_scatter"):
        return "collective"
    return "step" if name == STEP else "compute"


def measure_trace(
    method: str,
    world: int,
    batch: int,
    dim: int,
    dtype: str = "fp32",
    *,
    warmup: int = 2,
    seed: int = 0,
    timeout_s: float = 300.0,
    **options,
) -> dict[str, Any]:
    """Profile one step of ``method`` on ``world`` local gloo ranks; the merged trace."""
    from profiling.launch import launch_or_raise
    from profiling.losses import get_method

    spec = get_method(method)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(f"method {method!r} has no option {unknown[0]!r}")
    if world < 1 or batch < 1 or dim < 1 or warmup < 0:
        raise ValueError("world, batch and dim must be at least 1 and warmup at least 0")
    args = (method, batch, dim, dtype, options, warmup, seed)
    per_rank = launch_or_raise(_rank_trace, args, world=world, backend="gloo", timeout_s=timeout_s)
    summary = {"method": method, "world": world, "batch": batch, "dim": dim, "dtype": dtype,
               "options": options, "warmup": warmup, "seed": seed, "backend": "gloo"}  # fmt: skip
    return merge(per_rank, summary)


def write_json(trace: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(trace))
    return path
