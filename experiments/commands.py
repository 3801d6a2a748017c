"""What each ``sigsim`` subcommand does; :mod:`experiments.cli` parses the arguments.

Each ``cmd_*`` function takes the parsed arguments, prints to a rich console (tables,
progress bars with ETA) and returns the process exit status.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.console import Console
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

from experiments import analysis, backends, plots, rundir
from experiments import config as sweep_config
from experiments.records import rows

console = Console()
if not console.is_terminal:
    # Piped or captured output: wide enough that no number is cut short.
    console = Console(width=200)
MiB = 2**20


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


def _column(table: Table, header: str) -> None:
    """Names stay whole (never cut to "softmax-al…"); numbers right-aligned."""
    if header in ("method", "quantity", "regime"):
        table.add_column(header, no_wrap=True)
    else:
        table.add_column(header, justify="right")


def _ints(text: str) -> list[int]:
    return [int(part) for part in str(text).split(",") if part.strip()]


# --- run -----------------------------------------------------------------------------


def measure(run: rundir.RunDir, config: sweep_config.SweepConfig) -> dict[str, int]:
    """Run the config's grid (real, then emulated ranks) into the run's results file."""
    points = config.grid() + config.emulated_grid()
    console.print(f"[bold]measuring {len(points)} points[/bold] (one process group each)")
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
    started = time.perf_counter()
    if args.resume:
        run = rundir.open_existing(args.resume)
        config = run.config()
    else:
        config_file = sweep_config.resolve(args.config or "default")
        config = sweep_config.load(config_file)
        if args.hardware:
            backends.hardware_for(args.hardware)  # refuse an unknown profile before starting
        run = rundir.create(config_file, config.name, Path(args.runs_dir))
    prefix = "resumed: " if args.resume else ""
    if args.resume:
        run.update_meta(resumed_by=args.command_line)
    else:
        run.update_meta(command=args.command_line, cpu_count=os.cpu_count())
    console.print(f"[bold]run directory:[/bold] {run.path}")
    hardware = ensure_hardware(config, args, run)
    phase = time.perf_counter()
    measure(run, config)
    run.record_phase(prefix + "measurement", time.perf_counter() - phase)
    phase = time.perf_counter()
    report = analyse_with_progress(run, hardware)
    run.record_phase(prefix + "validation, plots and report", time.perf_counter() - phase)
    run.record_phase(prefix + "total", time.perf_counter() - started)
    analysis.rewrite_report(run, hardware)
    records = backends.load_records(run.results)
    print_results(records)
    print_summary(json.loads((run.path / rundir.VALIDATION).read_text())["summary"])
    console.print(f"[bold green]report:[/bold green] {report}")
    console.print(f"[bold]run directory:[/bold] {run.path}")
    return 0


def print_results(records: list[dict]) -> None:
    table = Table(title="Measured (median step of the max over ranks)")
    for header in ("method", "W", "b", "d", "step (ms)", "exposed (ms)", "sent (MiB)"):
        _column(table, header)
    _column(table, "peak live (MiB)")
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
        _column(table, header)
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


# --- model-only and analysis commands -------------------------------------------------


def method_list(spec: str) -> list[str]:
    """``--method``: names, comma-separated; ``all`` stands for ours, ``incumbents`` for
    the cost descriptions of ``simulator.incumbents``; unknown names fail in one line."""
    from simulator.incumbents import INCUMBENTS

    out: list[str] = []
    for name in spec.split(","):
        group = {"all": backends.method_names(), "incumbents": INCUMBENTS}.get(name, (name,))
        out += [n for n in group if n not in out]
    for name in out:
        backends.method_summary(name)  # raises ValueError listing the known names
    return out


def priceable(methods, hardware, dtype: str, **options) -> list[str]:
    """``methods`` the model can price with ``options``; each one it cannot (an incumbent
    whose autocast is not described) is named on the console with the reason."""
    out = []
    for method in methods:
        try:
            backends.predict(method, 2, 8, 8, dtype, hardware, **options)
        except ValueError as error:
            if "not described" not in str(error):
                raise
            console.print(f"[yellow]skipped: {error}")
            continue
        out.append(method)
    return out


def cmd_predict(args) -> int:
    hardware = backends.hardware_for(args.hardware)
    autocast = getattr(args, "autocast", None)
    methods = method_list(args.method)
    if autocast:
        methods = priceable(methods, hardware, args.dtype, autocast=autocast)
    title = f"Model on {backends.hardware_label(hardware)}, {args.dtype}"
    table = Table(title=title + (f", autocast {autocast}" if autocast else ""))
    headers = ["method", "W", "b", "N", "d", "GFLOP", "sent (MiB)", "received (MiB)"]
    headers += ["peak (MiB)", "compute (ms)", "exposed comm (ms)", "step (ms)", "fits"]
    for header in headers:
        _column(table, header)
    worlds, batches, dims = (np.array(_ints(v)) for v in (args.world, args.batch, args.dim))
    world, batch, dim = (a.ravel() for a in np.meshgrid(worlds, batches, dims, indexing="ij"))
    for method in methods:
        options = {}
        if backends.is_ring(method):
            options["overlap"] = not args.no_overlap
            if args.tile:
                options["tile"] = args.tile
        if autocast:
            options["autocast"] = autocast
        p = backends.predict(method, world, batch, dim, args.dtype, hardware, **options)
        values = {
            name: np.broadcast_to(np.asarray(getattr(p, name), dtype=float), world.shape)
            for name in (
                "flops",
                "bytes_sent",
                "bytes_received",
                "peak_memory_bytes",
                "compute_s",
                "exposed_comm_s",
                "step_time_s",
                "fits",
            )
        }
        for i in range(world.size):
            if getattr(args, "json", False):
                point = {"method": method, "world": int(world[i]), "batch": int(batch[i])}
                point |= {"dim": int(dim[i]), "dtype": args.dtype, "autocast": autocast}
                point["hardware"] = backends.hardware_label(hardware)
                for name, value in values.items():
                    point[name] = bool(value[i]) if name == "fits" else float(value[i])
                print(json.dumps(point))
                continue
            table.add_row(
                method,
                str(world[i]),
                str(batch[i]),
                str(world[i] * batch[i]),
                str(dim[i]),
                f"{values['flops'][i] / 1e9:.4g}",
                f"{values['bytes_sent'][i] / MiB:.4g}",
                f"{values['bytes_received'][i] / MiB:.4g}",
                f"{values['peak_memory_bytes'][i] / MiB:.4g}",
                f"{values['compute_s'][i] * 1e3:.4g}",
                f"{values['exposed_comm_s'][i] * 1e3:.4g}",
                f"{values['step_time_s'][i] * 1e3:.4g}",
                "yes" if values["fits"][i] else "no",
            )
    if not getattr(args, "json", False):
        console.print(table)
    return 0


def cmd_validate(args) -> int:
    run = rundir.open_existing(args.run_dir)
    hardware = analysis.run_hardware(run, args.hardware)
    comparisons, summary = analysis.validate(run, hardware)
    table = Table(title=f"Predicted vs measured on {backends.hardware_label(hardware)}")
    for header in ("method", "W", "b", "d", "quantity", "predicted", "measured", "delta (%)"):
        _column(table, header)
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


def cmd_maxbatch(args) -> int:
    hardware = backends.hardware_for(args.hardware)
    memory = args.memory_GiB * 2**30 if args.memory_GiB else backends.device_memory_bytes(hardware)
    options = {"autocast": args.autocast} if getattr(args, "autocast", None) else {}
    methods = priceable(method_list(args.method), hardware, args.dtype, **options)
    measured = []
    if args.run:
        measured = [
            r
            for r in rows(backends.load_records(rundir.open_existing(args.run).results))
            if r.method in methods and r.dim == args.dim and r.dtype == args.dtype
        ]
        if not measured:
            console.print(f"[yellow]{args.run} has no points at d = {args.dim}, {args.dtype}")
    other = args.other_GiB * 2**30
    figure, predicted, found = analysis.maxbatch_figure(
        methods,
        hardware,
        memory_bytes=memory,
        worlds=_ints(args.worlds),
        dim=args.dim,
        dtype=args.dtype,
        measured=measured,
        other_bytes=other,
        **options,
    )
    title = (
        f"Largest batch in {memory / 2**30:.4g} GiB per device: the profile's reserve "
        f"and {other / 2**30:.4g} GiB for the rest of the step off it"
    )
    table = Table(title=title + (f", autocast {options['autocast']}" if options else ""))
    for header in ("method", "W", "source", "b (per rank)", "N = b·W"):
        _column(table, header)
    entries = sorted([*predicted, *found], key=lambda e: (e.method, e.world, e.source))
    if getattr(args, "json", False):
        for entry in entries:
            print(json.dumps({"memory_bytes": memory, "other_bytes": other, **asdict(entry)}))
    else:
        for entry in entries:
            table.add_row(
                entry.method,
                str(entry.world),
                entry.source,
                str(entry.batch),
                str(entry.global_batch),
            )
        console.print(table)
    if args.out:
        for path in plots.save(figure, Path(args.out), "maxbatch"):
            print(f"written: {path}", file=sys.stderr if getattr(args, "json", False) else None)
    else:
        plots.plt.close(figure)
    return 0


def cmd_recommend(args) -> int:
    from experiments import recommend

    hardware = backends.hardware_for(args.hardware)
    kinds = tuple(k for k in args.kind.split(",") if k)
    bad = sorted(set(kinds) - {"softmax", "sigmoid"})
    if bad or not kinds:
        raise ValueError(f"--kind must be softmax and/or sigmoid, got {args.kind!r}")
    started = time.perf_counter()
    entries, choices, settings = recommend.recommend(
        hardware=hardware,
        world=args.world,
        dim=args.dim,
        dtype=args.dtype,
        autocast=args.autocast,
        memory_bytes=args.memory_GiB * 2**30 if args.memory_GiB else None,
        other_bytes=args.other_GiB * 2**30,
        global_batch=args.batch or None,
        kinds=kinds,
    )
    settings["model_s"] = time.perf_counter() - started
    if args.json:
        print(json.dumps(recommend.as_json(entries, choices, settings), indent=1))
        return 0
    budget = (
        settings["memory_bytes"] - settings["reserve_bytes"] - settings["other_bytes"]
    ) / 2**30
    table = Table(
        title=f"{settings['hardware']}, W = {args.world}, d = {args.dim}, {args.dtype}"
        + (f", autocast {args.autocast}" if args.autocast else "")
        + f": {budget:.4g} GiB for the loss per device; columns at N = {settings['global_batch']}"
    )
    for header in ("kind", "method", "side", "tile", "largest N", "sent (MiB)", "peak (GiB)"):
        _column(table, header)
    for header in ("step (ms)", "fits"):
        _column(table, header)
    table.add_column("note", overflow="fold")
    for e in entries:
        if e.max_global_batch is None:
            table.add_row(e.kind, e.method, e.side, "", "", "", "", "", "", e.note)
            continue
        table.add_row(
            e.kind, e.method, e.side, str(e.tile or "default"), str(e.max_global_batch),
            f"{e.bytes_sent_per_rank / MiB:.4g}", f"{e.peak_memory_bytes / 2**30:.4g}",
            f"{e.step_time_s * 1e3:.4g}", "yes" if e.fits else "no", "",
        )  # fmt: skip
    console.print(table)
    for c in choices:
        if c.recommended is None:
            console.print(f"{c.kind}: none of ours fits at N = {settings['global_batch']}")
            continue
        line = f"{c.kind}: run [bold]{c.recommended}[/bold] (tile {c.tile or 'default'})"
        if c.baseline:
            parts = [f"largest N ×{c.max_batch_ratio:.3g}"] if c.max_batch_ratio else []
            if c.step_time_ratio:
                parts.append(f"step time ×{c.step_time_ratio:.3g}")
            if c.bytes_ratio:
                parts.append(f"bytes per rank ×{c.bytes_ratio:.3g}")
            line += f" instead of {c.baseline}: " + ", ".join(parts)
        console.print(line)
    console.print(f"model time: {settings['model_s']:.3g} s")
    return 0


# --- simulate --------------------------------------------------------------------------


def _one_pair(text: str, what: str) -> tuple[int, float] | None:
    from simulator.variability import parse_factors

    pairs = parse_factors(text, what)
    if len(pairs) > 1:
        raise ValueError(f"{what}: give one INDEX:SLOWDOWN, got {text!r}")
    return next(iter(pairs.items()), None)


def cmd_simulate(args) -> int:
    from simulator import simulate
    from simulator.trace import write_trace
    from simulator.variability import parse_factors, parse_jitter

    hardware = backends.hardware_for(args.hardware)
    options = {}
    if backends.is_ring(args.method):
        options["overlap"] = not args.no_overlap
        if args.tile:
            options["tile"] = args.tile
    sim = simulate(
        args.method,
        args.world,
        args.batch,
        args.dim,
        args.dtype,
        hardware,
        steps=args.steps,
        seed=args.seed,
        jitter=parse_jitter(args.jitter),
        stragglers=parse_factors(args.stragglers, "straggler"),
        slow_node=_one_pair(args.slow_node, "slow node"),
        slow_link=_one_pair(args.slow_link, "slow link"),
        trace=bool(args.trace),
        **options,
    )
    summary = sim.summary()
    if args.trace:
        summary["trace"] = str(write_trace(sim, args.trace))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    title = (
        f"Simulated step of {sim.method}, W = {sim.world}, b = {sim.batch}, d = {sim.dim}, "
        f"{sim.dtype} on {backends.hardware_label(hardware)}: {summary['steps']} steps, "
        f"seed {sim.seed}"
    )
    table = Table(title=title)
    for header in ("quantity", "step (ms)", "vs closed form (%)"):
        _column(table, header)
    for name in ("min", "p10", "median", "mean", "p90", "max", "predicted"):
        value = summary[f"{name}_s"]
        delta = (value / sim.predicted_s - 1) * 100 if sim.predicted_s > 0 else float("nan")
        label = "closed form (simulator.predict)" if name == "predicted" else name
        table.add_row(label, f"{value * 1e3:.4g}", f"{delta:+.1f}")
    console.print(table)
    console.print(f"jitter: {args.jitter or 'none'}; stragglers: {args.stragglers or 'none'}; "
                  f"slow node: {args.slow_node or 'none'}; slow link: {args.slow_link or 'none'}")  # fmt: skip
    if args.trace:
        console.print(f"[bold green]trace written:[/bold green] {summary['trace']} "
                      "(open in ui.perfetto.dev or chrome://tracing)")  # fmt: skip
    return 0


def cmd_trace(args) -> int:
    from simulator import simulate
    from simulator.measured_trace import STEP, measure_trace, write_json
    from simulator.trace import write_trace

    hardware = backends.hardware_for(args.hardware)
    options = {"overlap": not args.no_overlap} if backends.is_ring(args.method) else {}
    sim = simulate(args.method, args.world, args.batch, args.dim, args.dtype, hardware,
                   steps=1, trace=True, **options)  # fmt: skip
    console.print(f"measuring one step of {args.method} on {args.world} gloo ranks ...")
    measured = measure_trace(
        args.method, args.world, args.batch, args.dim, args.dtype, warmup=args.warmup, **options
    )
    out = Path(args.out)
    paths = (write_json(measured, out / "measured.json"), write_trace(sim, out / "simulated.json"))
    steps = [e for e in measured["traceEvents"] if e["name"] == STEP]
    measured_s = max(e["ts"] + e["dur"] for e in steps) / 1e6
    table = Table(title=f"{args.method}, W = {args.world}, b = {args.batch}, d = {args.dim}, "
                        f"{args.dtype}: one step")  # fmt: skip
    for header in ("quantity", "step (ms)", "source"):
        _column(table, header)
    table.add_row("measured", f"{measured_s * 1e3:.4g}", "torch.profiler, gloo, this machine")
    table.add_row("simulated", f"{sim.step_time_s[0] * 1e3:.4g}", backends.hardware_label(hardware))
    console.print(table)
    for path in paths:
        console.print(f"[bold green]written:[/bold green] {path}")
    console.print("open both in ui.perfetto.dev or chrome://tracing")
    return 0
