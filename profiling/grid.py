"""A grid of data points: ranks started once per world size, faults recorded, resumable.

API:

* :func:`load_grid(path)`: a TOML grid file -> list of :class:`PointConfig`;
* :func:`run_point(config, workers=None)`: run one point (``measure.measure_rank``) on the
  ranks of a :class:`profiling.workers.Runner` (None: fresh processes of its own) and
  return its record, whatever happened (``ok``, ``oom``, ``error``, ``timeout``);
* :func:`run_grid(points, out_path)`: validate every point first (one bad point refuses
  the whole grid, with one line naming it, before anything runs), skip the points
  ``out_path`` already holds (``results.resume_state``), run the rest one by one with a
  progress bar, appending each record as soon as the point ends. Consecutive points of
  one world size (and backend) run on the same ranks, in the same process group: a
  point's measurements start from its own levels (``profiling.measure``), and a point
  that fails ends those ranks, so the next one starts fresh (``reuse_workers=False``:
  every point in processes of its own, as before 2026-11-29).

Grid file (``sigsim grid FILE --out results.jsonl``; the shape is
``profiling.point``'s, shared with ``sigsim run``'s sweeps)::

    [point]                   # any PointConfig field; a list is an axis of the grid
    method = ["sigmoid-ring", "softmax-ring"]
    world = [2, 4]
    batch = 64
    dim = 128
    steps = 5
"""

from __future__ import annotations

import sys
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from profiling import results
from profiling.launch import ConfigError, launch
from profiling.measure import PointConfig, measure_rank, validate_point
from profiling.point import points_from_spec
from profiling.workers import Runner

OLD_TABLES = {
    "defaults": "[defaults] is the old spelling: write its keys under [point]",
    "sweep": "[sweep] is the old spelling: write its lists under [point] (world = [2, 4])",
}
"""The grid dialect before the one TOML shape, and what replaced each table."""


def load_grid(path: str | Path) -> list[PointConfig]:
    """The points of a grid file (``[point]``, optional ``[[points]]``: ``profiling.point``);
    a sweep's ``[run]`` table is read by ``sigsim run`` only and ignored here."""
    try:
        with open(path, "rb") as f:
            spec = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read grid {path}: {exc}") from None
    for table in spec:
        if table in OLD_TABLES:
            raise ConfigError(f"grid {path}: {OLD_TABLES[table]}")
        if table not in ("point", "points", "run"):
            raise ConfigError(f"grid {path}: unknown table {table!r} (point, points, run)")
    return points_from_spec(spec, f"grid {path}")


def describe(config: PointConfig) -> str:
    emulated = f" emulate={config.emulate}" if config.emulate else ""
    return (
        f"{config.method} W={config.world} b={config.batch} d={config.dim} "
        f"{config.dtype} {config.device}{emulated}"
    )


def run_point(config: PointConfig, *, attempt: int = 1, workers: Runner | None = None) -> dict:
    """Run one point on ``workers``' ranks (None: fresh processes) and return its record
    (never raises on faults); ``env.worker_point`` says which point of those processes'
    life it was (1: they started for it)."""
    config_dict = config.as_dict()
    env = results.environment(config.backend, config.device)
    outcome = (launch if workers is None else workers.run)(
        measure_rank,
        (config_dict,),
        world=config.processes,
        backend=config.backend,
        timeout_s=config.timeout_s,
        pg_timeout_s=config.pg_timeout_s,
    )
    env["worker_point"] = outcome.served
    measured = outcome.values[0] if outcome.status == "ok" else None
    message = outcome.message
    if measured is not None and not measured.get("ranks_agree", True):
        message = f"ranks disagree on bytes or live peak: {measured['rank_values']}"
    return results.make_record(
        config_dict, outcome.status, message, measured, env, attempt=attempt, wall_s=outcome.wall_s
    )


@dataclass(slots=True)
class GridSummary:
    statuses: Counter = field(default_factory=Counter)
    skipped: int = 0

    def line(self) -> str:
        parts = [f"{n} {s}" for s, n in sorted(self.statuses.items())]
        return ", ".join([*parts, f"{self.skipped} skipped (already done)"])


def validate_grid(points: list[PointConfig]) -> None:
    for index, config in enumerate(points):
        try:
            validate_point(config)
        except ConfigError as exc:
            raise ConfigError(f"point {index} ({describe(config)}): {exc}") from None


def run_grid(
    points: list[PointConfig],
    out_path: str | Path,
    *,
    retry_errors: bool = False,
    progress: bool = True,
    reuse_workers: bool = True,
) -> GridSummary:
    """Run every unfinished point; each record is on disk before the next point starts.

    ``reuse_workers``: consecutive points of one world size share ranks (module docstring).
    """
    validate_grid(points)
    finished, timeouts = results.resume_state(
        results.read_records(out_path), retry_errors=retry_errors
    )
    todo = [c for c in points if results.point_key(c.as_dict()) not in finished]
    summary = GridSummary(skipped=len(points) - len(todo))
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    console = Console(file=sys.stderr)
    with (
        Runner(reuse=reuse_workers) as workers,
        Progress(*columns, console=console, disable=not progress) as bar,
    ):
        task = bar.add_task("grid", total=len(todo))
        for config in todo:
            key = results.point_key(config.as_dict())
            bar.update(task, description=describe(config))
            record = run_point(config, attempt=timeouts.get(key, 0) + 1, workers=workers)
            results.append_record(out_path, record)
            summary.statuses[record["status"]] += 1
            if record["status"] != "ok" and progress:
                console.print(f"[{record['status']}] {describe(config)}: {record['message']}")
            bar.update(task, advance=1)
    return summary
