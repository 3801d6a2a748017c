"""Sweep configs: what one ``sigsim run`` measures and analyses, loaded from TOML.

A sweep is a grid file (``profiling.point``: a ``[point]`` table whose lists are the axes,
optional ``[[points]]``) plus an optional ``[run]`` table of what only ``sigsim run``
uses (:class:`SweepConfig`'s fields)::

    [run]
    description = "Smoke test."
    emulated_world = [16]     # also measure rank 0 of these W, one process each

    [point]
    method = ["sigmoid-ring", "softmax-allgather"]   # omitted: every method
    world = [1, 2]
    batch = [8, 16]
    dim = 16

Every point the profiler measures is a :class:`profiling.point.PointConfig`. Anything
wrong with a file raises :class:`ConfigError` (``profiling.point``'s, the one class) whose
message is one line naming the key; the older flat dialect (``worlds = [...]`` at the
top) is refused with the key that replaced it. The command line prints it and exits 2.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from profiling.losses.registry import DTYPES
from profiling.point import (
    OLD_KEYS,
    ConfigError,
    PointConfig,
    old_key_message,
    points_from_spec,
)

__all__ = ["DTYPES", "ConfigError", "SweepConfig", "from_dict", "load", "resolve", "shipped"]

EMULATION = "stand-in"
"""How emulated points run: rank 0 alone, its peers' messages filled with stand-in data."""
TABLES = ("run", "point", "points")


@dataclass(frozen=True, kw_only=True, slots=True)
class SweepConfig:
    """One sweep: the points of its ``[point]`` table, and the ``[run]`` settings."""

    name: str = "sweep"
    """Short name; the run directory is ``runs/<timestamp>-<name>``."""
    description: str = ""
    """One sentence on what the sweep shows (printed in the report)."""
    max_global_batch: int = 0
    """Skip real-process points whose global batch N = b·W exceeds this (examples); 0 means
    no limit. Emulated points are not limited (one process holds one rank's memory)."""
    emulated_world: tuple[int, ...] = ()
    """World sizes measured by one process emulating rank 0 (per-rank memory at large W):
    every method × these W × the ``[point]`` batches, at the first value of its other axes."""
    hardware: str = ""
    """Hardware profile the model predicts with; empty means this machine's calibrated one."""
    points: tuple[PointConfig, ...] = ()
    """Every point of the ``[point]`` / ``[[points]]`` tables, in run order (before
    ``max_global_batch``)."""
    point: dict = dataclasses.field(default_factory=dict)
    """The ``[point]`` table as written (the emulated points are built from it)."""

    @property
    def first(self) -> PointConfig:
        return self.points[0]

    @property
    def device(self) -> str:
        return self.first.device

    @property
    def backend(self) -> str:
        return self.first.backend

    def resolved_methods(self) -> tuple[str, ...]:
        """The methods measured, in run order."""
        return tuple(dict.fromkeys(p.method for p in self.points))

    def grid(self) -> list[PointConfig]:
        """Every real-process point, in run order (small worlds and batches first)."""
        limit = self.max_global_batch
        return [p for p in self.points if not limit or p.global_batch <= limit]

    def emulated_grid(self) -> list[PointConfig]:
        """Emulated-rank points: every method × emulated W × batch, the other axes at their
        first value. ``max_global_batch`` does not apply: one process holds one rank's
        memory."""
        if not self.emulated_world:
            return []
        first = {k: v[0] if isinstance(v, list) else v for k, v in self.point.items()}
        table = first | {
            "world": list(self.emulated_world),
            "batch": sorted({p.batch for p in self.points}),
            "method": list(self.resolved_methods()),
            "emulate": EMULATION,
        }
        return points_from_spec({"point": table}, "[run] emulated_world")

    def to_dict(self) -> dict:
        """The run settings and the ``[point]`` table, flat (what the report quotes)."""
        first = self.first
        return {
            "name": self.name,
            "description": self.description,
            "max_global_batch": self.max_global_batch,
            "emulated_world": list(self.emulated_world),
            "hardware": self.hardware,
            **self.point,
            "method": list(self.resolved_methods()),
            "device": first.device,
            "backend": first.backend,
            "steps": first.steps,
            "warmup": first.warmup,
            "seed": first.seed,
        }


_RUN_FIELDS = {
    f.name: f for f in dataclasses.fields(SweepConfig) if f.name not in ("points", "point")
}


def _run_value(key: str, value):
    if key in ("name", "description", "hardware"):
        if not isinstance(value, str):
            raise ConfigError(f"[run] {key}: expected a string, got {value!r}")
        return value
    if key == "max_global_batch":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"[run] {key}: expected an integer >= 0 (0: no limit), got {value!r}")
        return value
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ConfigError(f"[run] {key}: expected integers >= 1, got {value!r}")
    return tuple(sorted(values))


def from_dict(data: dict) -> SweepConfig:
    """Build and check a config from parsed TOML; one-line :class:`ConfigError` on any problem."""
    for key in data:
        if key in OLD_KEYS:
            raise ConfigError(old_key_message(key))
        if key in TABLES:
            continue
        if key in _RUN_FIELDS:
            raise ConfigError(f"{key!r} at the top is the old spelling: write it under [run]")
        if key in PointConfig.__dataclass_fields__:
            raise ConfigError(f"{key!r} at the top is the old spelling: write it under [point]")
        raise ConfigError(f"unknown table or key {key!r}; allowed tables: [run], [point]")
    run = data.get("run", {})
    for key in run:
        if key in OLD_KEYS:
            raise ConfigError(f"[run] {old_key_message(key)}")
        if key not in _RUN_FIELDS:
            if key in PointConfig.__dataclass_fields__:
                raise ConfigError(f"[run] {key!r} is a point field: write it under [point]")
            raise ConfigError(f"[run] unknown key {key!r}; known: {', '.join(_RUN_FIELDS)}")
    values = {key: _run_value(key, value) for key, value in run.items()}
    points = tuple(points_from_spec(data, "sweep"))
    config = SweepConfig(**values, points=points, point=dict(data.get("point", {})))
    if len({(p.device, p.backend) for p in points}) > 1:
        raise ConfigError("[point] device: one device per sweep (the model is calibrated for one)")
    if config.hardware:
        from experiments import backends

        allowed = backends.hardware_names()
        if config.hardware not in allowed:
            raise ConfigError(
                f"[run] hardware: unknown value {config.hardware!r}; allowed: {', '.join(allowed)}"
            )
    if not config.grid():
        raise ConfigError(
            f"[run] max_global_batch: {config.max_global_batch} excludes every point, so the "
            "grid is empty; raise it or set it to 0 (no limit)"
        )
    return config


def load(path: str | Path, *, name: str | None = None) -> SweepConfig:
    """Load a config file, or a shipped config by name (``"default"``, ``"smoke"``).

    ``name`` is used when the file's ``[run]`` sets none (default: the file's stem)."""
    path = resolve(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path.name}: not valid TOML: {error}") from None
    run = data.get("run")
    if isinstance(run, dict):
        run.setdefault("name", name or path.stem)
    elif run is None:
        data = {"run": {"name": name or path.stem}, **data}
    try:
        return from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"{path.name}: {error}") from None


def shipped() -> dict[str, Path]:
    """The configs shipped in ``experiments/configs``, by name."""
    folder = resources.files("experiments") / "configs"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def resolve(path: str | Path) -> Path:
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    if candidate.suffix == "" and str(path) in shipped():
        return shipped()[str(path)]
    raise ConfigError(
        f"config {str(path)!r} not found; give a TOML path or a shipped name: "
        f"{', '.join(sorted(shipped()))}"
    )
