"""A grid of data points: each in its own process group, faults recorded, resumable.

API:

* :func:`load_grid(path)`: a TOML grid file -> list of :class:`PointConfig`;
* :func:`run_point(config)`: launch one point (``profiling.launch`` + ``measure``) and
  return its record, whatever happened (``ok``, ``oom``, ``error``, ``timeout``);
* :func:`run_grid(points, out_path)`: validate every point first (one bad point refuses
  the whole grid, with one line naming it, before anything runs), skip the points
  ``out_path`` already holds (``results.resume_state``), run the rest one by one with a
  progress bar, appending each record as soon as the point ends.

Grid file (``sigsim grid FILE --out results.jsonl``)::

    [defaults]                # any PointConfig field
    batch = 64
    dim = 128
    steps = 5

    [sweep]                   # the Cartesian product of these lists, in this order
    method = ["sigmoid-ring", "softmax-ring"]
    world = [2, 4]

    [[points]]                # extra single points, over the defaults
    method = "sigmoid-allgather"
    world = 4
"""

from __future__ import annotations

import itertools
import sys
import tomllib
from collections import Counter
from collections.abc import Callable
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


def load_grid(path: str | Path) -> list[PointConfig]:
    try:
        with open(path, "rb") as f:
            spec = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read grid {path}: {exc}") from None
    unknown = sorted(set(spec) - {"defaults", "sweep", "points"})
    if unknown:
        raise ConfigError(f"grid {path}: unknown table {unknown[0]!r} (defaults, sweep, points)")
    defaults, sweep = spec.get("defaults", {}), spec.get("sweep", {})
    rows = []
    if sweep:
        names = list(sweep)
        lists = [v if isinstance(v, list) else [v] for v in sweep.values()]
        rows += [dict(zip(names, combo, strict=True)) for combo in itertools.product(*lists)]
    rows += spec.get("points", [])
    if not rows:
        raise ConfigError(f"grid {path} has no points (add a [sweep] or [[points]])")
    try:
        return [PointConfig.from_dict({**defaults, **row}) for row in rows]
    except TypeError as exc:  # a required field missing
        raise ConfigError(f"grid {path}: {exc}") from None


def describe(config: PointConfig) -> str:
    emulated = f" emulate={config.emulate}" if config.emulate else ""
    return (
        f"{config.method} W={config.world} b={config.batch} d={config.dim} "
        f"{config.dtype} {config.device}{emulated}"
    )


def run_point(config: PointConfig, *, attempt: int = 1) -> dict:
    """Run one point in fresh processes and return its record (never raises on faults)."""
    config_dict = config.as_dict()
    env = results.environment(config.backend, config.device)
    outcome = launch(
        measure_rank,
        (config_dict,),
        world=config.processes,
        backend=config.backend,
        timeout_s=config.timeout_s,
        pg_timeout_s=config.pg_timeout_s,
    )
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
    runner: Callable[..., dict] = run_point,
) -> GridSummary:
    """Run every unfinished point; each record is on disk before the next point starts."""
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
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task("grid", total=len(todo))
        for config in todo:
            key = results.point_key(config.as_dict())
            bar.update(task, description=describe(config))
            record = runner(config, attempt=timeouts.get(key, 0) + 1)
            results.append_record(out_path, record)
            summary.statuses[record["status"]] += 1
            if record["status"] != "ok" and progress:
                console.print(f"[{record['status']}] {describe(config)}: {record['message']}")
            bar.update(task, advance=1)
    return summary
