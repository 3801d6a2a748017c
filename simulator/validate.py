"""Validation: the model's predictions against the profiler's measurements.

Reads result records (JSON lines, ``docs/results-schema.md``, through the one reader
``profiling.results``; the last record of a key wins, as a resumed grid may write a
point twice), predicts every ``status == "ok"`` point on one hardware profile, and
prints predicted / measured / delta % for

* ``bytes sent``: ``measured.bytes_sent`` vs ``Prediction.bytes_sent`` (should be exact);
* ``peak memory``: ``measured.peak_alloc_bytes`` (the allocator's peak, every allocation
  counted: the ground truth; records without it, written before it existed, have no
  memory row) vs ``Prediction.peak_memory_bytes``;
* ``step time``: ``measured.step_time_s[STEP_STATISTIC]`` (the lower quartile of the
  timed steps, what the model predicts: ``simulator.model``) vs ``Prediction.step_time_s``;
* ``step time (median)``: ``measured.step_time_s.median`` vs the same prediction, so that
  what the host's scheduler adds above the floor stays in view (neither step time for
  emulated ranks, whose times do not describe a real group);
* ``simulated median`` and ``simulated p90``: the event simulator's median and p90 step
  (:func:`simulator.simulate`, :data:`SIMULATED_STEPS` steps, seed 0, the profile's
  fitted jitter, ``Hardware.jitter``) vs ``measured.step_time_s.median`` and ``.p90``.

``delta % = 100 · (predicted − measured) / measured``. The summary gives, per quantity
and per regime (world size; message size, ``bytes_sent / messages`` bucketed; ranks
within or beyond the profile's cores), the number of points, the geometric mean of
``|delta|`` (exact matches counted as 1e-6 % so that one exact point does not zero it),
the mean and the max of ``|delta|``. :func:`validate` returns it as plain data, and
prints :func:`by_regime`: per regime (ranks within the cores, oversubscribed) the closed
form's median error beside the simulator's median and p90 errors, issue 11's targets,
and a noise floor (:mod:`simulator.noise_floor`) when one is given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from profiling.results import latest, read_records
from simulator.hardware import Hardware, resolve_hardware
from simulator.model import OPTIONS, STEP_STATISTIC, predict
from simulator.simulate import simulate

QUANTITIES = {
    "bytes sent": "bytes_sent",
    "peak memory": "peak_memory_bytes",
    "step time": "step_time_s",
    "step time (median)": "step_time_median_s",
    "simulated median": "step_time_median_simulated_s",
    "simulated p90": "step_time_p90_simulated_s",
}
"""Each quantity compared, once: its label in the rows and tables here, and its key (the
unit in the name) in ``experiments``' comparisons, ``validation.json`` and the report."""
SIMULATED_STEPS = 150
"""Simulated steps per point (the measured points time 40)."""
REGIMES = ("ranks <= cores", "oversubscribed")
TARGETS_PCT = {
    "simulated median": {"ranks <= cores": 10.0, "oversubscribed": 15.0},
    "simulated p90": {"ranks <= cores": 15.0, "oversubscribed": 20.0},
}
"""Issue 11's targets: geomean |error| of the simulated median and p90 step, by regime."""
_EXACT_FLOOR_PCT = 1e-6
_MESSAGE_BUCKETS = ((4 * 2**10, "< 4 KiB"), (64 * 2**10, "4-64 KiB"), (2**20, "64 KiB-1 MiB"))


def message_bucket(bytes_sent: float, messages: float) -> str:
    if not messages:
        return "no messages"
    size = bytes_sent / messages
    for limit, name in _MESSAGE_BUCKETS:
        if size < limit:
            return name
    return ">= 1 MiB"


def _delta_pct(predicted: float, measured: float) -> float:
    if measured == 0:
        return 0.0 if predicted == 0 else math.inf
    return 100.0 * (predicted - measured) / measured


def _stats(deltas: list[float]) -> dict[str, float]:
    magnitudes = [abs(d) for d in deltas]
    floor = [max(m, _EXACT_FLOOR_PCT) for m in magnitudes]
    finite = all(math.isfinite(m) for m in magnitudes)
    geomean = math.exp(sum(math.log(m) for m in floor) / len(floor)) if finite else math.inf
    return {
        "points": len(deltas),
        "geomean_abs_err_pct": geomean,
        "mean_abs_err_pct": sum(magnitudes) / len(magnitudes),
        "max_abs_err_pct": max(magnitudes),
    }


