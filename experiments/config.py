"""Sweep configs: the grid one ``sigsim run`` measures, as typed data loaded from TOML.

A config file is flat TOML; every key is a field of :class:`SweepConfig` (its docstring
says what the key means and its unit). Lists are the grid axes; the grid is their
product, minus the points a method does not use (overlap and tile only vary for ring
methods). Example::

    name = "smoke"
    methods = ["sigmoid-ring", "softmax-allgather"]
    worlds = [1, 2]
    batches = [8, 16]
    dims = [16]

Anything wrong with a file raises :class:`ConfigError` whose message is one line naming
the key and the allowed values; the command line prints it and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from experiments import backends
from profiling.losses.registry import DTYPES

BACKENDS = ("gloo", "nccl")
DEVICES = ("cpu", "cuda")


class ConfigError(ValueError):
    """A sweep config that cannot run; the message is one line naming the key."""


@dataclass(kw_only=True, slots=True)
class SweepConfig:
    """One sweep: the product of the list-valued fields, each point run ``steps`` times."""

    name: str = "sweep"
    """Short name; the run directory is ``runs/<timestamp>-<name>``."""
    description: str = ""
    """One sentence on what the sweep shows (printed in the report)."""
    methods: tuple[str, ...] = ()
    """Registered loss methods to run; empty (the default) means every registered method."""
    worlds: tuple[int, ...] = (1, 2, 4)
    """World sizes W (ranks, one process each)."""
    batches: tuple[int, ...] = (64,)
    """Local batches b (examples per rank); the global batch is N = b·W."""
    dims: tuple[int, ...] = (64,)
    """Embedding widths d (elements)."""
    dtypes: tuple[str, ...] = ("fp32",)
    """Feature dtypes: fp64, fp32, bf16, fp16."""
    overlap: tuple[bool, ...] = (True,)
    """Ring methods: overlap each exchange with the previous block's compute (on / off)."""
    tiles: tuple[int, ...] = (0,)
    """Ring methods: largest block side computed at once, in examples; 0 means b (no tiling)."""
    steps: int = 5
    """Timed steps per point (forward + backward), after the warm-up."""
    warmup: int = 2
    """Untimed steps per point before timing starts."""
    backend: str = "gloo"
    """torch.distributed backend: gloo (CPU processes) or nccl (one GPU per rank)."""
    device: str = "cpu"
    """Device the ranks compute on: cpu or cuda."""
    cross_check: bool = True
    """Also count bytes with torch.profiler and replay the traffic alone (gives overlap %);
    costs a few seconds per point."""
    timeout_s: float = 120.0
    """Seconds before a point that hangs is recorded as a timeout and the grid goes on."""
    max_global_batch: int = 0
    """Skip real-process points whose global batch N = b·W exceeds this (examples); 0 means
    no limit. Emulated points are not limited (one process holds one rank's memory)."""
    emulated_worlds: tuple[int, ...] = ()
    """World sizes measured by one process emulating rank 0 (per-rank memory at large W)."""
    hardware: str = ""
    """Hardware profile the model predicts with; empty means this machine's calibrated one."""
    seed: int = 0
    """Seed for the random features of every point."""

    def resolved_methods(self) -> tuple[str, ...]:
        return self.methods or backends.method_names()

    def grid(self) -> list[backends.Point]:
        """Every point of the sweep, in run order (small worlds and batches first)."""
        points = []
        tiles = tuple(t or None for t in self.tiles)
        for world in sorted(self.worlds):
            for batch in sorted(self.batches):
                if self.max_global_batch and batch * world > self.max_global_batch:
                    continue
                for dim in self.dims:
                    for dtype in self.dtypes:
                        for method in self.resolved_methods():
                            ring = backends.is_ring(method)
                            for overlap in self.overlap if ring else (True,):
                                for tile in tiles if ring else (None,):
                                    points.append(
                                        backends.Point(
                                            method=method,
                                            world=world,
                                            batch=batch,
                                            dim=dim,
                                            dtype=dtype,
                                            overlap=overlap,
                                            tile=tile,
                                        )
                                    )
        return points

    def emulated_grid(self) -> list[backends.Point]:
        """Emulated-rank points: every method × emulated W × local batch (first dim, dtype).

        ``max_global_batch`` does not apply: one process holds one rank's memory."""
        return [
            backends.Point(
                method=method,
                world=world,
                batch=batch,
                dim=self.dims[0],
                dtype=self.dtypes[0],
                emulated=True,
            )
            for world in sorted(self.emulated_worlds)
            for batch in sorted(self.batches)
            for method in self.resolved_methods()
        ]

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


