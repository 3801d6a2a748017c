"""The run-directory verbs: ``sigsim run [--out DIR]`` (measure a sweep, validate, plot,
report into one run directory), ``validate RUN_DIR``, ``plot RUN_DIR`` and ``report RUN_DIR``
(redo one stage from the records).

The other verbs live beside it: :mod:`experiments.model_verbs` (``predict``, ``maxbatch``,
``recommend``), :mod:`experiments.simulate_verbs` (``simulate``, ``trace``) and
:mod:`experiments.verbs` (the profiler's verbs, ``peers``, ``gpu-check``, ``profiles``);
:mod:`experiments.cli` parses the arguments. Each ``cmd_*`` function takes the parsed
arguments, prints to the shared rich console (:mod:`experiments.tables`: tables, progress
bars with ETA) and returns the process exit status.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from experiments import analysis, backends, rundir
from experiments import config as sweep_config
from experiments.records import rows
from experiments.tables import MiB, column, console, stdout_to_stderr


def progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def analyse_with_progress(run: rundir.RunDir, hardware) -> Path:
    """Validation, plots and report, with a progress bar."""
    with progress() as bar:
        task = bar.add_task("validation, plots, report", total=analysis.STAGES)
        report = analysis.analyse(
            run, hardware, lambda name: bar.update(task, advance=1, description=f"wrote {name}")
        )
        bar.update(task, completed=analysis.STAGES)
    return report


# --- run -----------------------------------------------------------------------------


def measure(run: rundir.RunDir, config: sweep_config.SweepConfig) -> dict[str, int]:
    """Run the config's grid (real, then emulated ranks) into the run's results file."""
    points = config.grid() + config.emulated_grid()
    console.print(f"[bold]measuring {len(points)} points[/bold] (ranks reused per world size)")
    counts = backends.run_points(points, run.results)
    console.print("measured: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
    return counts


def ensure_hardware(config: sweep_config.SweepConfig, args, run: rundir.RunDir):
    """The profile to validate against; calibrates this machine first when it has none."""
    name = args.hardware or config.hardware or (run.meta().get("hardware") if args.resume else "")
    needs_profile = not name and not args.no_calibrate
    if needs_profile and backends.local_profile() is not None:
        try:
            backends.hardware_for(None)
        except ValueError as error:  # e.g. written by an older sigsim, missing a new key
            console.print(f"[yellow]This machine's profile is unusable ({error}).")
            needs_profile = True
        else:
            needs_profile = False
    if needs_profile:
        console.print("[bold]No usable calibrated profile for this machine: calibrating first.")
        started = time.perf_counter()
        path = backends.calibrate(backend=config.backend, quick=args.quick_calibration)
        run.record_phase("calibration", time.perf_counter() - started)
        console.print(f"profile written: {path}")
    hardware = backends.hardware_for(name or None)
    run.update_meta(hardware=hardware.path or hardware.name)
    return hardware


def cmd_run(args) -> int:
    """``sigsim run``; with ``--json`` the tables and progress go to stderr and stdout gets
    one summary object (run directory, report, point counts, phases, validation summary)."""
    as_json = getattr(args, "json", False)
    with stdout_to_stderr(as_json):
        summary = run_sweep(args)
    if as_json:
        print(json.dumps(summary))
    return 0


def run_sweep(args) -> dict:
    """Measure, validate, plot and report one sweep; the summary ``--json`` prints."""
    started = time.perf_counter()
    out = getattr(args, "out", None)
    if args.resume and out is not None:
        raise ValueError("give --resume RUN_DIR (continue that run) or --out DIR (a new one)")
    if args.resume:
        run = rundir.open_existing(args.resume)
        config = run.config()
    else:
        config_file = sweep_config.resolve(args.config or "default")
        config = sweep_config.load(config_file)
        if args.hardware:
            backends.hardware_for(args.hardware)  # refuse an unknown profile before starting
        run = rundir.create(config_file, config.name, Path(args.runs_dir), out)
    prefix = "resumed: " if args.resume else ""
    if args.resume:
        run.update_meta(resumed_by=args.command_line)
    else:
        run.update_meta(
            command=args.command_line,
            cpu_count=os.cpu_count(),
            load_average_at_start=[round(x, 2) for x in os.getloadavg()],
        )
    console.print(f"[bold]run directory:[/bold] {run.path}")
    hardware = ensure_hardware(config, args, run)
    phase = time.perf_counter()
    counts = measure(run, config)
    run.record_phase(prefix + "measurement", time.perf_counter() - phase)
    phase = time.perf_counter()
    report = analyse_with_progress(run, hardware)
    run.record_phase(prefix + "validation, plots and report", time.perf_counter() - phase)
    run.record_phase(prefix + "total", time.perf_counter() - started)
    run.update_meta(load_average_at_end=[round(x, 2) for x in os.getloadavg()])
    analysis.rewrite_report(run, hardware)
    records = backends.load_records(run.results)
    validation = json.loads((run.path / rundir.VALIDATION).read_text())["summary"]
    print_results(records)
    print_summary(validation)
    console.print(f"[bold green]report:[/bold green] {report}")
    console.print(f"[bold]run directory:[/bold] {run.path}")
    phases = run.meta().get("phases_s", {})
    console.print(
        "[bold]wall time:[/bold] " + ", ".join(f"{name} {s:.1f} s" for name, s in phases.items())
    )
    return {
        "run_dir": str(run.path),
        "report": str(report),
        "points": counts,
        "phases_s": run.meta().get("phases_s", {}),
        "hardware": hardware.path or hardware.name,
        "validation": validation,
    }


def print_results(records: list[dict]) -> None:
    table = Table(title="Measured (median step of the max over ranks)")
    for header in ("method", "W", "b", "d", "step (ms)", "exposed (ms)", "sent (MiB)"):
        column(table, header)
    column(table, "peak live (MiB)")
    for r in rows(records):
        table.add_row(
            r.label + (" (emulated)" if r.emulated else ""),
            str(r.world),
            str(r.batch),
            str(r.dim),
            f"{r.step_time_s * 1e3:.3g}",
            f"{r.comm_exposed_s * 1e3:.3g}",
            f"{r.bytes_sent / MiB:.4g}",
            f"{r.peak_live_bytes / MiB:.4g}",
        )
    console.print(table)
    failed = [r for r in records if r.get("status") != "ok"]
    if failed:
        console.print(f"[yellow]{len(failed)} point(s) did not finish; see the report.")


def print_summary(summary: list[dict]) -> None:
    table = Table(title="Validation: |predicted − measured| / measured (full table: report)")
    for header in ("quantity", "regime", "points", "geomean (%)", "max (%)"):
        column(table, header)
    for s in summary:
        if not s["regime"].startswith(("real ranks", "emulated", "ranks vs cores")):
            continue
        table.add_row(
            s["quantity"],
            s["regime"],
            str(s["points"]),
            f"{s['geomean_error_pct']:.3g}",
            f"{s['max_error_pct']:.3g}",
        )
    console.print(table)


# --- verbs on a run directory (nothing is rerun) ------------------------------------


def validation_json(comparisons, summary: list[dict]) -> dict:
    """What ``sigsim validate RUN_DIR --json`` prints and its ``--out`` writes."""
    return {"summary": summary, "points": [asdict(c) for c in comparisons]}


def cmd_validate(args) -> int:
    run = rundir.open_existing(args.run_dir)
    hardware = analysis.run_hardware(run, args.hardware)
    comparisons, summary = analysis.validate(run, hardware)
    out = getattr(args, "out", None)
    if out:
        out.write_text(json.dumps(validation_json(comparisons, summary), indent=2) + "\n")
    table = Table(title=f"Predicted vs measured on {backends.hardware_label(hardware)}")
    for header in ("method", "W", "b", "d", "quantity", "predicted", "measured", "delta (%)"):
        column(table, header)
    for c in comparisons:
        table.add_row(
            c.method,
            f"{c.world}{'*' if c.oversubscribed else ''}",
            str(c.batch),
            str(c.dim),
            c.quantity,
            f"{c.predicted:.4g}",
            f"{c.measured:.4g}",
            f"{c.error_pct:+.1f}",
        )
    console.print(table)
    console.print("* more ranks than CPU cores (oversubscribed)")
    print_summary(summary)
    from experiments import noise_floor
    from experiments.report import regime_rows
    from simulator.validate import jitter_line, regime_table

    rows = regime_rows(comparisons, noise_floor.load(run.path))
    console.print(regime_table(rows, "step time by regime: geomean |delta %|"))
    console.print(jitter_line(hardware))
    console.print(f"written: {run.path / rundir.VALIDATION}")
    if out:
        console.print(f"written: {out}")
    return 0


def cmd_plot(args) -> int:
    run = rundir.open_existing(args.run_dir)
    files = analysis.write_plots(run, analysis.run_hardware(run, args.hardware))
    for path in files:
        console.print(f"written: {path}")
    return 0


def cmd_report(args) -> int:
    run = rundir.open_existing(args.run_dir)
    report = analyse_with_progress(run, analysis.run_hardware(run, args.hardware))
    console.print(f"[bold green]report:[/bold green] {report}")
    return 0


def cmd_readme(args) -> int:
    """``sigsim readme [--check]``: README.md's generated blocks from the kept records."""
    from experiments import readme

    return readme.main(check=args.check)
