"""What one data point is, and how TOML names points: :class:`PointConfig`, its TOML table
(:func:`expand_table`, :func:`points_from_spec`), and :func:`validate_point`.

One :class:`PointConfig` flows from the command line (``sigsim point``), a grid file
(``sigsim grid``) or a sweep (``sigsim run``) through the runner into the record's
``config``. A grid file and a sweep share one TOML shape::

    [point]                   # any PointConfig field; a list is an axis of the grid
    method = ["sigmoid-ring", "softmax-ring"]   # omitted: every registered method
    world = [2, 4]
    batch = 256
    dim = 128
    tile = "b"                # "b" (or no key): blocks of side b, no tiling

    [[points]]                # optional: further grids, each over [point]'s values;
    method = "sigmoid-allgather"   # with [[points]], [point] alone is not run
    world = 8

The grid is the product of the lists, world and batch ascending (small points first),
then dim, dtype, method and the other fields in :class:`PointConfig` order; ``overlap``,
``tile`` and ``hide_accumulator`` vary only for methods that take them (others get None). A sweep adds a
``[run]`` table (``experiments.config``). The old spellings (the sweep's flat plural
``worlds = [...]``, the grid's ``[defaults]`` / ``[sweep]``, ``tile = 0``, ``emulated``)
are refused with one line naming the new key.

:func:`validate_point` refuses a config that cannot run here with one line
(:class:`ConfigError`) before any process starts: unknown method or option, W/b/d/steps
below 1, W above the visible GPUs for NCCL, a dtype the device lacks (CPU: a tiny matmul,
exp and backward are tried; CUDA: bf16 needs compute capability 8.0, read through NVML so
the parent creates no CUDA context), exact emulation beyond its limits, a malformed fault.

This module imports torch only inside the functions that try the device, so configs load
(and ``sigsim`` parses them) without it.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import asdict, dataclass, fields

from profiling.losses.registry import DTYPES

EMULATION_MODES = ("exact", "stand-in")
EXACT_MAX_WORLD = 16
"""Exact emulation runs every peer as a thread in one process: small worlds only."""
FAULTS = ("raise", "oom", "hang")
TILE_B = "b"
"""TOML's spelling of ``tile = None`` (blocks of side b): TOML has no null."""


