"""Fresh processes per point against ranks reused per W (``profiling.workers``), point by point.

Runs one small grid four times, alternating the two ways (fresh, reused, fresh, reused,
so that a change of load shows as a difference between the two runs of one way), and
prints per point: bytes (equal in every run, else it stops), the allocator and live
peaks, the loss, the RSS peak, the median step of each run and the wall time. Every
point is the default run's kind (d = 64, fp32, 40 timed steps after 2 warm-up)::

    python -m experiments.runner_compare --out /tmp/runner-compare [--steps 40]

Records go to ``OUT/{fresh,reused,fresh2,reused2}.jsonl``; the table is Markdown.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

RUNS = (("fresh", False), ("reused", True), ("fresh2", False), ("reused2", True))
METHODS = ("sigmoid-ring", "softmax-allgather", "softmax-ring")
WORLDS = (2, 4)
SAME = ("bytes_sent", "bytes_received", "messages")


def table(records: dict[str, list[dict]]) -> str:
    """The Markdown table of :data:`RUNS`' records (one list per run, points in one order)."""
    names = [name for name, _ in RUNS]
    lines = [
        "| method | W | point on its ranks | bytes sent | allocator peak (B), per run | "
        "live peak (B) | loss equal | RSS peak MiB fresh / reused | median step ms, per run "
        "| wall s fresh / reused |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for index, first in enumerate(records["fresh"]):
        m = {name: records[name][index]["measured"] for name in names}
        for field in SAME:
            values = {m[name][field] for name in names}
            if len(values) != 1:
                raise ValueError(f"point {index}: {field} differs between runs: {sorted(values)}")
        config = first["config"]
        live = " / ".join(str(v) for v in sorted({m[n]["peak_live_bytes"] for n in names}))
        lines.append(
            f"| {config['method']} | {config['world']} | "
            f"{records['reused'][index]['env'].get('worker_point')} | {m['fresh']['bytes_sent']} | "
            + " / ".join(str(m[n]["peak_alloc_bytes"]) for n in names)
            + f" | {live} | {len({m[n]['loss'] for n in names}) == 1} | "
            f"{m['fresh']['rss_peak_bytes'] / 2**20:.0f} / {m['reused']['rss_peak_bytes'] / 2**20:.0f}"
            " | "
            + " / ".join(f"{m[n]['step_time_s']['median'] * 1e3:.2f}" for n in names)
            + f" | {first['wall_s']:.1f} / {records['reused'][index]['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the four runs")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per point")
    args = parser.parse_args(argv)

    from profiling import results
    from profiling.grid import run_grid
    from profiling.point import PointConfig

    points = [
        PointConfig(method=m, world=w, batch=128, dim=64, steps=args.steps, warmup=2)
        for w in WORLDS
        for m in METHODS
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    records = {}
    for name, reuse in RUNS:
        path = args.out / f"{name}.jsonl"
        path.unlink(missing_ok=True)
        started = time.perf_counter()
        summary = run_grid(points, path, progress=False, reuse_workers=reuse)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"{name}: {summary.line()}; {time.perf_counter() - started:.1f} s; load {load}")
        records[name] = results.read_records(path)
    print(table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
