"""Stragglers at scale, simulated: median and p90 step against W, ring vs all-gather.

A scenario, not a measurement: no GPU jitter has been measured, so every event's duration
is the h100-sxm profile's (8 GPUs per node on NVLink, one NDR port per GPU across nodes)
times a lognormal multiplier of median 1 and σ = 0.1, drawn per event, rank and step
(:mod:`simulator.variability`), and the straggling ranks compute ``slowdown`` times slower
on every step. Each point is one :func:`simulator.simulate` call of ``steps`` steps; past
2·10^8 rank-rounds it runs the coarse rounds of :mod:`simulator.events` (the record
says which ``coarse`` it used; docs/simulator.md, "At scale", measures their error).

``python -m experiments.plots_stragglers --out DIR`` writes ``DIR/records.jsonl`` (one
JSON line per method, W and straggler case: median, p90, closed form, peak memory, the
``coarse`` used), ``DIR/step_vs_world.png`` and ``DIR/crossover.json``, and prints the
crossover: the W from which the all-gather's median step is shorter than the ring's.
Units: ms, W ranks, GiB = 2^30 bytes.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from experiments.plots import color_of, marker_of, plt

FAMILIES = {
    "sigmoid": ("sigmoid-ring", "sigmoid-ring-bidir", "sigmoid-allgather"),
    "softmax": ("softmax-ring", "softmax-allgather"),
}
"""Ring methods and the all-gather they are compared with, per loss (the last entry)."""

CASES = (("none", 0.0), ("one", None), ("1%", 0.01))
"""Straggler cases: name and fraction of ranks (None: exactly one rank, W/2)."""

WORLDS = tuple(2**k for k in range(3, 13))
"""8 … 4,096 ranks."""


def simulate_grid(
    *,
    worlds: Sequence[int] = WORLDS,
    steps: int = 100,
    slowdown: float = 1.5,
    sigma: float = 0.1,
    batch: int = 1024,
    dim: int = 768,
    dtype: str = "bf16",
    hardware: str = "h100-sxm",
    seed: int = 0,
    progress=None,
) -> list[dict]:
    """One record per method, W and straggler case (module docstring)."""
    import simulator
    from simulator.scale import stragglers
    from simulator.variability import Jitter

    out = []
    for family, methods in FAMILIES.items():
        for method in methods:
            for world in worlds:
                closed = simulator.predict(method, world, batch, dim, dtype, hardware)
                for case, fraction in CASES:
                    slow = {} if fraction == 0.0 else stragglers(world, fraction, slowdown)
                    start = time.perf_counter()
                    sim = simulator.simulate(
                        method,
                        world,
                        batch,
                        dim,
                        dtype,
                        hardware,
                        steps=steps,
                        seed=seed,
                        stragglers=slow,
                        jitter=Jitter(sigma=sigma),
                    )
                    record = {
                        "family": family,
                        "method": method,
                        "world": int(world),
                        "stragglers": case,
                        "straggling_ranks": len(slow),
                        "slowdown": slowdown if slow else 1.0,
                        "jitter": f"lognormal:{sigma}",
                        "batch": batch,
                        "dim": dim,
                        "dtype": dtype,
                        "hardware": hardware,
                        "steps": steps,
                        "seed": seed,
                        "coarse": sim.coarse,
                        "median_ms": sim.median_s * 1e3,
                        "p90_ms": sim.p90_s * 1e3,
                        "closed_form_ms": sim.predicted_s * 1e3,
                        "peak_GiB": float(closed.peak_memory_bytes) / 2**30,
                        "fits": bool(closed.fits),
                        "wall_s": time.perf_counter() - start,
                    }
                    out.append(record)
                    if progress is not None:
                        progress(record)
    return out


def crossover(records: Sequence[dict]) -> list[dict]:
    """Per loss, ring method and straggler case: the Ws where the all-gather's median step
    is shorter than the ring's, and the crossovers: the smallest W from which the ring
    stays faster to the largest W simulated, and the one from which the all-gather does
    (None where there is none)."""
    out = []
    by_key = {(r["method"], r["world"], r["stragglers"]): r for r in records}
    worlds = sorted({r["world"] for r in records})
    for family, methods in FAMILIES.items():
        *rings, gather = methods
        for ring in rings:
            for case, _ in CASES:
                pairs = [
                    (w, by_key[ring, w, case]["median_ms"], by_key[gather, w, case]["median_ms"])
                    for w in worlds
                    if (ring, w, case) in by_key and (gather, w, case) in by_key
                ]
                out.append(
                    {
                        "family": family,
                        "ring": ring,
                        "allgather": gather,
                        "stragglers": case,
                        "allgather_faster_at": [w for w, r, g in pairs if g < r],
                        "ring_faster_from": _stays(pairs, lambda r, g: r <= g),
                        "allgather_faster_from": _stays(pairs, lambda r, g: g < r),
                        "allgather_over_ring_at_largest": pairs[-1][2] / pairs[-1][1]
                        if pairs
                        else None,
                    }
                )
    return out


def _stays(pairs, wins) -> int | None:
    """The smallest W from which ``wins(ring, gather)`` holds up to the largest W."""
    since = None
    for w, r, g in reversed(pairs):
        if not wins(r, g):
            break
        since = w
    return since


def step_vs_world(records: Sequence[dict]) -> Figure:
    """Rows: sigmoid, softmax; columns: no straggler, one, 1% of the ranks. Median step
    (line and markers) and p90 (dotted, same colour) against W; hollow markers where the
    closed form says the method does not fit in the device's memory."""
    fig, axes = plt.subplots(
        len(FAMILIES), len(CASES), figsize=(15, 8.5), sharex=True, layout="constrained"
    )
    first = records[0]
    for row, (family, methods) in enumerate(FAMILIES.items()):
        for col, (case, _) in enumerate(CASES):
            ax = axes[row, col]
            for method in methods:
                rs = sorted(
                    (r for r in records if r["method"] == method and r["stragglers"] == case),
                    key=lambda r: r["world"],
                )
                if not rs:
                    continue
                w = np.array([r["world"] for r in rs])
                med = np.array([r["median_ms"] for r in rs])
                p90 = np.array([r["p90_ms"] for r in rs])
                fits = np.array([r["fits"] for r in rs])
                color, marker = color_of(method), marker_of(method)
                ax.plot(w, med, "-", color=color, label=f"{method} median")
                ax.plot(w, p90, ":", color=color, label=f"{method} p90")
                ax.plot(w[fits], med[fits], marker, color=color, linestyle="none")
                ax.plot(w[~fits], med[~fits], marker, color=color, mfc="none", linestyle="none")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            slow = next((r for r in records if r["stragglers"] == case and r["slowdown"] > 1), None)
            title = {
                "none": "no straggler",
                "one": "one straggling rank",
                "1%": "1% of the ranks straggling",
            }[case]
            if slow is not None:
                title += f" ({slow['slowdown']:g}× slower compute)"
            ax.set_title(f"{family}: {title}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            if row == len(FAMILIES) - 1:
                ax.set_xlabel("W (ranks)")
            if col == 0:
                ax.set_ylabel("step time (ms)")
            if col == len(CASES) - 1:
                ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(
        f"Scenario (simulated, no measured GPU jitter): {first['hardware']}, "
        f"b = {first['batch']}, d = {first['dim']}, {first['dtype']}, jitter "
        f"{first['jitter']} per event, {first['steps']} steps per point; "
        "hollow: does not fit in memory",
        fontsize=10,
    )
    return fig


def ratio_vs_world(records: Sequence[dict]) -> Figure:
    """All-gather median step over each ring's, against W: one panel per loss, a line per
    ring method and straggler case; below 1 the all-gather is faster (the crossovers)."""
    fig, axes = plt.subplots(1, len(FAMILIES), figsize=(12, 4.2), layout="constrained")
    by_key = {(r["method"], r["world"], r["stragglers"]): r for r in records}
    worlds = sorted({r["world"] for r in records})
    styles = {"none": "-", "one": "--", "1%": ":"}
    for ax, (family, methods) in zip(axes, FAMILIES.items(), strict=True):
        *rings, gather = methods
        for ring in rings:
            for case, _ in CASES:
                ws = [
                    w for w in worlds if (ring, w, case) in by_key and (gather, w, case) in by_key
                ]
                ratio = [
                    by_key[gather, w, case]["median_ms"] / by_key[ring, w, case]["median_ms"]
                    for w in ws
                ]
                ax.plot(
                    ws,
                    ratio,
                    styles[case],
                    marker=marker_of(ring),
                    color=color_of(ring),
                    label=f"{gather} / {ring}, stragglers: {case}",
                )
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("W (ranks)")
        ax.set_ylabel("all-gather median / ring median")
        ax.set_title(f"{family}: below 1, gathering beats the ring", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    first = records[0]
    slow = max(r["slowdown"] for r in records)
    fig.suptitle(
        f"Scenario (simulated): {first['hardware']}, b = {first['batch']}, d = {first['dim']}, "
        f"{first['dtype']}, jitter {first['jitter']}, stragglers {slow:g}× slower compute",
        fontsize=10,
    )
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.plots_stragglers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for records and plot")
    parser.add_argument("--steps", type=int, default=100, help="simulated steps per point")
    parser.add_argument("--slowdown", type=float, default=1.5, help="stragglers' compute")
    parser.add_argument("--largest", type=int, default=4096, help="largest W (a power of 2)")
    parser.add_argument(
        "--replot", action="store_true", help="redraw from OUT/records.jsonl, no simulating"
    )
    args = parser.parse_args(argv)
    if args.largest < 8 or args.largest & (args.largest - 1):
        parser.error(f"--largest must be a power of two ≥ 8, got {args.largest}")
    worlds = [2**k for k in range(3, args.largest.bit_length())]
    args.out.mkdir(parents=True, exist_ok=True)
    lines = args.out / "records.jsonl"

    def progress(record):
        print(
            f"{record['method']:>18} W={record['world']:>5} {record['stragglers']:>4} "
            f"median {record['median_ms']:9.3f} ms  p90 {record['p90_ms']:9.3f} ms  "
            f"coarse {record['coarse']:>3}  {record['wall_s']:.1f} s",
            flush=True,
        )

    if args.replot:
        records = [json.loads(line) for line in lines.read_text().splitlines()]
    else:
        records = simulate_grid(
            worlds=worlds, steps=args.steps, slowdown=args.slowdown, progress=progress
        )
        lines.write_text("".join(json.dumps(r) + "\n" for r in records))
    cross = crossover(records)
    (args.out / "crossover.json").write_text(json.dumps(cross, indent=1) + "\n")
    for stem, draw in (("step_vs_world", step_vs_world), ("ratio_vs_world", ratio_vs_world)):
        fig = draw(records)
        fig.savefig(args.out / f"{stem}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
    for c in cross:
        print(
            f"{c['ring']:>18} vs {c['allgather']}, stragglers {c['stragglers']:>4}: "
            f"all-gather faster at W = {c['allgather_faster_at'] or 'none'}; ring faster "
            f"from W = {c['ring_faster_from']}; all-gather / ring at the largest W "
            f"{c['allgather_over_ring_at_largest']:.2f}"
        )
    print(f"wrote {lines}, crossover.json, step_vs_world.png, ratio_vs_world.png in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