class ConfigError(ValueError):
    """A point, grid or sweep that cannot run; the message is one line naming the problem.

    The one such class: ``profiling.launch``, ``profiling.grid`` and ``experiments.config``
    raise this one."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PointConfig:
    """One data point. ``sigsim point --help`` lists the same fields; a TOML ``[point]``
    table uses the same names."""

    method: str
    """A registered method (``profiling.losses.METHODS``)."""
    world: int
    """W, ranks (processes, or emulated ranks)."""
    batch: int
    """b, examples per rank."""
    dim: int
    """d, embedding width."""
    dtype: str = "fp32"
    """fp64, fp32, bf16 or fp16."""
    autocast: str | None = None
    """Run the loss inside ``torch.autocast`` of this dtype ("bf16", "fp16"), as open_clip's
    ``--precision amp`` does; the features stay ``dtype`` (fp32)."""
    device: str = "cpu"
    """cpu (gloo) or cuda (NCCL, one GPU per rank)."""
    emulate: str | None = None
    """None: W real ranks. "exact": rank 0 plus W-1 peer threads in one process (CPU,
    W <= 16). "stand-in": rank 0 alone, peers' messages filled with stand-in data."""
    overlap: bool | None = None
    """Ring methods: overlap exchange and compute (None: the method's default)."""
    tile: int | None = None
    """Ring methods: largest block side computed at once (None: b; ``"b"`` in TOML)."""
    hide_accumulator: bool | None = None
    """Ring methods: compute each block's contribution apart so the accumulator transfer
    hides behind the block (three accumulator buffers per chain) instead of adding into
    the accumulator received (two, its transfer exposed); None: the device's default
    (True on CUDA, False on CPU; ``profiling.losses.ring``)."""
    check_ranks: bool = True
    """The losses' cross-rank shape check (its 32·(W-1) bytes are counted)."""
    steps: int = 10
    """Timed steps (forward + backward), after the warm-up."""
    warmup: int = 3
    """Untimed steps before timing starts."""
    seed: int = 0
    """Seed of the random features."""
    profile: bool = True
    """Also run the torch.profiler byte cross-check and the communication replay."""
    timeout_s: float = 600.0
    """Wall clock for the whole point; the parent kills every rank after it."""
    pg_timeout_s: float = 120.0
    """Process-group timeout: bounds one collective waiting on a dead or hung peer."""
    fault: str | None = None
    """Tests only: "raise@rankR", "oom@rankR" or "hang@rankR" after warm-up."""

    @property
    def backend(self) -> str:
        return "nccl" if self.device == "cuda" else "gloo"

    @property
    def processes(self) -> int:
        return 1 if self.emulate else self.world

    @property
    def global_batch(self) -> int:
        """N = b·W examples."""
        return self.world * self.batch

    def loss_options(self) -> dict:
        options = {"check_ranks": self.check_ranks}
        if self.overlap is not None:
            options["overlap"] = self.overlap
        if self.tile is not None:
            options["tile"] = self.tile
        if self.hide_accumulator is not None:
            options["hide_accumulator"] = self.hide_accumulator
        return options

    def as_dict(self) -> dict:
        return {**asdict(self), "backend": self.backend}

    @classmethod
    def from_dict(cls, data: dict) -> PointConfig:
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known) - {"backend"})
        if unknown:
            raise ConfigError(f"unknown point field {unknown[0]!r}; known: {', '.join(known)}")
        missing = [name for name in ("method", "world", "batch", "dim") if name not in data]
        if missing:
            raise ConfigError(f"a point needs {missing[0]!r}")
        return cls(**{k: v for k, v in data.items() if k in known})


# --- the TOML shape --------------------------------------------------------------------

POINT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(PointConfig))
_KINDS = {
    f.name: {"int": int, "float": float, "str": str, "bool": bool}[str(f.type).split(" |")[0]]
    for f in fields(PointConfig)
}
_OPTIONAL = {f.name for f in fields(PointConfig) if "None" in str(f.type)}
_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
OLD_KEYS = {
    "methods": "method",
    "worlds": "world",
    "batches": "batch",
    "dims": "dim",
    "dtypes": "dtype",
    "tiles": "tile",
    "cross_check": "profile",
    "emulated": "emulate",
    "emulated_worlds": "emulated_world",
    "backend": "device",
}
"""Keys of the older dialects (the sweep's flat plurals, backends' ``emulated``) -> the key
that replaced them."""
_AXIS_ORDER = ("world", "batch", "dim", "dtype", "method")
_RING_ONLY = ("overlap", "tile", "hide_accumulator")


def old_key_message(key: str, table: str = "[point]") -> str:
    """One line for a key of an older dialect, naming the key that replaced it."""
    new = OLD_KEYS[key]
    if key == "backend":
        return f"{key!r} is gone: the device sets it (device = 'cpu': gloo, 'cuda': nccl)"
    if key == "emulated":
        return f"{key!r} is the old spelling: write emulate = 'stand-in' under {table}"
    if key == "emulated_worlds":
        return f"{key!r} is the old spelling: write {new} = [...] under [run]"
    if key == "tiles":
        return f"{key!r} is the old spelling: write tile = [...] under {table} ('b' for no tiling)"
    return f"{key!r} is the old spelling: write {new} = ... (one value or a list) under {table}"


