"""The method registry and the cost algebra: numpy only, never torch.

Each strategy is a pair of modules: ``profiling/losses/<name>.py``, the loss (torch, the
math in its docstring), and its sibling ``<name>_cost.py``, which builds one
:class:`Method` (naming the loss class by import path) and calls :func:`register`.
``profiling.losses.methods`` imports every sibling, in table order. The profiler builds
the loss by name, the cost model (``simulator``) reads its :class:`Schedule` and memory
terms without importing torch, the plots and docs read its name, kind and summary.
Adding a method is one new pair plus one import in ``profiling/losses/methods.py``.

The cost description is written beside the code it describes, as functions of a
:class:`Shape` whose fields may be numpy arrays (they broadcast), so a single call
prices a whole grid:

* :class:`Schedule`: the phases one loss step runs through, each repeated ``repeat``
  times, with its matmul FLOPs, its elementwise work and the :class:`Transfer` s it
  makes. Summing the transfers gives the exact bytes ``profiling.comm`` counts.
* ``memory_terms(shape)``: the peak bytes one rank holds during a forward and backward
  of the loss, as named terms (inputs excluded; their gradients included).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Pass = Literal["forward", "backward"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Shape:
    """One configuration (or a broadcast grid of them) as the cost functions see it."""

    world: Any
    """W, ranks (int or integer numpy array)."""
    batch: Any
    """b, examples per rank."""
    dim: Any
    """d, embedding width."""
    elem_bytes: int
    """s, bytes per element of the features (8 fp64, 4 fp32, 2 bf16/fp16)."""
    compute_bytes: int
    """Bytes per element of the block math: fp32 for half types, else ``elem_bytes``."""
    operand_bytes: int
    """m, bytes per element of the block matmuls' operands: ``elem_bytes`` where half
    features are multiplied as they are (``precision.matmul_dtype``: CUDA), else
    ``compute_bytes`` (an upcast copy per block)."""
    tile: int | None = None
    """Largest block side a ring method computes at once (None: :func:`default_tile`)."""
    device: str = "cpu"
    """"cpu" or "cuda": the device type the default tile and operand dtype are for."""
    overlap: bool = True
    """Ring methods: post the next exchange before computing the current block."""
    hide_accumulator: bool = False
    """Ring methods: compute each block's contribution apart and merge it after the
    previous rank's accumulator arrives, so that transfer hides behind the block (three
    accumulator buffers per chain), instead of adding into the accumulator received
    (two, its transfer exposed); ``profiling.losses.ring``. :meth:`of` resolves None to
    :func:`default_hide_accumulator` of the device."""
    check_ranks: bool = True
    """Whether the 32-byte cross-rank shape check runs each forward."""
    input_bytes: int | None = None
    """Bytes per element of the caller's features where ``torch.autocast`` rounds them
    to ``elem_bytes`` (:func:`wire_dtype`); None: no autocast cast."""

    @staticmethod
    def of(
        world,
        batch,
        dim,
        dtype="fp32",
        tile=None,
        overlap=True,
        check_ranks=True,
        device="cpu",
        half_matmul=None,
        autocast=None,
        hide_accumulator=None,
    ) -> Shape:
        """``half_matmul``: whether half features are multiplied in their own dtype
        (``precision.half_matmul``; None: the device's default, yes on CUDA only).
        ``hide_accumulator``: the ring methods' accumulator policy (None: the device's
        default, :func:`default_hide_accumulator`).
        ``autocast``: None, "fp16" or "bf16": the loss runs inside ``torch.autocast`` of
        that dtype, so ``dtype`` features travel and are computed as :func:`wire_dtype`."""
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if half_matmul is None:
            half_matmul = device == "cuda"
        if hide_accumulator is None:
            hide_accumulator = default_hide_accumulator(device)
        elif not isinstance(hide_accumulator, bool):
            raise ValueError(
                f"hide_accumulator must be True, False or None, got {hide_accumulator!r}"
            )
        wire = wire_dtype(dtype, autocast)
        s = dtype_bytes(wire)
        c = max(s, 4)
        return Shape(
            world=np.asarray(world, dtype=np.int64),
            batch=np.asarray(batch, dtype=np.int64),
            dim=np.asarray(dim, dtype=np.int64),
            elem_bytes=s,
            compute_bytes=c,
            operand_bytes=s if half_matmul else c,
            tile=tile,
            device=device,
            overlap=overlap,
            hide_accumulator=hide_accumulator,
            check_ranks=check_ranks,
            input_bytes=dtype_bytes(dtype) if wire != dtype else None,
        )

    @property
    def global_batch(self):
        return self.world * self.batch

    @property
    def tile_side(self):
        """Side of the blocks actually computed: min(tile, b)."""
        tile = default_tile(self.batch, self.dim, self.device) if self.tile is None else self.tile
        return np.minimum(tile, self.batch)


@dataclass(frozen=True, kw_only=True, slots=True)
class Transfer:
    """Traffic of one operation, per repetition of its phase, on one rank."""

    op: Literal["all_gather", "reduce_scatter", "p2p"]
    label: str
    """Matches the label the code passes to ``profiling.comm`` (key ``op:label``)."""
    bytes_sent: Any
    bytes_received: Any
    messages: Any
    peer: Literal["ring", "neighbor", "direct"] = "ring"
    """Collectives: "ring". p2p: "neighbor" (next rank on the ring) or "direct" (a
    rank further away; the topology decides which link it crosses)."""
    directions: int = 1
    """Links used at once: 2 when a bidirectional ring sends both ways in one round."""
    called_alone: bool = True
    """Whether the code still calls this operation at ``W = 1`` (moving nothing): true of
    collectives on the data; false of p2p and of checks the code skips on one rank."""

    @property
    def key(self) -> str:
        return f"{self.op}:{self.label}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Phase:
    """A stretch of one step that the time model prices as a unit."""

    name: str
    pass_: Pass
    repeat: Any
    """How many times the phase runs per step (e.g. W-1 ring rounds)."""
    matmul_flops: Any = 0
    """Per repetition: 2·m·n·k summed over the matrix products."""
    pointwise_elems: Any = 0
    """Per repetition: elements through transcendental elementwise math (exp, log1p)."""
    transfers: tuple[Transfer, ...] = ()
    overlapped: bool = False
    """True when these transfers run while the previous repetition computes."""


@dataclass(frozen=True, slots=True)
class Schedule:
    phases: tuple[Phase, ...]

    def flops(self, pass_: Pass | None = None):
        return sum(
            np.asarray(p.repeat) * p.matmul_flops
            for p in self.phases
            if pass_ is None or p.pass_ == pass_
        )

    def bytes_by_op(self) -> dict[str, dict[str, Any]]:
        """Totals per ``op:label`` key, as :class:`profiling.comm.CommRecord` reports them."""
        out: dict[str, dict[str, Any]] = {}
        for phase in self.phases:
            for t in phase.transfers:
                row = out.setdefault(t.key, {"bytes_sent": 0, "bytes_received": 0, "messages": 0})
                row["bytes_sent"] = row["bytes_sent"] + np.asarray(phase.repeat) * t.bytes_sent
                row["bytes_received"] = (
                    row["bytes_received"] + np.asarray(phase.repeat) * t.bytes_received
                )
                row["messages"] = row["messages"] + np.asarray(phase.repeat) * t.messages
        return out

    def bytes_sent(self):
        return sum(row["bytes_sent"] for row in self.bytes_by_op().values())

    def bytes_received(self):
        return sum(row["bytes_received"] for row in self.bytes_by_op().values())

    def messages(self):
        return sum(row["messages"] for row in self.bytes_by_op().values())


@dataclass(frozen=True, kw_only=True, slots=True)
class Method:
    name: str
    kind: Literal["sigmoid", "softmax"]
    summary: str
    """One line for tables and plots."""
    loss: str | None = None
    """Import path ``"package.module:Class"`` of the runnable loss, constructed as
    ``Class(group=..., **options)`` (:attr:`module` resolves it, importing torch); None
    for a cost description of code that is not ours (an incumbent: ``describes`` says
    which)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Allowed options and their defaults."""
    schedule: Callable[[Shape], Schedule]
    memory_terms: Callable[[Shape], dict[str, Any]]
    ring: bool = False
    describes: str | None = None
    """Incumbents only: the code this describes (package, version, file, function)."""

    @property
    def runnable(self) -> bool:
        """Whether this is one of our losses (not an incumbent's cost description)."""
        return self.loss is not None

    @property
    def module(self) -> type | None:
        """The loss class ``loss`` names (a ``torch.nn.Module``), imported on first use;
        None for an incumbent."""
        if self.loss is None:
            return None
        path, _, attr = self.loss.partition(":")
        return getattr(importlib.import_module(path), attr)

    def peak_terms(self, shape: Shape) -> dict[str, Any]:
        """The peak memory of one step as named terms (``memory_terms``; under
        ``torch.autocast``, ``shape.input_bytes`` set, they include the rounded copies of
        the features the method makes). Every consumer (model, simulator, tests) reads
        this."""
        return self.memory_terms(shape)


def peak_of(*moments: dict[str, Any]) -> dict[str, Any]:
    """Named terms of whichever moment holds the most bytes (elementwise over a grid).

    A method's memory is described as a few candidate moments (e.g. "mid-ring", "end of
    forward", "backward"), each a dict of named byte terms; the peak is the largest.
    Terms a moment lacks count as 0 in it.
    """
    totals = np.broadcast_arrays(*[sum(np.asarray(v) for v in m.values()) for m in moments])
    best = np.argmax(np.stack(totals), axis=0)
    names = list(dict.fromkeys(k for m in moments for k in m))
    shape = totals[0].shape
    return {
        name: np.choose(best, [np.broadcast_to(np.asarray(m.get(name, 0)), shape) for m in moments])
        for name in names
    }


SMALLEST_DEFAULT_TILE = {"cpu": 256, "cuda": 4096}
"""Per device type, the side below which the default never cuts a block: large enough
that a tile's matmuls run at nearly full rate (on the 2-core development CPU, at
d = 512, cutting a 512-block into 256-tiles cost the fp32 sigmoid block 2–7% more CPU
time and saved time elsewhere; 128-tiles cost 9–90% more than 256; ``docs/speed.md``)."""
TILE_PER_DIM = {"cpu": 0, "cuda": 4}
"""Per device type, how far the default tile grows with ``d`` (``k·d``): on CUDA the tile
keeps ``T ≥ 4·d``, so the tile scratch (``2·T²·c``) stays within a few times the
``b×d`` buffers the ring holds anyway; on CPU a fixed 256 bounds it at ``0.5 MiB``
(fp32)."""


def default_tile(batch, dim, device: str = "cpu"):
    """The ring methods' tile when none is given: ``min(b, max(S, k·d))`` with ``S`` the
    device's :data:`SMALLEST_DEFAULT_TILE` and ``k`` its :data:`TILE_PER_DIM` (CPU:
    ``min(b, 256)``; CUDA: ``b``, unless ``b`` exceeds both 4096 and ``4·d``)."""
    wide = TILE_PER_DIM[device] * np.asarray(dim)
    return np.minimum(batch, np.maximum(SMALLEST_DEFAULT_TILE[device], wide))


HIDE_ACCUMULATOR = {"cpu": False, "cuda": True}
"""Per device type, the ring methods' default accumulator policy
(``profiling.losses.ring``): on CUDA the third accumulator-sized buffer hides the
accumulator's ``b·d·c`` transfer behind each block (the model prices sigmoid-ring at
h100-sxm, W = 512, b = 1024, d = 768 fp32 at 108.9 ms hidden against 136.9 ms exposed,
``docs/speed.md``); on CPU the ring keeps two and saves a ``b×d`` buffer per chain, at a
cost within noise on the 2-core development VM (``docs/speed.md``)."""


def default_hide_accumulator(device: str = "cpu") -> bool:
    """Whether the ring methods hide the accumulator transfer when not told
    (:data:`HIDE_ACCUMULATOR`): True on CUDA, False on CPU."""
    try:
        return HIDE_ACCUMULATOR[device]
    except KeyError:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}") from None


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is registered twice")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; known methods: {', '.join(_REGISTRY)}"
        ) from None


