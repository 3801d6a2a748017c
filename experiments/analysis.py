"""From a run directory's results to its validation file, plots and report.

Everything here reads files already written, so ``sigsim plot`` and ``sigsim report``
redo it at any time without measuring anything. The cluster-scale plots are drawn from
the model on a large-machine profile (``CLUSTER_HARDWARE``), whatever machine the run
measured on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from experiments import backends, noise_floor, plots, plots_scale
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
        "points": [asdict(c) for c in comparisons],
    }
    (run.path / VALIDATION).write_text(json.dumps(payload, indent=2) + "\n")
    return comparisons, summary


STAGES = 10
"""Upper bound on the calls :func:`analyse` makes to its ``step`` callback."""


def _nothing(_: str) -> None:
    return None


def write_plots(
    run: RunDir,
    hardware,
    comparisons: list[backends.Comparison] | None = None,
    step: Callable[[str], None] = _nothing,
) -> list[Path]:
    """Every plot of the run, PNG and SVG, into the run directory; returns the files.
    ``step(name)`` is called after each plot (progress bars)."""
    records = backends.load_records(run.results)
    real = rows(records, emulated=False)
    emulated = rows(records, emulated=True)
    if comparisons is None:
        comparisons, _ = backends.compare(records, hardware)
    files: list[Path] = []

    def save(figure, stem: str) -> None:
        files.extend(plots.save(figure, run.path, stem))
        step(stem)

    if real:
        save(plots.memory_vs_global_batch(real, hardware), "memory")
        save(plots.bytes_vs_world(real, hardware), "bytes")
        save(plots.step_time_vs_world(real, hardware), "step_time")
    if emulated:
        save(plots.memory_vs_world(emulated, hardware), "memory_emulated")
    if comparisons:
        save(plots.predicted_vs_measured(comparisons), "predicted_vs_measured")
    distributions = plots.step_distributions(records, hardware)
    if distributions is not None:
        save(distributions, "step_distributions")
    config = run.config()
    cluster = backends.hardware_for(CLUSTER_HARDWARE)
    figure = plots_scale.cluster_scale(
        cluster,
        batch=CLUSTER_BATCH,
        dim=CLUSTER_DIM,
        dtype=CLUSTER_DTYPE,
        methods=config.resolved_methods(),
    )
    save(figure, "cluster_scale")
    # The run's own batches never approach device memory, so this one is the model's only.
    figure, _, _ = maxbatch_figure(
        config.resolved_methods(),
        cluster,
        memory_bytes=backends.device_memory_bytes(cluster),
        worlds=plots_scale.cluster_worlds(),
        dim=CLUSTER_DIM,
        dtype=CLUSTER_DTYPE,
    )
    save(figure, "maxbatch")
    return files


def maxbatch_figure(
    methods,
    hardware,
    *,
    memory_bytes: float,
    worlds,
    dim: int,
    dtype: str,
    measured=(),
    other_bytes: float = 0.0,
    **options,
):
    """Largest batch per method vs W: the model on ``hardware`` (the profile's reserve and
    ``other_bytes`` off ``memory_bytes``; ``options`` such as autocast) and any measured
    rows."""
    predicted = [
        entry
        for method in methods
        for entry in predicted_max_batch(
            method, worlds, dim, dtype, hardware, memory_bytes, other_bytes, **options
        )
    ]
    found = [m for m in measured_max_batch(measured, memory_bytes) if m.batch]
    extras = "".join(f", {k} {v}" for k, v in options.items())
    title = (
        f"Largest batch in {memory_bytes / 2**30:.3g} GiB per device "
        f"({backends.hardware_label(hardware)}, d = {dim}, {dtype}{extras})"
    )
    figure = plots_scale.maxbatch(predicted, found, memory_bytes=memory_bytes, title=title)
    return figure, predicted, found


def analyse(run: RunDir, hardware, step: Callable[[str], None] = _nothing) -> Path:
    """Validation, plots and report of a run directory; returns the report's path."""
    comparisons, summary = validate(run, hardware)
    step("validation")
    write_plots(run, hardware, comparisons, step)
    report = rewrite_report(run, hardware, comparisons, summary)
    step("report")
    return report


def rewrite_report(run: RunDir, hardware, comparisons=None, summary=None) -> Path:
    """The report alone, over the plots already in the run directory (e.g. to add the
    final wall times once everything else is written)."""
    from simulator.validate import jitter_line

    if comparisons is None or summary is None:
        comparisons, summary = backends.compare(backends.load_records(run.results), hardware)
    order = ["memory", "memory_emulated", "bytes", "step_time", "predicted_vs_measured"]
    order += ["step_distributions"]
    order += ["cluster_scale", "maxbatch"]
    files = [run.path / f"{stem}.png" for stem in order if (run.path / f"{stem}.png").is_file()]
    return write_report(
        run.path,
        config=run.config().to_dict(),
        meta=run.meta(),
        records=backends.load_records(run.results),
        comparisons=comparisons,
        summary=summary,
        hardware_line=backends.hardware_summary(hardware),
        plot_files=files,
        profile_warning=backends.profile_warning(hardware),
        noise=noise_floor.load(run.path),
        jitter_line=jitter_line(hardware),
    )
