"""The one place where ``experiments`` calls the profiler, the losses and the simulator.

Everything the command line, plots and report need from the rest of the project goes
through these functions, so a renamed function elsewhere is fixed here only:

* methods: :func:`method_names`, :func:`method_summary`, :func:`is_ring`, :func:`method_kind`;
* measuring: :func:`run_points` (the profiler's grid runner over
  :class:`profiling.point.PointConfig` s: append-only JSON lines, resume, fault records),
  :func:`load_records`;
* the model: :func:`predict`, :func:`hardware_names`, :func:`calibrate`,
  :func:`local_profile`, :func:`validate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from profiling.point import PointConfig


@dataclass(frozen=True, kw_only=True, slots=True)
class Comparison:
    """One quantity of one measured point beside the model's prediction of it."""

    quantity: str
    """``step_time_s``, ``peak_memory_bytes`` or ``bytes_sent`` (the unit is in the name)."""
    method: str
    world: int
    batch: int
    dim: int
    dtype: str
    predicted: float
    measured: float
    oversubscribed: bool = False
    """True when the run had more ranks than CPU cores (processes shared cores)."""
    emulated: bool = False
    """True when one process emulated rank 0 of the W ranks."""
    error_pct: float = 0.0
    """Signed error 100·(predicted − measured)/measured; 0 when both are 0."""


# --- methods -------------------------------------------------------------------------


def method_names() -> tuple[str, ...]:
    from profiling.losses import METHODS

    return tuple(METHODS)


def _method(name: str):
    from profiling.losses import get_method

    return get_method(name)


def method_summary(name: str) -> str:
    return _method(name).summary


def method_kind(name: str) -> str:
    return _method(name).kind


def is_ring(name: str) -> bool:
    return bool(_method(name).ring)


def ring_options(method: str, args) -> dict:
    """``overlap``, ``tile`` and ``hide_accumulator`` from a model verb's ring options
    (``cli._ring_options``) for a ring method; none for the others."""
    if not is_ring(method):
        return {}
    options = {"overlap": not args.no_overlap}
    if args.tile:
        options["tile"] = args.tile
    if args.hide_accumulator is not None:
        options["hide_accumulator"] = args.hide_accumulator
    return options


# --- measuring -----------------------------------------------------------------------


def run_points(points: Sequence[PointConfig], results_path: Path) -> dict[str, int]:
    """Run every point into ``results_path`` (JSON lines) with the profiler's progress bar,
    consecutive points of one world size on the same ranks (``profiling.grid``); points
    already there are skipped. Returns the count of records per status written now, plus
    ``skipped``."""
    from profiling import grid

    summary = grid.run_grid(list(points), results_path, progress=True)
    return {**dict(summary.statuses), "skipped": summary.skipped}


def load_records(results_path: Path) -> list[dict]:
    """Every record of a results file, in the order written (schema: docs/results-schema.md)."""
    from profiling import results

    return results.read_records(results_path)


# --- the model -----------------------------------------------------------------------


def hardware_names() -> tuple[str, ...]:
    """Profiles known by name: the bundled ones and those calibrated on this machine."""
    from simulator import hardware

    return tuple(hardware.available_profiles())


def local_profile() -> Path | None:
    """This machine's calibrated profile file (filed under its machine key, so another
    CPU or torch build has none), or None when there is none or it is marked poor: a run
    then calibrates again rather than validate against it."""
    from simulator import hardware

    path = hardware.host_profile_path()
    if not path.is_file():
        return None
    try:
        poor = hardware.load_profile(path).poor
    except ValueError:  # unusable (an older schema): the caller recalibrates
        return path
    return None if poor else path


