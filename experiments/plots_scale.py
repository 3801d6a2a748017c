"""Plots of the model at cluster scale: all-gather vs ring up to thousands of ranks.

Nothing here is measured except the optional points of :func:`maxbatch`; the lines are
``simulator.predict`` on a hardware profile (H100 by default). Units: memory GiB
(2^30 bytes), time ms, W ranks, b and N examples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from experiments import backends
from experiments.maxbatch import MaxBatch
from experiments.plots import color_of, marker_of, plt

GiB = 2**30


def cluster_worlds(largest: int = 4096) -> np.ndarray:
    """Powers of two from 1 to ``largest`` ranks."""
    return 2 ** np.arange(0, int(np.log2(largest)) + 1)


def cluster_scale(
    hardware,
    *,
    batch: int,
    dim: int,
    dtype: str = "bf16",
    worlds: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
) -> Figure:
    """Per-rank memory, step time and exposed communication vs W at fixed local batch b.

    Left: per-rank peak loss memory, with the device memory as a horizontal line and a
    cross where each method stops fitting. Middle: step time while the method fits.
    Right: exposed communication; the ring methods are drawn with overlap on (solid)
    and off (dashed), so where the solid line sits at zero the overlap hides the traffic.
    """
    world = np.asarray(cluster_worlds() if worlds is None else worlds, dtype=np.int64)
    methods = list(methods or backends.method_names())
    memory_limit = backends.device_memory_bytes(hardware)
    fig, (ax_mem, ax_time, ax_comm) = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")
    for method in methods:
        color = color_of(method)
        variants = [True, False] if backends.is_ring(method) else [True]
        for overlap in variants:
            options = {"overlap": overlap} if backends.is_ring(method) else {}
            model = backends.predict(method, world, batch, dim, dtype, hardware, **options)
            peak = np.broadcast_to(np.asarray(model.peak_memory_bytes, dtype=float), world.shape)
            fits = np.broadcast_to(np.asarray(model.fits, dtype=bool), world.shape)
            step_ms = np.asarray(model.step_time_s, dtype=float) * 1e3
            exposed_ms = np.asarray(model.exposed_comm_s, dtype=float) * 1e3
            style = ("-" if overlap else "--") + marker_of(method)
            suffix = "" if overlap else " (no overlap)"
            if overlap:
                ax_mem.plot(world, peak / GiB, style, color=color, label=method, mfc="none")
                if not fits.all():
                    first = int(np.argmin(fits))
                    ax_mem.plot(world[first], peak[first] / GiB, "x", color=color, markersize=10)
            ax_time.plot(
                world[fits], step_ms[fits], style, color=color, label=method + suffix, mfc="none"
            )
            ax_comm.plot(
                world[fits],
                np.maximum(exposed_ms[fits], 1e-3),
                style,
                color=color,
                label=method + suffix,
                mfc="none",
            )
    ax_mem.axhline(memory_limit / GiB, color="black", linewidth=0.8, linestyle=":")
    ax_mem.text(world[0], memory_limit / GiB * 1.15, f"device memory {memory_limit / GiB:.0f} GiB")
    ax_mem.set_ylabel("per-rank peak loss memory (GiB)")
    ax_mem.set_title("Memory (× where it stops fitting)")
    ax_time.set_ylabel("step time, loss forward + backward (ms)")
    ax_time.set_title("Step time while it fits")
    ax_comm.set_ylabel("exposed communication (ms; 0 drawn as 1e-3)")
    ax_comm.set_title("Traffic not hidden by compute")
    for ax in (ax_mem, ax_time, ax_comm):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("world size W (ranks)")
        ax.grid(True, which="both", alpha=0.3)
    ax_comm.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(
        f"Model at cluster scale on {backends.hardware_label(hardware)}: "
        f"b = {batch} per rank, d = {dim}, {dtype}"
    )
    return fig


def maxbatch(
    predicted: Sequence[MaxBatch],
    measured: Sequence[MaxBatch] = (),
    *,
    memory_bytes: float,
    title: str = "",
) -> Figure:
    """Largest local batch b and global batch N = b·W each method fits, vs W."""
    fig, (ax_local, ax_global) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for method in dict.fromkeys(p.method for p in predicted):
        color = color_of(method)
        mine = sorted((p for p in predicted if p.method == method and p.batch), key=_world)
        style = "-" + marker_of(method)
        ax_local.plot(
            [p.world for p in mine], [p.batch for p in mine], style, color=color, mfc="none"
        )
        ax_global.plot(
            [p.world for p in mine],
            [p.global_batch for p in mine],
            style,
            color=color,
            mfc="none",
            label=f"{method} (model)",
        )
    for method in dict.fromkeys(m.method for m in measured):
        color = color_of(method)
        mine = sorted((m for m in measured if m.method == method and m.batch), key=_world)
        ax_local.plot(
            [m.world for m in mine], [m.batch for m in mine], marker_of(method), color=color
        )
        ax_global.plot(
            [m.world for m in mine],
            [m.global_batch for m in mine],
            marker_of(method),
            color=color,
            label=f"{method} (measured, emulated ranks)",
        )
    ax_local.set_ylabel("largest local batch b (examples per rank)")
    ax_global.set_ylabel("largest global batch N = b·W (examples)")
    for ax in (ax_local, ax_global):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("world size W (ranks)")
        ax.grid(True, which="both", alpha=0.3)
    ax_global.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(title or f"Largest batch in {memory_bytes / GiB:.3g} GiB of loss memory")
    return fig


def _world(entry: MaxBatch) -> int:
    return entry.world