def _value(key: str, value, where: str):
    kind = _KINDS[key]
    if key == "tile" and value == TILE_B:
        return None
    if key == "tile" and value == 0:
        raise ConfigError(f"{where}: tile = 0 is the old spelling of no tiling: write tile = 'b'")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is float and isinstance(value, float) and not value > 0:
        raise ConfigError(f"{where}: {key}: must be above 0 seconds, got {value!r}")
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        extra = " or 'b'" if key == "tile" else ""
        raise ConfigError(f"{where}: {key}: expected {_KIND_NAMES[kind]}{extra}, got {value!r}")
    if kind is int and value < (0 if key in ("warmup", "seed") else 1):
        raise ConfigError(f"{where}: {key}: {value!r} is below the minimum")
    return value


def _axis(key: str, value, where: str) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"{where}: {key}: empty list, so the grid is empty; give a value")
    values = [_value(key, v, where) for v in values]
    if key in ("world", "batch"):
        values = sorted(values)
    return values


def expand_table(table: dict, where: str = "[point]") -> list[PointConfig]:
    """Every point of one ``[point]``-shaped table (scalars, or lists as axes), in run order.

    Raises :class:`ConfigError` naming the key for an unknown or old key, a wrong type, an
    empty list, a missing world/batch/dim, or an unknown method, dtype, device or emulation.
    """
    from profiling.losses.methods import METHODS, get_method

    for key in table:
        if key in OLD_KEYS:
            raise ConfigError(f"{where}: {old_key_message(key, where)}")
        if key not in POINT_FIELDS:
            raise ConfigError(f"{where}: unknown key {key!r}; known: {', '.join(POINT_FIELDS)}")
    missing = [k for k in ("world", "batch", "dim") if k not in table]
    if missing:
        raise ConfigError(f"{where}: no {missing[0]!r}; give one value or a list")
    axes = {key: _axis(key, value, where) for key, value in table.items()}
    axes.setdefault("method", list(METHODS))
    choices = {"method": METHODS, "dtype": DTYPES, "device": ("cpu", "cuda")}
    choices |= {"emulate": EMULATION_MODES, "autocast": ("bf16", "fp16")}
    for key, allowed in choices.items():
        for value in axes.get(key, ()):
            if value not in allowed:
                raise ConfigError(
                    f"{where}: {key}: unknown value {value!r}; allowed: {', '.join(allowed)}"
                )
    order = [k for k in _AXIS_ORDER if k in axes]
    order += [k for k in POINT_FIELDS if k in axes and k not in order and k not in _RING_ONLY]
    points = []
    for combo in itertools.product(*(axes[k] for k in order)):
        base = dict(zip(order, combo, strict=True))
        options = get_method(base["method"]).options
        ring = [axes.get(k, [None]) if k in options else [None] for k in _RING_ONLY]
        for overlap, tile, hide in itertools.product(*ring):
            points.append(PointConfig(**base, overlap=overlap, tile=tile, hide_accumulator=hide))
    return points


def points_from_spec(spec: dict, where: str) -> list[PointConfig]:
    """The points of a parsed TOML file's ``[point]`` table and ``[[points]]`` entries
    (each entry a further grid over ``[point]``'s values; see the module docstring)."""
    table = spec.get("point", {})
    extra = spec.get("points", [])
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: 'point' must be a table: write [point]")
    if not isinstance(extra, list) or not all(isinstance(e, dict) for e in extra):
        raise ConfigError(f"{where}: 'points' must be an array of tables: write [[points]]")
    if not table and not extra:
        raise ConfigError(f"{where} has no points: add a [point] table")
    if not extra:
        return expand_table(table, f"{where} [point]")
    return [
        point
        for index, entry in enumerate(extra)
        for point in expand_table({**table, **entry}, f"{where} [[points]] {index}")
    ]


