"""Result records (docs/results-schema.md) flattened into rows the plots and report read.

The records come from the one reader, ``profiling.results`` (:func:`read_records`,
:func:`latest`: a resumed grid may have written a point twice, and the last record of a
key wins). :func:`rows` turns the successful ones into :class:`Row` s, a flat view with
units in their names; :func:`failures` lists the others so that the report shows them
instead of hiding them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from profiling.results import latest, read_records

__all__ = ["Row", "failures", "labels", "latest", "read_records", "row_of", "rows"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Row:
    """One measured data point (medians over timed steps of the max over ranks)."""

    method: str
    world: int
    batch: int
    dim: int
    dtype: str
    overlap: bool
    tile: int | None
    hide_accumulator: bool | None = None
    """Ring methods: the accumulator policy the point asked for (None: the device's)."""
    emulated: bool
    """True when one process played rank 0 (``config.emulate`` set)."""
    step_time_s: float
    step_time_p10_s: float
    step_time_p90_s: float
    comm_exposed_s: float
    overlap_pct: float | None
    bytes_sent: int
    bytes_received: int
    peak_live_bytes: int
    peak_alloc_bytes: int | None
    """The allocator's peak (the ground truth); None in records made before it existed."""
    rss_peak_bytes: int | None
    loss: float | None

    @property
    def global_batch(self) -> int:
        return self.world * self.batch

    @property
    def compute_s(self) -> float:
        """Step time not spent waiting on communication."""
        return max(self.step_time_s - self.comm_exposed_s, 0.0)

    @property
    def label(self) -> str:
        """The method plus the ring options that differ from the defaults."""
        parts = [self.method]
        if not self.overlap:
            parts.append("no-overlap")
        if self.hide_accumulator is not None:
            parts.append("hidden-acc" if self.hide_accumulator else "exposed-acc")
        if self.tile:
            parts.append(f"tile={self.tile}")
        return " ".join(parts)


def _median(stats) -> float:
    if isinstance(stats, dict):
        return float(stats.get("median", math.nan))
    return math.nan if stats is None else float(stats)


def _stat(stats, name: str) -> float:
    if isinstance(stats, dict) and stats.get(name) is not None:
        return float(stats[name])
    return _median(stats)


def row_of(record: dict) -> Row:
    config, measured = record["config"], record["measured"]
    step = measured.get("step_time_s")
    exposed = measured.get("comm_exposed_s")
    return Row(
        method=config["method"],
        world=int(config["world"]),
        batch=int(config["batch"]),
        dim=int(config["dim"]),
        dtype=config.get("dtype", "fp32"),
        # None: the method's default (on for rings; all-gathers have no such option).
        overlap=config.get("overlap") is not False,
        tile=config.get("tile"),
        hide_accumulator=config.get("hide_accumulator"),
        emulated=bool(config.get("emulate")),
        step_time_s=_median(step),
        step_time_p10_s=_stat(step, "p10"),
        step_time_p90_s=_stat(step, "p90"),
        comm_exposed_s=0.0 if exposed is None else _median(exposed),
        overlap_pct=measured.get("overlap_pct"),
        bytes_sent=int(measured.get("bytes_sent") or 0),
        bytes_received=int(measured.get("bytes_received") or 0),
        peak_live_bytes=int(measured.get("peak_live_bytes") or 0),
        peak_alloc_bytes=measured.get("peak_alloc_bytes"),
        rss_peak_bytes=measured.get("rss_peak_bytes"),
        loss=measured.get("loss"),
    )


def rows(records: list[dict], *, emulated: bool | None = None) -> list[Row]:
    """Successful points as rows; ``emulated`` filters real (False) or emulated (True) runs."""
    out = [row_of(r) for r in latest(records) if r.get("status") == "ok" and r.get("measured")]
    if emulated is not None:
        out = [r for r in out if r.emulated == emulated]
    return out


def failures(records: list[dict]) -> list[dict]:
    """Records whose last status is not ok (oom, error, timeout), for the report."""
    return [r for r in latest(records) if r.get("status") != "ok"]


def labels(table: list[Row]) -> list[str]:
    """Distinct row labels in first-seen order (the plots' series)."""
    return list(dict.fromkeys(r.label for r in table))