def _point_of(config: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """A record's point as ``(method, world, batch, dim, dtype)`` and its loss options
    (None means "the method's default", which is also the model's default)."""
    point = (config["method"], config["world"], config["batch"], config["dim"])
    options = {k: config[k] for k in OPTIONS if config.get(k) is not None}
    return (*point, config.get("dtype", "fp32")), options


def simulate_record(record: dict[str, Any], hardware: Hardware, steps: int = SIMULATED_STEPS):
    """The event simulator at a record's point (its options; seed 0; the profile's jitter)."""
    point, options = _point_of(record["config"])
    return simulate(*point, hardware, steps=steps, seed=0, **options)


def compare(
    records: list[dict[str, Any]], hardware: Hardware, *, simulated_steps: int = SIMULATED_STEPS
) -> dict[str, Any]:
    """Rows (one per point and quantity) and the skipped records, without printing;
    ``simulated_steps`` 0 leaves the simulator out."""
    rows: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    for record in records:
        status = record.get("status")
        if status != "ok":
            skipped[str(status)] = skipped.get(str(status), 0) + 1
            continue
        config, measured = record["config"], record["measured"]
        point_args, options = _point_of(config)
        p = predict(*point_args, hardware, **options)
        point = {
            "method": config["method"],
            "world": config["world"],
            "batch": config["batch"],
            "dim": config["dim"],
            "dtype": config.get("dtype", "fp32"),
            "message_size": message_bucket(measured["bytes_sent"], measured.get("messages", 0)),
            "oversubscribed": bool(p.oversubscribed),
        }
        pairs = [
            ("bytes sent", p.bytes_sent.item(), measured.get("bytes_sent")),
            ("peak memory", p.peak_memory_bytes.item(), measured.get("peak_alloc_bytes")),
        ]
        if not config.get("emulate"):  # emulated ranks: no time
            steps = measured.get("step_time_s") or {}
            pairs.append(("step time", p.step_time_s.item(), steps.get(STEP_STATISTIC)))
            pairs.append(("step time (median)", p.step_time_s.item(), steps.get("median")))
            if simulated_steps and steps.get("median") is not None:
                sim = simulate_record(record, hardware, simulated_steps)
                pairs.append(("simulated median", sim.median_s, steps.get("median")))
                pairs.append(("simulated p90", sim.p90_s, steps.get("p90")))
        for quantity, predicted, value in pairs:
            if value is None:
                continue
            rows.append(
                point
                | {
                    "quantity": quantity,
                    "predicted": predicted,
                    "measured": value,
                    "delta_pct": _delta_pct(predicted, value),
                }
            )
    return {"rows": rows, "skipped": skipped}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per quantity: all points, then by world size, message size and oversubscription."""
    out: dict[str, Any] = {}
    for quantity in QUANTITIES:
        mine = [r for r in rows if r["quantity"] == quantity]
        if not mine:
            continue
        regimes: dict[str, dict[str, list[float]]] = {
            "by_world": {},
            "by_message_size": {},
            "by_oversubscription": {},
        }
        for r in mine:
            over = "oversubscribed" if r["oversubscribed"] else "ranks <= cores"
            for regime, name in (
                ("by_world", f"W={r['world']}"),
                ("by_message_size", r["message_size"]),
                ("by_oversubscription", over),
            ):
                regimes[regime].setdefault(name, []).append(r["delta_pct"])
        out[quantity] = {"all": _stats([r["delta_pct"] for r in mine])} | {
            regime: {name: _stats(d) for name, d in groups.items()}
            for regime, groups in regimes.items()
        }
    return out


def by_regime(summary: dict[str, Any], noise: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per regime: geomean |error| % of the closed form's median, the simulated median
    and p90, their targets, and the noise floor's median and p90 (None where absent)."""

    def geomean(quantity, regime, key="geomean_abs_err_pct"):
        stats = summary.get(quantity, {}).get("by_oversubscription", {}).get(regime)
        return stats[key] if stats else None

    out = []
    for regime in REGIMES:
        floor = (noise or {}).get(regime) or {}
        out.append(
            {
                "regime": regime,
                "points": geomean("simulated median", regime, "points") or 0,
                "closed_form_median_pct": geomean("step time (median)", regime),
                "simulated_median_pct": geomean("simulated median", regime),
                "simulated_p90_pct": geomean("simulated p90", regime),
                "target_median_pct": TARGETS_PCT["simulated median"][regime],
                "target_p90_pct": TARGETS_PCT["simulated p90"][regime],
                "noise_median_pct": floor.get("median_pct"),
                "noise_p90_pct": floor.get("p90_pct"),
            }
        )
    return out


def regime_table(rows: list[dict[str, Any]], title: str) -> Table:
    """:func:`by_regime`'s rows as a table."""
    table = Table(title=title)
    heads = ("regime", "points", "closed form median", "sim median (target)", "sim p90 (target)",
             "noise floor median", "noise floor p90")  # fmt: skip
    for col in heads:
        table.add_column(col, justify="left" if col == "regime" else "right")

    def pct(value):
        return "-" if value is None else f"{value:.1f}"

    for r in rows:
        table.add_row(
            r["regime"],
            str(r["points"]),
            pct(r["closed_form_median_pct"]),
            f"{pct(r['simulated_median_pct'])} (<= {r['target_median_pct']:g})",
            f"{pct(r['simulated_p90_pct'])} (<= {r['target_p90_pct']:g})",
            pct(r["noise_median_pct"]),
            pct(r["noise_p90_pct"]),
        )
    return table


def jitter_line(hardware: Hardware) -> str:
    """What jitter the simulated rows drew."""
    if not hardware.jitter:
        return f"simulated without jitter: {hardware.name} has no fitted jitter"
    parts = [
        f"{kind} {j.distribution} median x{j.median:.3g} sigma {j.sigma:.3g}"
        for kind, j in sorted(hardware.jitter.items())
    ]
    return f"simulated with {hardware.name}'s fitted jitter: " + "; ".join(parts)


def _fmt(quantity: str, value: float) -> str:
    if quantity.startswith(("step time", "simulated")):
        return f"{value * 1e3:.3f} ms"
    return f"{value / 2**20:.4f} MiB" if value >= 2**20 else f"{value:,.0f} B"


def validate(
    paths: Iterable[str | Path],
    hardware: Hardware | str | None = None,
    console: Console | None = None,
    *,
    show_points: bool = True,
    noise: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Print the per-point table, the summary and the table by regime (beside ``noise``,
    :func:`simulator.noise_floor.floor`'s result, when given); return them as plain data."""
    console = console or Console()
    hw = resolve_hardware(hardware)
    records = latest(read_records(paths, must_exist=True))
    result = compare(records, hw)
    rows = result["rows"]
    if show_points:
        table = Table(title=f"predicted vs measured on {hw.name} (delta % = (pred - meas)/meas)")
        for col in ("method", "W", "b", "d", "dtype", "quantity", "predicted", "measured"):
            table.add_column(col, justify="left" if col in ("method", "quantity") else "right")
        table.add_column("delta %", justify="right")
        for r in rows:
            table.add_row(
                r["method"],
                str(r["world"]),
                str(r["batch"]),
                str(r["dim"]),
                r["dtype"],
                r["quantity"],
                _fmt(r["quantity"], r["predicted"]),
                _fmt(r["quantity"], r["measured"]),
                f"{r['delta_pct']:+.2f}",
            )
        console.print(table)
    summary = summarize(rows)
    table = Table(title="error summary: |delta %| per quantity and regime")
    for col in ("quantity", "regime", "points", "geomean", "mean", "max"):
        table.add_column(col, justify="left" if col in ("quantity", "regime") else "right")
    for quantity, groups in summary.items():
        table.add_row(quantity, "all", *_stat_cells(groups["all"]))
        for regime in ("by_world", "by_message_size", "by_oversubscription"):
            for name, stats in groups[regime].items():
                table.add_row("", name, *_stat_cells(stats))
    console.print(table)
    if result["skipped"]:
        parts = ", ".join(f"{n} {status}" for status, n in sorted(result["skipped"].items()))
        console.print(f"not compared (status not ok): {parts}")
    ok = sum(1 for r in records if r.get("status") == "ok")
    regimes = by_regime(summary, noise)
    console.print(regime_table(regimes, "step time by regime: geomean |delta %|"))
    console.print(jitter_line(hw))
    return {
        "by_regime": regimes,
        "hardware": hw.name,
        "records": len(records),
        "points_compared": ok,
        "skipped": result["skipped"],
        "quantities": summary,
        "rows": rows,
    }


def _stat_cells(stats: dict[str, float]) -> list[str]:
    return [
        str(stats["points"]),
        f"{stats['geomean_abs_err_pct']:.2f}",
        f"{stats['mean_abs_err_pct']:.2f}",
        f"{stats['max_abs_err_pct']:.2f}",
    ]
