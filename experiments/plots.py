"""Plots of one run's measurements, with the model's predictions drawn over them.

Every function builds and returns a matplotlib Figure (explicit ``fig, ax``, axes
labelled with units); :func:`save` writes it as PNG and SVG and closes it. Memory is in
MiB (2^20 bytes), time in milliseconds, traffic in MiB per rank. Measured values are
markers, the model's are lines. Plots of the model alone at cluster scale live in
:mod:`experiments.plots_scale`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import NullFormatter

from experiments import backends
from experiments.records import Row, labels

MiB = 2**20


def _style_index(method: str) -> int:
    """A method's fixed position: ours first, then the incumbents, each sorted by name."""
    from simulator.incumbents import INCUMBENTS

    names = [*sorted(backends.method_names()), *sorted(INCUMBENTS)]
    return names.index(method) if method in names else len(names)


def color_of(method: str) -> str:
    """A fixed colour per method name, the same in every plot."""
    index = _style_index(method)
    return plt.get_cmap("tab10")(index) if index < 10 else plt.get_cmap("tab20b")(index % 20)


MARKERS = "osD^vP*Xhp<>"


def marker_of(method: str) -> str:
    """A fixed marker per method, so lines that coincide stay distinguishable."""
    return MARKERS[_style_index(method) % len(MARKERS)]


LINES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)))


def line_of(method: str):
    """A fixed line style per method (model lines that coincide stay visible)."""
    return LINES[_style_index(method) % len(LINES)]


def _log_axes(ax, x_base: int = 10) -> None:
    """Log-log axes with labels on the major ticks only (minor labels collide)."""
    ax.set_xscale("log", base=x_base)
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())


