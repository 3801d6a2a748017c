"""What one data point is: :class:`PointConfig`, and :func:`validate_point`, which refuses
a config that cannot run here with one line (:class:`profiling.launch.ConfigError`)
before any process starts: unknown method or option, W/b/d/steps below 1, W above the
visible GPUs for NCCL, a dtype the device lacks (CPU: a tiny matmul, exp and backward
are tried; CUDA: bf16 needs compute capability 8.0, read through NVML so the parent
creates no CUDA context), exact emulation beyond its limits, a malformed fault.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

import torch

from profiling.launch import ConfigError, visible_gpus
from profiling.losses import get_method
from profiling.losses.precision import TORCH_DTYPES

EMULATION_MODES = ("exact", "stand-in")
EXACT_MAX_WORLD = 16
"""Exact emulation runs every peer as a thread in one process: small worlds only."""
FAULTS = ("raise", "oom", "hang")


@dataclass(kw_only=True, slots=True)
class PointConfig:
    """One data point. ``sigsim point --help`` lists the same fields."""

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
    """Ring methods: largest block side computed at once (None: b)."""
    check_ranks: bool = True
    """The losses' cross-rank shape check (its 32·(W-1) bytes are counted)."""
    steps: int = 10
    warmup: int = 3
    seed: int = 0
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

    def loss_options(self) -> dict:
        options = {"check_ranks": self.check_ranks}
        if self.overlap is not None:
            options["overlap"] = self.overlap
        if self.tile is not None:
            options["tile"] = self.tile
        return options

    def as_dict(self) -> dict:
        return {**asdict(self), "backend": self.backend}

    @classmethod
    def from_dict(cls, data: dict) -> PointConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"backend"})
        if unknown:
            raise ConfigError(f"unknown point field {unknown[0]!r}; known: {', '.join(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})


def _dtype_works(dtype: torch.dtype, device: str) -> bool:
    """Try a tiny matmul, exp and backward in ``dtype`` (CPU); CUDA: bf16 needs sm_80+."""
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
    if config.dtype not in TORCH_DTYPES:
        raise ConfigError(f"unknown dtype {config.dtype!r}; known: {', '.join(TORCH_DTYPES)}")
    if config.device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu' or 'cuda', got {config.device!r}")
    if config.autocast is not None:
        if config.autocast not in ("bf16", "fp16"):
            raise ConfigError(f"autocast must be bf16 or fp16, got {config.autocast!r}")
        if config.dtype != "fp32":
            raise ConfigError(
                f"autocast casts fp32 features: dtype must be fp32, not {config.dtype}"
            )
        if not _dtype_works(TORCH_DTYPES[config.autocast], config.device):
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
    if not _dtype_works(TORCH_DTYPES[config.dtype], config.device):
        raise ConfigError(f"dtype {config.dtype} is not supported on {config.device} here")
    fault = parse_fault(config.fault)
    if fault and fault[1] >= config.processes:
        raise ConfigError(f"fault {config.fault!r} names a rank outside the {config.processes}")
