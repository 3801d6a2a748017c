"""Plots, checked through their figure objects: every axis labelled with a unit, one
series per method (measured and model), no NaN or infinite data, and PNG + SVG written.

Inputs are result records in the profiler's schema, built from a seeded generator
(model values times random noise), so these tests start no processes."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from experiments import analysis, backends, plots, plots_scale
from experiments.maxbatch import measured_max_batch, predicted_max_batch
from experiments.records import rows
from profiling.losses import METHODS

UNIT = re.compile(r"\((?:[^()]*\b(?:MiB|GiB|ms|ranks|examples|elements)\b[^()]*)\)")


def synthetic_records(
    seed: int, hardware, worlds=(1, 2, 4), batches=(16, 64), dim=32, emulated=False
):
    """Records shaped like the profiler's, with values near the model's (noise ±20%)."""
    rng = np.random.default_rng(seed)
    records = []
    for method in METHODS:
        ring = backends.is_ring(method)
        for overlap in (True, False) if ring else (True,):
            for world in worlds:
                for batch in batches:
                    options = {"overlap": overlap} if ring else {}
                    p = backends.predict(method, world, batch, dim, "fp32", hardware, **options)
                    step = float(p.step_time_s) * rng.uniform(0.8, 1.2)
                    exposed = step * rng.uniform(0.0, 0.4) if world > 1 else 0.0
                    spread = {"min": step * 0.95, "p10": step * 0.98, "p25": step}
                    spread |= {"median": step * 1.1, "p90": step * 1.3}
                    records.append(
                        {
                            "schema": 1,
                            "key": f"{method}-{overlap}-{world}-{batch}-{emulated}",
                            "status": "ok",
                            "message": None,
                            "config": {
                                "method": method,
                                "world": world,
                                "batch": batch,
                                "dim": dim,
                                "dtype": "fp32",
                                "emulate": "stand-in" if emulated else None,
                                "overlap": overlap,
                                "tile": None,
                            },
                            "env": {"host": "test", "cpu_count": 2, "torch": "x"},
                            "measured": {
                                "loss": float(rng.uniform(0.5, 5)),
                                "step_time_s": spread,
                                "comm_exposed_s": {"median": exposed},
                                "overlap_pct": float(rng.uniform(0, 100)),
                                "bytes_sent": int(p.bytes_sent),
                                "bytes_received": int(p.bytes_received),
                                "peak_alloc_bytes": int(
                                    float(p.peak_memory_bytes) * rng.uniform(0.95, 1.05)
                                ),
                                "peak_live_bytes": int(float(p.peak_memory_bytes) * 0.9),
                                "rss_peak_bytes": int(rng.integers(2**27, 2**28)),
                            },
                        }
                    )
    return records


@pytest.fixture(scope="module")
def hardware():
    return backends.hardware_for("h100-sxm")


@pytest.fixture(scope="module")
def table(hardware):
    return rows(synthetic_records(11, hardware))


def series_data(ax):
    """(x, y) arrays of every line on an axis."""
    return [
        (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
        for line in ax.lines
    ]


def check_axes(fig, *, axes_with_data=None):
    axes = [ax for ax in fig.axes if ax.lines or ax.patches or ax.collections]
    if axes_with_data is not None:
        assert len(axes) == axes_with_data
    for ax in axes:
        assert UNIT.search(ax.get_xlabel()), f"x label without unit: {ax.get_xlabel()!r}"
        if ax.get_ylabel():
            assert UNIT.search(ax.get_ylabel()), f"y label without unit: {ax.get_ylabel()!r}"
        for x, y in series_data(ax):
            assert x.size and np.isfinite(x).all() and np.isfinite(y).all()
        for patch in ax.patches:
            assert math.isfinite(patch.get_height()) and patch.get_height() >= 0
    assert any(ax.get_ylabel() for ax in axes)
    return axes


def test_memory_plot_has_measured_and_model_series_per_method(table, hardware, tmp_path):
    fig = plots.memory_vs_global_batch(table, hardware)
    axes = check_axes(fig, axes_with_data=3)
    for ax in axes:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        labels = [line.get_label() for line in ax.lines]
        assert sorted(labels) == sorted(
            [f"{m} (measured, allocator)" for m in METHODS] + [f"{m} (model)" for m in METHODS]
        )
    assert "MiB" in axes[0].get_ylabel()
    files = plots.save(fig, tmp_path, "memory")
    assert [f.suffix for f in files] == [".png", ".svg"] and all(f.stat().st_size for f in files)


def test_bytes_plot_model_matches_measured_bytes(table, hardware):
    fig = plots.bytes_vs_world(table, hardware)
    (ax,) = check_axes(fig, axes_with_data=1)
    assert len(ax.lines) == 2 * len(METHODS)
    by_label = {line.get_label(): line for line in ax.lines}
    for method in METHODS:
        measured = by_label[f"{method} (measured)"]
        model = by_label[f"{method} (model)"]
        x_model = list(model.get_xdata())
        for x, y in zip(measured.get_xdata(), measured.get_ydata(), strict=True):
            assert y == pytest.approx(model.get_ydata()[x_model.index(x)])


def test_step_time_bars_stack_compute_and_exposed_comm(table, hardware):
    fig = plots.step_time_vs_world(table, hardware)
    (ax,) = check_axes(fig, axes_with_data=1)
    series = len(METHODS) + sum(backends.is_ring(m) for m in METHODS)  # no-overlap variants
    assert len(ax.containers) == 2 * series
    assert len(ax.lines) == series
    compute, exposed = ax.containers[0], ax.containers[1]
    for low, high in zip(compute.patches, exposed.patches, strict=True):
        assert high.get_y() == pytest.approx(low.get_height())
    assert "ms" in ax.get_ylabel()


def test_predicted_vs_measured_draws_identity_and_ten_percent_band(hardware):
    rng = np.random.default_rng(5)
    comparisons = [
        backends.Comparison(
            quantity=q,
            method=m,
            world=int(rng.integers(1, 9)),
            batch=64,
            dim=32,
            dtype="fp32",
            predicted=v * ratio,
            measured=v,
            error_pct=100 * (ratio - 1),
        )
        for m in METHODS
        for q, v in (("step_time_s", 1e-2), ("peak_memory_bytes", 2e6), ("bytes_sent", 3e5))
        for ratio in rng.uniform(0.7, 1.3, size=3)
    ]
    fig = plots.predicted_vs_measured(comparisons)
    axes = check_axes(fig, axes_with_data=3)
    for ax in axes:
        assert any(line.get_label() == "y = x" for line in ax.lines)
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 1 and bands[0].get_label() == "±10%"
        assert len(ax.lines) == 1 + len(METHODS)
        identity = next(line for line in ax.lines if line.get_label() == "y = x")
        assert np.allclose(identity.get_xdata(), identity.get_ydata())


def test_cluster_scale_marks_where_all_gathers_stop_fitting(hardware):
    fig = plots_scale.cluster_scale(hardware, batch=2048, dim=1024, dtype="bf16")
    ax_mem, ax_time, ax_comm = check_axes(fig, axes_with_data=3)
    assert ax_mem.get_xlim()[1] >= 4096
    rings = [m for m in METHODS if backends.is_ring(m)]
    gathers = [m for m in METHODS if not backends.is_ring(m)]
    crosses = [line for line in ax_mem.lines if line.get_linestyle() == "None"]
    # At b = 2048, d = 1024 the all-gathers outgrow 80 GiB before W = 4096; rings never do.
    assert len(crosses) == len(gathers)
    assert len(ax_time.lines) == len(gathers) + 2 * len(rings)
    assert len(ax_comm.lines) == len(gathers) + 2 * len(rings)
    for line in ax_time.lines:
        if any(line.get_label() == g for g in gathers):
            assert max(line.get_xdata()) < 4096


def test_maxbatch_model_is_exact_to_one_example_and_plots(hardware, table):
    memory = 4 * 2**30
    worlds = [1, 8, 64]
    for method in METHODS:
        for entry in predicted_max_batch(method, worlds, 256, "bf16", hardware, memory):
            fits = backends.predict(method, entry.world, entry.batch, 256, "bf16", hardware)
            above = backends.predict(method, entry.world, entry.batch + 1, 256, "bf16", hardware)
            free = memory - hardware.memory_reserve.reserve_bytes(entry.world)  # context, NCCL
            assert float(fits.peak_memory_bytes) <= free < float(above.peak_memory_bytes)
    measured = measured_max_batch(table, memory_bytes=2**20)
    assert all(m.batch in (0, 16, 64) for m in measured)
    fig, predicted, found = analysis.maxbatch_figure(
        METHODS,
        hardware,
        memory_bytes=memory,
        worlds=worlds,
        dim=256,
        dtype="bf16",
        measured=table,
    )
    ax_local, ax_global = check_axes(fig, axes_with_data=2)
    assert len(predicted) == len(METHODS) * len(worlds)
    assert len(ax_local.lines) == len(METHODS) + len({m.method for m in found})
    assert "examples" in ax_local.get_ylabel() and "examples" in ax_global.get_ylabel()


def test_memory_vs_world_from_emulated_ranks(hardware):
    records = synthetic_records(3, hardware, worlds=(16, 64, 256), batches=(32, 128), emulated=True)
    table = rows(records, emulated=True)
    assert len(table) == len(records) and not rows(records, emulated=False)
    fig = plots.memory_vs_world(table, hardware)
    axes = check_axes(fig, axes_with_data=2)
    for ax in axes:
        assert ax.get_xscale() == "log"
        assert len(ax.lines) == 2 * len(METHODS)
        for line in ax.lines:
            if line.get_label().endswith("(measured, allocator)"):
                assert list(line.get_xdata()) == [16, 64, 256]


def test_memory_plot_falls_back_to_live_peaks_and_says_so(hardware):
    records = synthetic_records(4, hardware)
    for record in records:  # written before the allocator peak existed
        del record["measured"]["peak_alloc_bytes"]
    fig = plots.memory_vs_global_batch(rows(records), hardware)
    labels = {line.get_label() for ax in fig.axes for line in ax.lines}
    assert {f"{m} (measured, live tensors)" for m in METHODS} <= labels
    assert not any("allocator" in label for label in labels)


def test_measured_max_batch_counts_the_allocator_peak(hardware):
    records = synthetic_records(5, hardware)
    for record in records:  # tensors fit, the allocator's peak (operator scratch) does not
        record["measured"]["peak_live_bytes"] = 1
        record["measured"]["peak_alloc_bytes"] = 2**20 + 1
    found = measured_max_batch(rows(records), memory_bytes=2**20)
    assert found and all(m.batch == 0 and m.source == "measured" for m in found)
    for record in records:  # records made before the allocator peak: live, and said so
        del record["measured"]["peak_alloc_bytes"]
    found = measured_max_batch(rows(records), memory_bytes=2**20)
    assert found and all(m.batch > 0 and m.source == "measured, live tensors" for m in found)