_HINTS = typing.get_type_hints(SweepConfig)
_FIELDS = {f.name: f for f in dataclasses.fields(SweepConfig)}


_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_PLURALS = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}


def _type_name(hint) -> str:
    if typing.get_origin(hint) is tuple:
        return "a list of " + _PLURALS[typing.get_args(hint)[0]]
    return _NAMES[hint]


def _check_scalar(key: str, value, hint, expected: str):
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (hint is int and isinstance(value, bool)) or not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")
    return value


def _coerce(key: str, value):
    hint = _HINTS[key]
    expected = _type_name(hint)
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")
        return tuple(_check_scalar(key, v, item, expected) for v in value)
    return _check_scalar(key, value, hint, expected)


def _check_choices(key: str, values, allowed) -> None:
    for v in values:
        if v not in allowed:
            raise ConfigError(f"{key}: unknown value {v!r}; allowed: {', '.join(allowed)}")


def _check_positive(key: str, values, minimum: int = 1) -> None:
    for v in values:
        if v < minimum:
            raise ConfigError(f"{key}: {v!r} is below the minimum {minimum}")


def from_dict(data: dict) -> SweepConfig:
    """Build and validate a config; raises :class:`ConfigError` with one line on any problem."""
    unknown = [k for k in data if k not in _FIELDS]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}; allowed keys: {', '.join(_FIELDS)}")
    values = {key: _coerce(key, value) for key, value in data.items()}
    config = SweepConfig(**values)
    for axis in ("worlds", "batches", "dims", "dtypes", "overlap", "tiles"):
        if not getattr(config, axis):
            raise ConfigError(f"{axis}: empty list, so the grid is empty; give at least one value")
    if "methods" in data and not config.methods:
        raise ConfigError(
            "methods: empty list, so the grid is empty; omit the key to run every method "
            f"({', '.join(backends.method_names())})"
        )
    _check_choices("methods", config.methods, backends.method_names())
    _check_choices("dtypes", config.dtypes, DTYPES)
    _check_choices("backend", (config.backend,), BACKENDS)
    _check_choices("device", (config.device,), DEVICES)
    _check_positive("worlds", config.worlds)
    _check_positive("batches", config.batches)
    _check_positive("dims", config.dims)
    _check_positive("tiles", config.tiles, minimum=0)
    _check_positive("emulated_worlds", config.emulated_worlds)
    _check_positive("steps", (config.steps,))
    _check_positive("warmup", (config.warmup,), minimum=0)
    _check_positive("max_global_batch", (config.max_global_batch,), minimum=0)
    if config.timeout_s <= 0:
        raise ConfigError(f"timeout_s: must be above 0 seconds, got {config.timeout_s!r}")
    if config.backend == "nccl" and config.device != "cuda":
        raise ConfigError("backend: nccl needs device = 'cuda'; allowed for cpu: gloo")
    if config.hardware:
        _check_choices("hardware", (config.hardware,), backends.hardware_names())
    if not config.grid():
        raise ConfigError(
            f"max_global_batch: {config.max_global_batch} excludes every point, so the grid "
            "is empty; raise it or set it to 0 (no limit)"
        )
    return config


def load(path: str | Path, *, name: str | None = None) -> SweepConfig:
    """Load a config file, or a shipped config by name (``"default"``, ``"smoke"``).

    ``name`` is used when the file sets none (default: the file's stem)."""
    path = resolve(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path.name}: not valid TOML: {error}") from None
    data.setdefault("name", name or path.stem)
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
