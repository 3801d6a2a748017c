"""The one place where ``experiments`` calls the profiler, the losses and the simulator.

Everything the command line, plots and report need from the rest of the project goes
through these functions, so a renamed function elsewhere is fixed here only:

* methods: :func:`method_names`, :func:`method_summary`, :func:`is_ring`, :func:`method_kind`;
* measuring: :class:`Point` (one grid point) and :func:`run_points` (the profiler's grid
  runner: append-only JSON lines, resume, fault records), :func:`load_records`;
* the model: :func:`predict`, :func:`hardware_names`, :func:`calibrate`,
  :func:`local_profile`, :func:`validate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True, kw_only=True, slots=True)
class Point:
    """One data point of a sweep (the ``config`` of a result record, less run settings)."""

    method: str
    world: int
    """W, ranks."""
    batch: int
    """b, examples per rank."""
    dim: int
    """d, embedding width in elements."""
    dtype: str = "fp32"
    overlap: bool = True
    tile: int | None = None
    """Ring block side in examples; None means b."""
    emulated: bool = False
    """True: one process plays rank 0 of a W-rank world."""

    @property
    def global_batch(self) -> int:
        return self.world * self.batch


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

    @property
    def error_pct(self) -> float:
        """Signed error of the prediction, percent of the measurement."""
        return 100.0 * (self.predicted - self.measured) / self.measured


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


# --- measuring -----------------------------------------------------------------------


def run_points(
    points: Sequence[Point],
    results_path: Path,
    *,
    steps: int,
    warmup: int,
    backend: str,
    device: str,
    timeout_s: float,
    seed: int,
    on_point: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run every point into ``results_path`` (JSON lines); skips points already there."""
    from profiling import grid

    configs = [
        grid.PointConfig(
            method=p.method,
            world=p.world,
            batch=p.batch,
            dim=p.dim,
            dtype=p.dtype,
            overlap=p.overlap,
            tile=p.tile,
            emulated=p.emulated,
            backend=backend,
            device=device,
            steps=steps,
            warmup=warmup,
            seed=seed,
        )
        for p in points
    ]
    return grid.run_grid(configs, results_path, timeout_s=timeout_s, on_record=on_point)


def load_records(results_path: Path) -> list[dict]:
    """Every record of a results file, in the order written (schema: docs/results-schema.md)."""
    from profiling import results

    return list(results.read_records(results_path))


# --- the model -----------------------------------------------------------------------


def hardware_names() -> tuple[str, ...]:
    """Profiles known by name: the bundled ones and those calibrated on this machine."""
    from simulator import hardware

    return tuple(hardware.available_profiles())


def local_profile() -> Path | None:
    """This machine's calibrated profile file, or None when it has not been calibrated."""
    from simulator import hardware

    path = hardware.host_profile_path()
    return path if path.is_file() else None


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


QUANTITIES = ("step_time_s", "peak_memory_bytes", "bytes_sent")
"""What validation compares: measured key of the record → the prediction's attribute."""
_MEASURED_KEY = {
    "step_time_s": "step_time_s",
    "peak_memory_bytes": "peak_live_bytes",
    "bytes_sent": "bytes_sent",
}


def compare(records: Sequence[dict], hardware) -> tuple[list[Comparison], list[dict]]:
    """Every successful record beside the model's prediction, and the error summary.

    Step time is compared for real-process points only (emulated ranks do not wait on
    real peers); memory and bytes for every point. The summary has one entry per
    quantity and regime (``W <= cores`` / ``W > cores``, emulated) with the geometric
    mean error ``(∏(1 + |e_i|))^(1/n) − 1`` and the max ``|e_i|``, in percent.
    """
    from experiments.records import latest

    comparisons = []
    for record in latest(list(records)):
        if record.get("status") != "ok" or not record.get("measured"):
            continue
        config, measured = record["config"], record["measured"]
        options = {}
        if is_ring(config["method"]):
            options["overlap"] = bool(config.get("overlap", True))
            if config.get("tile"):
                options["tile"] = int(config["tile"])
        p = predict(
            config["method"],
            config["world"],
            config["batch"],
            config["dim"],
            config.get("dtype", "fp32"),
            hardware,
            **options,
        )
        emulated = bool(config.get("emulated"))
        for quantity in QUANTITIES:
            if quantity == "step_time_s" and emulated:
                continue
            value = measured.get(_MEASURED_KEY[quantity])
            if isinstance(value, dict):
                value = value.get("median")
            if value is None or value <= 0:
                continue
            comparisons.append(
                Comparison(
                    quantity=quantity,
                    method=config["method"],
                    world=int(config["world"]),
                    batch=int(config["batch"]),
                    dim=int(config["dim"]),
                    dtype=config.get("dtype", "fp32"),
                    predicted=float(getattr(p, quantity)),
                    measured=float(value),
                    oversubscribed=bool(p.oversubscribed) and not emulated,
                    emulated=emulated,
                )
            )
    return comparisons, summarise(comparisons)


def summarise(comparisons: Sequence[Comparison]) -> list[dict]:
    """Geomean and max |error| (percent) per quantity and regime."""
    groups: dict[tuple[str, str], list[float]] = {}
    for c in comparisons:
        regime = "emulated" if c.emulated else ("W > cores" if c.oversubscribed else "W <= cores")
        groups.setdefault((c.quantity, regime), []).append(abs(c.error_pct) / 100)
    out = []
    for quantity in QUANTITIES:
        for regime in ("W <= cores", "W > cores", "emulated"):
            errors = groups.get((quantity, regime))
            if not errors:
                continue
            geomean = float(np.exp(np.mean(np.log1p(errors))) - 1)
            out.append(
                {
                    "quantity": quantity,
                    "regime": regime,
                    "points": len(errors),
                    "geomean_error_pct": 100 * geomean,
                    "max_error_pct": 100 * max(errors),
                }
            )
    return out