def save(fig: Figure, folder: Path, stem: str) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` into ``folder``, close the figure, return paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.png", folder / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=120, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _default_options(table: Sequence[Row]) -> list[Row]:
    return [r for r in table if r.overlap and not r.tile]


def _model_options(row_like) -> dict:
    options = {}
    if backends.is_ring(row_like.method):
        options["overlap"] = row_like.overlap
        if row_like.tile:
            options["tile"] = row_like.tile
        if getattr(row_like, "hide_accumulator", None) is not None:
            options["hide_accumulator"] = row_like.hide_accumulator
    return options


def reference_shape(table: Sequence[Row]) -> tuple[int, int, str]:
    """The (b, d, dtype) measured at the most world sizes (ties: the largest b)."""
    counts: dict[tuple[int, int, str], set[int]] = {}
    for r in table:
        counts.setdefault((r.batch, r.dim, r.dtype), set()).add(r.world)
    return max(counts, key=lambda key: (len(counts[key]), key[0]))


def measured_peaks_mib(points: Sequence[Row]) -> tuple[list[float], str]:
    """The points' allocator peaks in MiB (the ground truth) and ``"allocator"``; where a
    point has none (records made before it, exact emulation), their live-tensor peaks
    and ``"live tensors"``: one view per line, named in its label."""
    if all(r.peak_alloc_bytes is not None for r in points):
        return [max(r.peak_alloc_bytes, 1) / MiB for r in points], "allocator"
    return [max(r.peak_live_bytes, 1) / MiB for r in points], "live tensors"


def memory_vs_global_batch(table: Sequence[Row], hardware=None) -> Figure:
    """Per-rank peak memory vs global batch N = b·W, one panel per W, every method."""
    table = _default_options(table)
    if not table:
        raise ValueError("no measured points with default ring options to plot")
    dim, dtype = table[0].dim, table[0].dtype
    table = [r for r in table if r.dim == dim and r.dtype == dtype]
    worlds = sorted({r.world for r in table})
    fig, axes = plt.subplots(
        1,
        len(worlds),
        figsize=(3.6 * len(worlds), 3.6),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    for ax, world in zip(axes[0], worlds, strict=True):
        at_world = [r for r in table if r.world == world]
        for method in dict.fromkeys(r.method for r in at_world):
            points = sorted((r for r in at_world if r.method == method), key=lambda r: r.batch)
            color = color_of(method)
            peaks, view = measured_peaks_mib(points)
            ax.plot(
                [r.global_batch for r in points],
                peaks,
                marker_of(method),
                mfc="none",
                color=color,
                label=f"{method} (measured, {view})",
            )
            if hardware is not None:
                batch = np.unique(
                    np.geomspace(points[0].batch, points[-1].batch, 24).round().astype(int)
                )
                model = backends.predict(
                    method, world, batch, dim, dtype, hardware, **_model_options(points[0])
                )
                ax.plot(
                    batch * world,
                    np.maximum(np.asarray(model.peak_memory_bytes, dtype=float), 1) / MiB,
                    linestyle=line_of(method),
                    color=color,
                    label=f"{method} (model)",
                )
        _log_axes(ax)
        ax.set_title(f"W = {world}")
        ax.set_xlabel("global batch N = b·W (examples)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("per-rank peak memory (MiB)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(f"Per-rank peak memory, d = {dim}, {dtype}")
    return fig


def memory_vs_world(table: Sequence[Row], hardware=None) -> Figure:
    """Per-rank peak memory vs W, one panel per local batch b (emulated ranks reach large W)."""
    table = _default_options(table)
    if not table:
        raise ValueError("no measured points with default ring options to plot")
    dim, dtype = table[0].dim, table[0].dtype
    table = [r for r in table if r.dim == dim and r.dtype == dtype]
    batches = sorted({r.batch for r in table})
    fig, axes = plt.subplots(
        1,
        len(batches),
        figsize=(3.6 * len(batches), 3.6),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    for ax, batch in zip(axes[0], batches, strict=True):
        at_batch = [r for r in table if r.batch == batch]
        for method in dict.fromkeys(r.method for r in at_batch):
            points = sorted((r for r in at_batch if r.method == method), key=lambda r: r.world)
            color = color_of(method)
            peaks, view = measured_peaks_mib(points)
            ax.plot(
                [r.world for r in points],
                peaks,
                marker_of(method),
                color=color,
                label=f"{method} (measured, {view})",
            )
            if hardware is not None:
                world = np.unique(
                    np.geomspace(points[0].world, points[-1].world, 24).round().astype(int)
                )
                model = backends.predict(method, world, batch, dim, dtype, hardware)
                ax.plot(
                    world,
                    np.maximum(np.asarray(model.peak_memory_bytes, dtype=float), 1) / MiB,
                    linestyle=line_of(method),
                    color=color,
                    label=f"{method} (model)",
                )
        _log_axes(ax, x_base=2)
        ax.set_title(f"b = {batch}")
        ax.set_xlabel("world size W (ranks)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("per-rank peak memory (MiB)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(f"Per-rank peak memory vs world size, d = {dim}, {dtype}")
    return fig


def bytes_vs_world(table: Sequence[Row], hardware=None) -> Figure:
    """Bytes sent per rank per step vs W at one (b, d, dtype), every method."""
    batch, dim, dtype = reference_shape(table)
    table = [
        r
        for r in _default_options(table)
        if (r.batch, r.dim, r.dtype) == (batch, dim, dtype) and not r.emulated
    ]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for method in dict.fromkeys(r.method for r in table):
        points = sorted((r for r in table if r.method == method), key=lambda r: r.world)
        color = color_of(method)
        ax.plot(
            [r.world for r in points],
            [r.bytes_sent / MiB for r in points],
            marker_of(method),
            mfc="none",
            color=color,
            label=f"{method} (measured)",
        )
        if hardware is not None:
            world = np.arange(1, max(r.world for r in points) + 1)
            model = backends.predict(method, world, batch, dim, dtype, hardware)
            ax.plot(
                world,
                np.broadcast_to(np.asarray(model.bytes_sent, dtype=float), world.shape) / MiB,
                linestyle=line_of(method),
                color=color,
                label=f"{method} (model)",
            )
    ax.set_xlabel("world size W (ranks)")
    ax.set_ylabel("bytes sent per rank per step (MiB)")
    ax.set_title(f"Traffic per rank, b = {batch}, d = {dim}, {dtype} (forward + backward)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    return fig


def step_time_vs_world(table: Sequence[Row], hardware=None) -> Figure:
    """Measured step time vs W as stacked bars: compute, then exposed communication."""
    batch, dim, dtype = reference_shape(table)
    table = [
        r for r in table if (r.batch, r.dim, r.dtype) == (batch, dim, dtype) and not r.emulated
    ]
    series = labels(table)
    worlds = sorted({r.world for r in table})
    width = 0.8 / len(series)
    fig, ax = plt.subplots(
        figsize=(max(6.4, 0.7 * len(worlds) * len(series)), 4.2), layout="constrained"
    )
    for i, label in enumerate(series):
        points = {r.world: r for r in table if r.label == label}
        x = np.array([worlds.index(w) for w in points]) + (i - (len(series) - 1) / 2) * width
        compute_ms = np.array([r.compute_s * 1e3 for r in points.values()])
        exposed_ms = np.array([r.comm_exposed_s * 1e3 for r in points.values()])
        color = color_of(next(iter(points.values())).method)
        hatch = "//" if "no-overlap" in label else None
        ax.bar(x, compute_ms, width, color=color, hatch=hatch, label=label)
        ax.bar(
            x,
            exposed_ms,
            width,
            bottom=compute_ms,
            color=color,
            alpha=0.35,
            hatch=hatch,
            edgecolor="black",
            linewidth=0.4,
        )
        if hardware is not None:
            row = next(iter(points.values()))
            model = backends.predict(
                row.method,
                np.array(list(points)),
                batch,
                dim,
                dtype,
                hardware,
                **_model_options(row),
            )
            ax.plot(
                x,
                np.asarray(model.step_time_s, dtype=float) * 1e3,
                "k_",
                markersize=10,
                label="model step time" if i == 0 else None,
            )
    ax.set_xticks(range(len(worlds)), [str(w) for w in worlds])
    ax.set_xlabel("world size W (ranks)")
    ax.set_ylabel("step time, forward + backward (ms)")
    ax.set_title(f"Step time split, b = {batch}, d = {dim}, {dtype}; median of max over ranks")
    ax.grid(True, axis="y", alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    handles += [Patch(color="grey"), Patch(color="grey", alpha=0.35)]
    names += ["solid: compute", "pale: exposed comm"]
    ax.legend(handles, names, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    return fig


QUANTITY_UNITS = {
    "step_time_s": ("step time (lower-quartile step)", "ms", 1e3),
    "step_time_median_s": ("step time (median step)", "ms", 1e3),
    "peak_memory_bytes": ("peak memory per rank", "MiB", 1 / MiB),
    "bytes_sent": ("bytes sent per rank", "MiB", 1 / MiB),
}


def predicted_vs_measured(comparisons: Sequence[backends.Comparison]) -> Figure:
    """Predicted vs measured per quantity, log-log, with y = x and a ±10% band."""
    quantities = [q for q in QUANTITY_UNITS if any(c.quantity == q for c in comparisons)]
    if not quantities:
        raise ValueError("no comparisons to plot")
    fig, axes = plt.subplots(
        1, len(quantities), figsize=(4.4 * len(quantities), 4.0), layout="constrained"
    )
    axes = np.atleast_1d(axes)
    for ax, quantity in zip(axes, quantities, strict=True):
        name, unit, scale = QUANTITY_UNITS[quantity]
        rows = [c for c in comparisons if c.quantity == quantity and c.measured > 0]
        values = np.array([[c.measured, c.predicted] for c in rows], dtype=float) * scale
        low, high = values[values > 0].min() / 1.5, values.max() * 1.5
        line = np.geomspace(low, high, 50)
        ax.fill_between(line, line * 0.9, line * 1.1, color="grey", alpha=0.25, label="±10%")
        ax.plot(line, line, "k-", linewidth=0.8, label="y = x")
        for method in dict.fromkeys(c.method for c in rows):
            for emulated in (False, True):
                mine = np.array(
                    [
                        [c.measured, c.predicted]
                        for c in rows
                        if c.method == method and c.emulated == emulated
                    ],
                    dtype=float,
                ).reshape(-1, 2)
                if not len(mine):
                    continue
                ax.plot(
                    mine[:, 0] * scale,
                    np.maximum(mine[:, 1] * scale, low),
                    marker_of(method),
                    color=color_of(method),
                    mfc="none" if emulated else color_of(method),
                    label=f"{method}{' (emulated ranks)' if emulated else ''}",
                    alpha=0.8,
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"measured {name} ({unit})")
        ax.set_ylabel(f"predicted {name} ({unit})")
        ax.grid(True, which="both", alpha=0.3)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle("Model vs measurement")
    return fig


def step_distributions(records: Sequence[dict], hardware, steps: int = 150) -> Figure | None:
    """Measured step-time samples (``measured.step_samples_s``) beside the event
    simulator's (:func:`simulator.validate.simulate_record`: ``steps`` steps, the profile's
    fitted jitter) at every real-rank point: one panel per local batch (rows) and W
    (columns), per method a filled box (measured) and a hatched one (simulated); boxes
    span p25-p75, whiskers p10-p90, the line is the median. None when no record has
    samples (records written before 2026-11-29)."""
    from simulator.validate import simulate_record

    mine = [
        r
        for r in records
        if r.get("status") == "ok"
        and not r["config"].get("emulate")
        and (r.get("measured") or {}).get("step_samples_s")
    ]
    if not mine:
        return None
    batches = sorted({r["config"]["batch"] for r in mine})
    worlds = sorted({r["config"]["world"] for r in mine})
    methods = list(dict.fromkeys(sorted(r["config"]["method"] for r in mine)))
    fig, axes = plt.subplots(
        len(batches), len(worlds), figsize=(2.6 * len(worlds) + 2.4, 2.5 * len(batches)),
        layout="constrained", squeeze=False, sharey="row",
    )  # fmt: skip
    box = {"whis": (10, 90), "showfliers": False, "widths": 0.35, "patch_artist": True}
    for r in mine:
        c = r["config"]
        ax = axes[batches.index(c["batch"]), worlds.index(c["world"])]
        x = methods.index(c["method"])
        measured = np.asarray(r["measured"]["step_samples_s"]) * 1e3
        simulated = simulate_record(r, hardware, steps).step_time_s * 1e3
        colour = color_of(c["method"])
        for offset, data, hatch, alpha in (
            (-0.2, measured, None, 0.7),
            (0.2, simulated, "///", 0.25),
        ):
            parts = ax.boxplot([data], positions=[x + offset], **box)
            for patch in parts["boxes"]:
                patch.set(facecolor=colour, alpha=alpha, hatch=hatch, edgecolor=colour)
            for key in ("medians", "whiskers", "caps"):
                for line in parts[key]:
                    line.set(color="black" if key == "medians" else colour, linewidth=1)
    for i, b in enumerate(batches):
        for j, w in enumerate(worlds):
            ax = axes[i, j]
            ax.set_yscale("log")
            ax.set_xticks(range(len(methods)), [""] * len(methods))
            ax.set_title(f"W = {w}, b = {b}", fontsize=9)
            ax.grid(True, axis="y", which="both", alpha=0.3)
        axes[i, 0].set_ylabel("step time (ms)")
    handles = [Patch(color=color_of(m), label=m) for m in methods]
    handles += [Patch(facecolor="grey", alpha=0.7, label="measured"),
                Patch(facecolor="grey", alpha=0.25, hatch="///", label="simulated")]  # fmt: skip
    axes[0, -1].legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(
        f"Step time per step, measured vs simulated ({backends.hardware_label(hardware)}); "
        "box p25-p75, whiskers p10-p90"
    )
    return fig
