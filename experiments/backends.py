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


def calibrate(*, backend: str = "gloo", quick: bool = False) -> Path:
    """Run the calibration microbenchmarks here and write this machine's profile."""
    from simulator import calibrate as calibration

    return Path(calibration.calibrate(backend=backend, quick=quick))


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
