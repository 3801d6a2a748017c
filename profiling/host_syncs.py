"""Count the host synchronisations of one training step, against the inventory.

``profiling.losses.checks.HOST_SYNCS`` lists every place a step of a registered method
reads a device value on the host. Two ways to count what a step actually does:

* :func:`count_reads` (any device, CPU included): on CPU nothing synchronises, so it
  counts the calls that would on CUDA. It patches the tensor reads (``item``, ``cpu``,
  ``tolist``, ``numpy``, ``__bool__``, ``__float__``, ``__int__``, ``__index__``, ``to``
  a CPU device, ``nonzero``, ``masked_select``) and ``torch.tensor(..., device=...)`` (a
  copy from the host), and records each call made while a frame of ``profiling/losses/``
  is on the stack, at the innermost frame under ``profiling/`` (the loss, or the transport
  it called). Calls made only from outside (the caller's own ``.item()``) are not counted.
  It sees the calls it patches, not a synchronisation hidden inside a C++ operator;
* :func:`count_cuda_syncs` (CUDA): every synchronisation the device reports under
  ``torch.cuda.set_sync_debug_mode("warn")``, whoever made it (the warm-up step is the
  caller's to run first: first-use copies such as the stand-in peers' cached rows are
  not part of a step).

:func:`step` runs one forward and backward of a method on the current transport (set it
with ``profiling.comm.use_transport``, or a process group); :func:`expected` is what the
inventory says that step makes. ``tests/test_host_syncs.py`` and ``sigsim gpu-check``
compare the two.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from profiling.losses.checks import host_syncs

ROOT = Path(__file__).resolve().parents[1]
_PROJECT = str(ROOT / "profiling") + "/"
_LOSSES = str(ROOT / "profiling" / "losses") + "/"
_SELF = str(Path(__file__).resolve())

TENSOR_READS = (
    "item",
    "cpu",
    "tolist",
    "numpy",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "nonzero",
    "masked_select",
)
"""Tensor methods that copy a device value to the host (a synchronisation on CUDA)."""
CUDA_SYNC_WARNING = "called a synchronizing CUDA operation"
"""The text of the warning ``torch.cuda.set_sync_debug_mode("warn")`` raises."""


@dataclass(frozen=True, slots=True)
class Read:
    """One counted call."""

    path: str
    """File of the frame the read is charged to, relative to the repository root."""
    line: int
    """Its line."""
    function: str
    """Its function (``co_name``)."""
    call: str
    """What was called (``Tensor.item``, ``torch.tensor``, or ``cuda`` for a warning)."""

    @property
    def site(self) -> tuple[str, str]:
        """(path, function): what ``checks.HostSync`` entries name."""
        return (self.path, self.function)


def _charged_frame(frame):
    """The innermost project frame of the stack if a ``profiling/losses`` frame is on it."""
    charged = None
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_PROJECT) and name != _SELF:
            if charged is None:
                charged = frame
            if name.startswith(_LOSSES):
                return charged
        frame = frame.f_back
    return None


def _to_host(args, kwargs) -> bool:
    """Whether a ``Tensor.to`` call names a CPU device."""
    target = kwargs.get("device", args[0] if args else None)
    if isinstance(target, str | torch.device):
        return torch.device(target).type == "cpu"
    return False


@contextlib.contextmanager
def count_reads() -> Iterator[list[Read]]:
    """Record (into the yielded list) every patched read the losses make meanwhile.

    Patches ``torch.Tensor`` and ``torch.tensor`` process-wide (every thread) until exit."""
    reads: list[Read] = []
    lock = threading.Lock()

    def note(call: str) -> None:
        frame = _charged_frame(sys._getframe(2))
        if frame is not None:
            path = str(Path(frame.f_code.co_filename).relative_to(ROOT))
            with lock:
                reads.append(Read(path, frame.f_lineno, frame.f_code.co_name, call))

    def patched(name, original):
        def read(self, *args, **kwargs):
            note(f"Tensor.{name}")
            return original(self, *args, **kwargs)

        return read

    def patched_to(original):
        def to(self, *args, **kwargs):
            if _to_host(args, kwargs):
                note("Tensor.to(cpu)")
            return original(self, *args, **kwargs)

        return to

    def patched_tensor(original):
        def tensor(data, *args, **kwargs):
            if kwargs.get("device") is not None and not isinstance(data, torch.Tensor):
                note("torch.tensor(device=...)")
            return original(data, *args, **kwargs)

        return tensor

    saved = {name: torch.Tensor.__dict__.get(name) for name in (*TENSOR_READS, "to")}
    saved_tensor = torch.tensor
    try:
        for name in TENSOR_READS:
            setattr(torch.Tensor, name, patched(name, getattr(torch.Tensor, name)))
        torch.Tensor.to = patched_to(torch.Tensor.to)
        torch.tensor = patched_tensor(saved_tensor)
        yield reads
    finally:
        torch.tensor = saved_tensor
        for name, original in saved.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)


@contextlib.contextmanager
def count_cuda_syncs() -> Iterator[list[Read]]:
    """Record every synchronisation CUDA reports meanwhile (``set_sync_debug_mode("warn")``).

    Each is charged to the warning's file and line (for a backward run on autograd's
    device thread, the line that called ``backward``); ``function`` is empty."""
    reads: list[Read] = []
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield reads
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    for w in caught:
        if CUDA_SYNC_WARNING in str(w.message):
            path = Path(w.filename).resolve()
            where = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
            reads.append(Read(where, w.lineno, "", "cuda"))


def make_inputs(device, *, batch: int = 8, dim: int = 16, seed: int = 0, rank: int = 0):
    """Features (leaf tensors wanting gradients), scale and bias of one rank's step."""
    gen = torch.Generator().manual_seed(seed * 1009 + rank)
    x = torch.nn.functional.normalize(torch.randn(batch, dim, generator=gen), dim=1)
    y = torch.nn.functional.normalize(torch.randn(batch, dim, generator=gen), dim=1)
    x, y = (t.to(device).requires_grad_(True) for t in (x, y))
    log_scale = torch.tensor(2.3, device=device, requires_grad=True)
    bias = torch.tensor(-10.0, device=device, requires_grad=True)
    return x, y, log_scale, bias


def step(
    method: str,
    inputs,
    *,
    check_ranks: bool = True,
    weight: float = 1.0,
    backward: bool = True,
) -> None:
    """One forward (and backward, scaled by ``weight``: ranks with different weights
    backpropagate different scalars) of ``method`` on the current transport."""
    from profiling.losses import build_loss, get_method

    x, y, log_scale, bias = inputs
    loss_fn = build_loss(method, check_ranks=check_ranks)
    sigmoid = get_method(method).kind == "sigmoid"
    if not backward:
        with torch.no_grad():
            loss_fn(x, y, log_scale.exp(), bias if sigmoid else None)
        return
    loss = loss_fn(x, y, log_scale.exp(), bias if sigmoid else None)
    (loss * weight).backward()


def expected(
    method: str, *, world: int, check_ranks: bool = True, backward: bool = True
) -> list[tuple[str, str]]:
    """The (path, function) sites the inventory says one :func:`step` reads, in order."""
    return [
        (s.path, s.function)
        for s in host_syncs(method, world=world, check_ranks=check_ranks, backward=backward)
    ]
