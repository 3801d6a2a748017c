"""From a run directory's results to its validation file, plots and report.

Everything here reads files already written, so ``sigsim plot`` and ``sigsim report``
redo it at any time without measuring anything. The cluster-scale plots are drawn from
the model on a large-machine profile (``CLUSTER_HARDWARE``), whatever machine the run
measured on.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from experiments import backends, plots, plots_scale
from experiments.maxbatch import measured_max_batch, predicted_max_batch
from experiments.records import rows
from experiments.report import write_report
from experiments.rundir import VALIDATION, RunDir

CLUSTER_HARDWARE = "h100-sxm"
"""Profile of the cluster-scale and maxbatch plots."""
CLUSTER_BATCH = 2048
"""Local batch b of the cluster-scale plot (examples per rank)."""
CLUSTER_DIM = 1024
"""Embedding width d of the cluster-scale and maxbatch plots."""
CLUSTER_DTYPE = "bf16"


def run_hardware(run: RunDir, override: str | None = None):
    """The profile a run is validated against: the override, the one recorded, or default."""
    return backends.hardware_for(override or run.meta().get("hardware") or None)


def validate(run: RunDir, hardware) -> tuple[list[backends.Comparison], list[dict]]:
    """Compare every successful point with the model and write ``validation.json``."""
    records = backends.load_records(run.results)
    comparisons, summary = backends.compare(records, hardware)
    payload = {
        "hardware": backends.hardware_summary(hardware),
        "summary": summary,
        "points": [asdict(c) | {"error_pct": c.error_pct} for c in comparisons],
    }
    (run.path / VALIDATION).write_text(json.dumps(payload, indent=2) + "\n")
    return comparisons, summary


def write_plots(
    run: RunDir, hardware, comparisons: list[backends.Comparison] | None = None
) -> list[Path]:
    """Every plot of the run, PNG and SVG, into the run directory; returns the files."""
    records = backends.load_records(run.results)
    real = rows(records, emulated=False)
    emulated = rows(records, emulated=True)
    if comparisons is None:
        comparisons, _ = backends.compare(records, hardware)
    files: list[Path] = []
    if real:
        files += plots.save(plots.memory_vs_global_batch(real, hardware), run.path, "memory")
        files += plots.save(plots.bytes_vs_world(real, hardware), run.path, "bytes")
        files += plots.save(plots.step_time_vs_world(real, hardware), run.path, "step_time")
    if emulated:
        figure = plots.memory_vs_world(emulated, hardware)
        files += plots.save(figure, run.path, "memory_emulated")
    if comparisons:
        figure = plots.predicted_vs_measured(comparisons)
        files += plots.save(figure, run.path, "predicted_vs_measured")
    config = run.config()
    cluster = backends.hardware_for(CLUSTER_HARDWARE)
    figure = plots_scale.cluster_scale(
        cluster,
        batch=CLUSTER_BATCH,
        dim=CLUSTER_DIM,
        dtype=CLUSTER_DTYPE,
        methods=config.resolved_methods(),
    )
    files += plots.save(figure, run.path, "cluster_scale")
    # The run's own batches never approach device memory, so this one is the model's only.
    figure, _, _ = maxbatch_figure(
        config.resolved_methods(),
        cluster,
        memory_bytes=backends.device_memory_bytes(cluster),
        worlds=plots_scale.cluster_worlds(),
        dim=CLUSTER_DIM,
        dtype=CLUSTER_DTYPE,
    )
    files += plots.save(figure, run.path, "maxbatch")
    return files


def maxbatch_figure(
    methods, hardware, *, memory_bytes: float, worlds, dim: int, dtype: str, measured=()
):
    """Largest batch per method vs W: the model on ``hardware`` and any measured rows."""
    predicted = [
        entry
        for method in methods
        for entry in predicted_max_batch(method, worlds, dim, dtype, hardware, memory_bytes)
    ]
    found = [m for m in measured_max_batch(measured, memory_bytes) if m.batch]
    title = (
        f"Largest batch in {memory_bytes / 2**30:.3g} GiB of loss memory "
        f"({backends.hardware_label(hardware)}, d = {dim}, {dtype})"
    )
    figure = plots_scale.maxbatch(predicted, found, memory_bytes=memory_bytes, title=title)
    return figure, predicted, found


def analyse(run: RunDir, hardware) -> Path:
    """Validation, plots and report of a run directory; returns the report's path."""
    comparisons, summary = validate(run, hardware)
    files = write_plots(run, hardware, comparisons)
    return write_report(
        run.path,
        config=run.config().to_dict(),
        meta=run.meta(),
        records=backends.load_records(run.results),
        comparisons=comparisons,
        summary=summary,
        hardware_line=backends.hardware_summary(hardware),
        plot_files=files,
    )