def profile_warning(hardware) -> str | None:
    """One line for the top of a report validated against a profile marked poor."""
    verdict = getattr(hardware, "quality", None) or {}
    if verdict.get("verdict") != "poor":
        return None
    return (
        f"**Warning: the hardware profile `{hardware.name}` is marked poor by its "
        f"calibration ({'; '.join(verdict.get('reasons', []))}); predicted times may be "
        "off for that reason. Rerun `sigsim calibrate` on a quiet machine.**"
    )


def calibrate(*, backend: str = "gloo", quick: bool = False, output: Path | None = None) -> Path:
    """Run the calibration microbenchmarks here and write this machine's profile
    (``output``, or the simulator's per-host default that :func:`local_profile` finds)."""
    from rich.console import Console

    from simulator import calibrate as calibration

    config = calibration.CalibrationConfig(output=output, quick=quick, backend=backend)
    path, _ = calibration.calibrate(config, Console())
    return Path(path)


def hardware_for(name: str | Path | None) -> Any:
    """A loaded profile by name or path; empty or None means this machine's calibrated one
    (the simulator's default profile when this machine has not been calibrated)."""
    from simulator import hardware

    return hardware.resolve_hardware(name or None)


def device_memory_bytes(hardware) -> float:
    """Memory one rank may fill on this profile, bytes."""
    return float(hardware.memory_bytes)


def hardware_label(hardware) -> str:
    return hardware.name


def hardware_summary(hardware) -> str:
    return f"{hardware.name}: {hardware.summary} (profile {hardware.path})"


def predict(method: str, world, batch, dim, dtype: str, hardware, **options) -> Any:
    """The model's prediction (numpy-broadcast over world, batch, dim)."""
    import simulator

    return simulator.predict(method, world, batch, dim, dtype=dtype, hardware=hardware, **options)


def validate(records: Sequence[dict], hardware) -> tuple[list[dict], dict]:
    """Predicted vs measured: one row per (record, quantity) and a summary dict."""
    from simulator import validate as validation

    return validation.validate(records, hardware)


_REGIMES = {
    "by_oversubscription": "ranks vs cores",
    "by_world": "world size",
    "by_message_size": "message size",
}


def compare(records: Sequence[dict], hardware) -> tuple[list[Comparison], list[dict]]:
    """``simulator.validate``'s comparison of every successful record with the model.

    Returns one :class:`Comparison` per point and quantity, and a flat summary: per
    quantity, real-process points (all, then per regime: ranks vs cores, world size,
    message size) and emulated points apart, each with geomean and max ``|delta %|``.
    """
    from experiments.records import latest
    from simulator import validate as validation

    records = latest(list(records))
    comparisons, summary = [], []
    for emulated in (False, True):
        mine = [r for r in records if bool(r.get("config", {}).get("emulate")) == emulated]
        if not mine:
            continue
        rows = validation.compare(mine, hardware)["rows"]
        comparisons += [
            Comparison(
                quantity=validation.QUANTITIES[row["quantity"]],
                method=row["method"],
                world=int(row["world"]),
                batch=int(row["batch"]),
                dim=int(row["dim"]),
                dtype=row["dtype"],
                predicted=float(row["predicted"]),
                measured=float(row["measured"]),
                oversubscribed=bool(row["oversubscribed"]) and not emulated,
                emulated=emulated,
                error_pct=float(row["delta_pct"]),
            )
            for row in rows
        ]
        prefix = "emulated ranks" if emulated else "real ranks"
        for quantity, groups in validation.summarize(rows).items():
            entries = [(f"{prefix}: all", groups["all"])]
            if not emulated:
                for regime, title in _REGIMES.items():
                    entries += [
                        (f"{title}: {name}", stats) for name, stats in groups[regime].items()
                    ]
            summary += [
                {
                    "quantity": validation.QUANTITIES[quantity],
                    "regime": regime,
                    "points": stats["points"],
                    "geomean_error_pct": stats["geomean_abs_err_pct"],
                    "max_error_pct": stats["max_abs_err_pct"],
                }
                for regime, stats in entries
            ]
    return comparisons, summary
