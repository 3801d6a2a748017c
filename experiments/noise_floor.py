"""The noise floor: how far one point's own median and p90 step move between launches.

``sigsim noise-floor [--out DIR] [--repeat K]`` launches each of a small set of the default
experiment's points (:data:`METHODS` × :data:`WORLDS` at ``b = 128``, ``d = 64``, fp32, 40
timed steps after 2 warm-up, as ``experiments/configs/default.toml`` runs them) ``K``
times, each launch in fresh processes (``profiling.grid.run_point``), appends every record
to ``DIR/noise_floor.jsonl`` and writes the summary to ``DIR/noise_floor.json``. A run
directory holding that file shows the floor beside its validation errors (``sigsim
validate``, the report).

The floor is the error a model would show that knew each point exactly as well as the
other launches do: for launch ``k`` of a point, ``delta = (mean_{j≠k} x_j − x_k) / x_k``
with ``x`` its median (or p90) step, the validation's own ``(predicted − measured) /
measured``. Per regime (ranks within the cores, oversubscribed) the floor is the
geometric mean of ``|delta|`` over points and launches, as the validation summarises its
errors. A model error below the floor is as good as this machine can show.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

METHODS: tuple[str, ...] = ("sigmoid-ring", "sigmoid-allgather")
WORLDS: tuple[int, ...] = (1, 2, 4, 8)
BATCH, DIM, STEPS, WARMUP = 128, 64, 40, 2
JSONL, SUMMARY = "noise_floor.jsonl", "noise_floor.json"
REGIMES = ("ranks <= cores", "oversubscribed")


def points(methods: Sequence[str] = METHODS, worlds: Sequence[int] = WORLDS, batch: int = BATCH):
    """The points launched (``profiling.point.PointConfig``), in order."""
    from profiling.point import PointConfig

    return [
        PointConfig(method=m, world=w, batch=batch, dim=DIM, steps=STEPS, warmup=WARMUP)
        for m in methods
        for w in worlds
    ]


def measure(configs, repeat: int, out_dir: Path, console: Console) -> list[dict]:
    """Launch every point ``repeat`` times (fresh processes each), appending the records."""
    from profiling.grid import run_point
    from profiling.results import append_record

    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 2:
        raise ValueError(f"--repeat must be a whole number ≥ 2, got {repeat!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for launch in range(1, repeat + 1):  # launches of one point apart in time
        for config in configs:
            with console.status(f"launch {launch}/{repeat}: {config.method} W={config.world}"):
                record = run_point(config)
            record["noise_launch"] = launch
            append_record(out_dir / JSONL, record)
            records.append(record)
            if record["status"] != "ok":
                console.print(f"[yellow]{config.method} W={config.world}: {record['message']}")
    return records


def _geomean(values: list[float]) -> float | None:
    if not values:
        return None
    return math.exp(sum(math.log(max(v, 1e-6)) for v in values) / len(values))


def floor(records: Sequence[dict]) -> dict[str, Any]:
    """Per regime the geomean ``|delta|`` % of the median and p90 step (module docstring),
    and per point its launches' median and p90 (seconds)."""
    by_key: dict[str, list[dict]] = {}
    for r in records:
        if r.get("status") == "ok" and (r.get("measured") or {}).get("step_time_s"):
            by_key.setdefault(r["key"], []).append(r)
    per_point, deltas = [], {regime: {"median": [], "p90": []} for regime in REGIMES}
    for launches in by_key.values():
        if len(launches) < 2:
            continue
        config, env = launches[0]["config"], launches[0].get("env") or {}
        cores = env.get("cpu_count") or 1
        regime = REGIMES[config["world"] > cores]
        entry = {"method": config["method"], "world": config["world"], "batch": config["batch"],
                 "regime": regime}  # fmt: skip
        for stat in ("median", "p90"):
            x = [r["measured"]["step_time_s"][stat] for r in launches]
            entry[f"{stat}_s"] = x
            for k, xk in enumerate(x):
                others = [v for j, v in enumerate(x) if j != k]
                deltas[regime][stat].append(100 * abs(sum(others) / len(others) - xk) / xk)
        per_point.append(entry)
    summary: dict[str, Any] = {}
    for regime in REGIMES:
        n = len([p for p in per_point if p["regime"] == regime])
        if n:
            summary[regime] = {
                "points": n,
                "median_pct": _geomean(deltas[regime]["median"]),
                "p90_pct": _geomean(deltas[regime]["p90"]),
            }
    return summary | {"per_point": per_point}


def load(run_dir: Path) -> dict[str, Any] | None:
    """A directory's noise floor summary, or None when it has none."""
    path = Path(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


def table(summary: dict[str, Any]) -> Table:
    out = Table(title="noise floor: the same point launched again, geomean |delta %|")
    for col in ("regime", "points", "median step", "p90 step"):
        out.add_column(col, justify="left" if col == "regime" else "right")
    for regime in REGIMES:
        s = summary.get(regime)
        if s:
            out.add_row(regime, str(s["points"]), f"{s['median_pct']:.1f}", f"{s['p90_pct']:.1f}")
    return out


def add_parser(sub, **common) -> None:
    """``sigsim noise-floor``."""
    parser = sub.add_parser(
        "noise-floor",
        help="launch a few default-experiment points K times: how far their median and p90 move",
        description="Launch each of a few default-experiment points K times, each in fresh "
        "processes, and report how far a point's own median and p90 step move between "
        "launches (geomean |delta %| by regime): the floor under the validation's errors. "
        "Writes OUT/noise_floor.jsonl (records) and OUT/noise_floor.json (summary).",
        **common,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("noise-floor"),
        help="directory (a run directory: its validation shows the floor)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="K, launches per point")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--worlds", default=",".join(map(str, WORLDS)), help="comma-separated W")
    parser.add_argument("--batch", type=int, default=BATCH, help="b, examples per rank")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=cmd_noise_floor)  # fmt: skip


def cmd_noise_floor(args) -> int:
    try:
        worlds = [int(w) for w in args.worlds.split(",")]
    except ValueError:
        raise ValueError(
            f"--worlds must be comma-separated whole numbers, got {args.worlds!r}"
        ) from None
    console = Console(stderr=args.json)
    configs = points(args.methods.split(","), worlds, args.batch)
    records = measure(configs, args.repeat, args.out, console)
    summary = floor(records) | {"repeat": args.repeat, "records": str(args.out / JSONL)}
    (args.out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary))
    else:
        console.print(table(summary))
        console.print(f"written: {args.out / SUMMARY}")
    return 0
