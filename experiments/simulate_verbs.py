"""The event-simulator verbs: ``sigsim simulate`` (the step-time distribution of one point
under jitter, stragglers, a slow node or link) and ``sigsim trace`` (one measured step
beside the simulated one, as Chrome traces)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from experiments import backends
from experiments.tables import column, console, stdout_to_stderr


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
    options = backends.ring_options(args.method, args)
    sim = simulate(
        args.method,
        args.world,
        args.batch,
        args.dim,
        args.dtype,
        hardware,
        steps=args.steps,
        seed=args.seed,
        jitter=parse_jitter(args.jitter) if args.jitter else None,  # None: the profile's
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
        column(table, header)
    for name in ("min", "p10", "median", "mean", "p90", "max", "predicted"):
        value = summary[f"{name}_s"]
        delta = (value / sim.predicted_s - 1) * 100 if sim.predicted_s > 0 else float("nan")
        label = "closed form (simulator.predict)" if name == "predicted" else name
        table.add_row(label, f"{value * 1e3:.4g}", f"{delta:+.1f}")
    console.print(table)
    fitted = "the profile's fitted jitter" if sim.variability.jitter else "none"
    console.print(f"jitter: {args.jitter or fitted}; stragglers: {args.stragglers or 'none'}; "
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
    as_json = getattr(args, "json", False)
    with stdout_to_stderr(as_json):
        console.print(f"measuring one step of {args.method} on {args.world} gloo ranks ...")
        measured = measure_trace(
            args.method, args.world, args.batch, args.dim, args.dtype, warmup=args.warmup, **options
        )
    out = Path(args.out)
    paths = (write_json(measured, out / "measured.json"), write_trace(sim, out / "simulated.json"))
    steps = [e for e in measured["traceEvents"] if e["name"] == STEP]
    measured_s = max(e["ts"] + e["dur"] for e in steps) / 1e6
    if as_json:
        summary = {"method": args.method, "world": args.world, "batch": args.batch}
        summary |= {"dim": args.dim, "dtype": args.dtype, "measured_step_s": measured_s}
        summary |= {"simulated_step_s": float(sim.step_time_s[0])}
        summary |= {"hardware": backends.hardware_label(hardware), "files": list(map(str, paths))}
        print(json.dumps(summary))
        return 0
    table = Table(title=f"{args.method}, W = {args.world}, b = {args.batch}, d = {args.dim}, "
                        f"{args.dtype}: one step")  # fmt: skip
    for header in ("quantity", "step (ms)", "source"):
        column(table, header)
    table.add_row("measured", f"{measured_s * 1e3:.4g}", "torch.profiler, gloo, this machine")
    table.add_row("simulated", f"{sim.step_time_s[0] * 1e3:.4g}", backends.hardware_label(hardware))
    console.print(table)
    for path in paths:
        console.print(f"[bold green]written:[/bold green] {path}")
    console.print("open both in ui.perfetto.dev or chrome://tracing")
    return 0
