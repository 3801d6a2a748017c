"""The model-only verbs: ``sigsim predict``, ``maxbatch`` and ``recommend``.

They price points with :func:`simulator.predict` on a hardware profile and never measure;
each prints a table, or with ``--json`` machine-readable lines on stdout.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.table import Table

from experiments import analysis, backends, plots, rundir
from experiments.records import rows
from experiments.tables import MiB, column, console, ints


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
        column(table, header)
    worlds, batches, dims = (np.array(ints(v)) for v in (args.world, args.batch, args.dim))
    world, batch, dim = (a.ravel() for a in np.meshgrid(worlds, batches, dims, indexing="ij"))
    for method in methods:
        options = backends.ring_options(method, args)
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
        worlds=ints(args.worlds),
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
        column(table, header)
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
        column(table, header)
    for header in ("step (ms)", "fits"):
        column(table, header)
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