def registered() -> tuple[str, ...]:
    """Our runnable methods (those with a ``loss``), in registration order."""
    return tuple(name for name, m in _REGISTRY.items() if m.runnable)


def incumbents() -> tuple[str, ...]:
    """Registered cost descriptions of other code (``loss`` None), in registration order;
    ``simulator.incumbents`` registers them."""
    return tuple(name for name, m in _REGISTRY.items() if not m.runnable)


DTYPE_BYTES = {"fp64": 8, "fp32": 4, "bf16": 2, "fp16": 2}
"""The one table of feature dtypes: name → bytes per element. Every other dtype list
(``DTYPES``, ``precision.TORCH_DTYPES``, ``checks.SUPPORTED_DTYPES``, the hardware
profiles' and the configs' choices) is derived from it."""
DTYPES: tuple[str, ...] = tuple(DTYPE_BYTES)
"""The dtype names, widest first."""


AUTOCAST_DTYPES = ("fp16", "bf16")


def wire_dtype(dtype: str, autocast: str | None) -> str:
    """The dtype features of ``dtype`` travel in inside ``torch.autocast(dtype=autocast)``:
    autocast's for fp32, bf16 and fp16 features (as autocast casts a matmul's operands),
    their own for fp64 (never cast) or without autocast (``precision``)."""
    if autocast is None:
        return dtype
    if autocast not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast must be None, 'fp16' or 'bf16', got {autocast!r}")
    dtype_bytes(dtype)
    return dtype if dtype == "fp64" else autocast


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}") from None


def __getattr__(name: str):
    """``TORCH_DTYPES`` lives on the torch side (``precision``); the old path still
    resolves, importing torch only when asked for."""
    if name == "TORCH_DTYPES":
        from profiling.losses.precision import TORCH_DTYPES

        return TORCH_DTYPES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
