"""What measuring memory costs: one loss step bare, and under each way of measuring it.

Rank 0 of an emulated world (``profiling.emulate.StandInTransport``: the peers' tensors
are stand-in data, so no process group is needed) runs forward + backward ``--steps``
times per variant (the variants after ``bare`` taking turns), one thread, and prints the
lower quartile of the steps in ms per variant:

* ``bare``: the process's own CPU allocator;
* ``counting allocator``: ``profiling.cpu_allocator`` installed (it stays for the rest of
  the process, so this and every later variant run through it); also one
  ``torch.empty(256)`` allocated and freed, bare and through the counting allocator;
* ``AllocatorTracker``: the same, inside the tracker (reset and read of the peak);
* ``LiveTensorTracker``: the live-tensor view (a ``TorchDispatchMode``);
* ``torch.profiler memory``: ``profile(profile_memory=True)`` and the running sum of its
  ``[memory]`` events, the alternative ``profiling.cpu_allocator`` replaced.

Usage: ``python -m experiments.allocator_overhead [--steps 40]``; the kept output and the
machine it ran on are in ``docs/allocator-peak.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from profiling import comm, cpu_allocator, traffic
from profiling.emulate import StandInTransport
from profiling.losses import build_loss
from profiling.measure import PointConfig, forward, make_inputs
from profiling.memory import AllocatorTracker, LiveTensorTracker

POINTS = (
    ("sigmoid-ring", 8, 256, 128),
    ("softmax-ring", 8, 256, 128),
    ("sigmoid-allgather", 8, 256, 128),
    ("softmax-allgather", 8, 256, 128),
)


def _profiled():
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with traffic._stderr_silenced():  # kineto's "USDT ... profiler_start/stop" lines
        prof.start()
    try:
        yield
    finally:
        with traffic._stderr_silenced():
            prof.stop()
        level = peak = 0
        events = [
            (e.start_ns(), e.nbytes())
            for e in prof.profiler.kineto_results.events()
            if e.name() == "[memory]"
        ]
        for _, nbytes in sorted(events):
            level += nbytes
            peak = max(peak, level)


def _step_ms(config, contexts: dict, steps: int) -> dict[str, float]:
    """Lower quartile of ``steps`` steps per context, the contexts taking turns."""
    device = torch.device("cpu")
    transport = StandInTransport(config.world, device, seed=config.seed)
    loss = build_loss(config.method, **config.loss_options())
    inputs = make_inputs(config, 0, device)
    times = {name: [] for name in contexts}
    with comm.use_transport(transport):
        forward(loss, inputs).backward()  # warm-up
        for _ in range(steps):
            for name, context in contexts.items():
                t0 = time.perf_counter()
                with context():
                    forward(loss, inputs).backward()
                times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.quantiles(t, n=4)[0] for name, t in times.items()}


def _alloc_free_ns(count: int = 200_000) -> float:
    """Lower quartile over 5 runs of one ``torch.empty(256)`` + free, in ns."""
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(count):
            torch.empty(256)
        runs.append((time.perf_counter() - t0) / count * 1e9)
    return statistics.quantiles(runs, n=4)[0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    configs = [
        PointConfig(method=m, world=w, batch=b, dim=d, dtype="fp32", emulate="stand-in")
        for m, w, b, d in POINTS
    ]
    bare_ns = _alloc_free_ns()
    rows = {c.method: _step_ms(c, {"bare": contextlib.nullcontext}, args.steps) for c in configs}
    cpu_allocator.counter()
    counted_ns = _alloc_free_ns()
    variants = {
        "counting allocator": contextlib.nullcontext,
        "AllocatorTracker": AllocatorTracker,
        "LiveTensorTracker": LiveTensorTracker,
        "torch.profiler memory": contextlib.contextmanager(_profiled),
    }
    for c in configs:
        rows[c.method] |= _step_ms(c, variants, args.steps)
    print(f"torch.empty(256) + free: bare {bare_ns:.0f} ns, counting allocator {counted_ns:.0f} ns")
    names = ["bare", *variants]
    print(f"lower-quartile step (ms) of {args.steps}, W = 8 stand-in, b = 256, d = 128, fp32")
    print("| method | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for method, row in rows.items():
        print(f"| {method} | " + " | ".join(f"{row[n]:.2f}" for n in names) + " |")


if __name__ == "__main__":
    main()