def _dtype_works(name: str, device: str) -> bool:
    """Try a tiny matmul, exp and backward in dtype ``name`` (CPU); CUDA: bf16 needs sm_80+."""
    import torch

    from profiling.losses.precision import TORCH_DTYPES

    dtype = TORCH_DTYPES[name]
    if device == "cuda":
        return dtype != torch.bfloat16 or _gpu_capability() >= (8, 0)
    try:
        a = torch.randn(4, 4, generator=torch.Generator().manual_seed(0)).to(dtype)
        a.requires_grad_(True)
        (a @ a.T).exp().sum().backward()
        return a.grad is not None and bool(torch.isfinite(a.grad.float()).all())
    except (RuntimeError, NotImplementedError):
        return False


def _gpu_capability() -> tuple[int, int]:
    """Compute capability of GPU 0, through NVML so that the parent creates no CUDA context."""
    try:
        import pynvml

        pynvml.nvmlInit()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
        index = int(visible) if visible.isdigit() else 0
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
    except Exception:  # no NVML: ask the CUDA runtime instead
        import torch

        return torch.cuda.get_device_capability(0)


def parse_fault(fault: str | None) -> tuple[str, int] | None:
    if fault is None:
        return None
    kind, _, where = fault.partition("@rank")
    if kind not in FAULTS or not where.isdigit():
        raise ConfigError(f"bad fault {fault!r}: expected one of {FAULTS} as 'kind@rankR'")
    return kind, int(where)


def validate_point(config: PointConfig, *, local: bool = True) -> None:
    """Raise :class:`ConfigError` (one line) if ``config`` cannot run here.

    ``local`` False (under torchrun, ranks spread over nodes): W is not checked against
    this node's GPU count.
    """
    from profiling.launch import visible_gpus
    from profiling.losses import get_method

    try:
        method = get_method(config.method)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for name in ("world", "batch", "dim", "steps"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    if config.warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {config.warmup}")
    if config.dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {config.dtype!r}; known: {', '.join(DTYPES)}")
    if config.device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu' or 'cuda', got {config.device!r}")
    if config.autocast is not None:
        if config.autocast not in ("bf16", "fp16"):
            raise ConfigError(f"autocast must be bf16 or fp16, got {config.autocast!r}")
        if config.dtype != "fp32":
            raise ConfigError(
                f"autocast casts fp32 features: dtype must be fp32, not {config.dtype}"
            )
        if not _dtype_works(config.autocast, config.device):
            raise ConfigError(
                f"autocast {config.autocast} is not supported on {config.device} here"
            )
    if config.device == "cuda" and visible_gpus() == 0:
        raise ConfigError("device 'cuda' asked for, but no GPU is visible")
    if config.emulate not in (None, *EMULATION_MODES):
        raise ConfigError(f"emulate must be None, 'exact' or 'stand-in', got {config.emulate!r}")
    if config.emulate == "exact" and (config.device != "cpu" or config.world > EXACT_MAX_WORLD):
        raise ConfigError(
            f"exact emulation runs W threads on the CPU: needs device 'cpu' and W <= "
            f"{EXACT_MAX_WORLD} (got {config.device}, W={config.world}); use 'stand-in'"
        )
    if local and not config.emulate and config.device == "cuda" and config.world > visible_gpus():
        raise ConfigError(
            f"NCCL runs one GPU per rank: W={config.world} exceeds the {visible_gpus()} "
            f"visible GPUs (emulate='stand-in' measures one rank of a larger world)"
        )
    for option in config.loss_options():
        if option not in method.options:
            raise ConfigError(f"method {config.method!r} takes no option {option!r}")
    if config.tile is not None and (not isinstance(config.tile, int) or config.tile < 1):
        raise ConfigError(f"tile must be a positive integer or None, got {config.tile!r}")
    if not _dtype_works(config.dtype, config.device):
        raise ConfigError(f"dtype {config.dtype} is not supported on {config.device} here")
    fault = parse_fault(config.fault)
    if fault and fault[1] >= config.processes:
        raise ConfigError(f"fault {config.fault!r} names a rank outside the {config.processes}")
