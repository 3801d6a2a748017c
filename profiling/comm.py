"""Every tensor that crosses ranks goes through this module.

The losses never call ``torch.distributed`` directly: they ask :func:`current` for a
:class:`Transport` and call its three operations,

* ``all_gather(tensor, label)``: concatenate every rank's tensor along dim 0;
* ``reduce_scatter(tensor, label)``: sum over ranks, keep this rank's slice of dim 0;
* ``start_p2p(sends, recvs, label)``: post point-to-point sends and receives together
  (``torch.distributed.batch_isend_irecv``) and return a handle whose ``wait()`` returns
  the filled receive buffers.

Message pairing. Every p2p message carries the tag :func:`p2p_tag` derives from its
label, so on gloo (and in exact emulation) a payload can never be paired with an
accumulator of the same size: each kind of message is matched only with its own kind.
NCCL ignores tags and pairs the sends and receives between two ranks in the order they
are posted; the losses post in one fixed program order on every rank, and the cross-rank
check (``profiling.losses.checks``) refuses ranks that would run different programs
(method, options, grad mode, shapes), so the order is unambiguous there too.

Because all traffic funnels through here, counting bytes, timing waits and faking peers
(emulated ranks) are each one place. :func:`record` opens a recorder on the current
transport; every operation adds to it.

Byte convention (per rank, what a ring algorithm moves; NCCL and gloo both use rings):

* all-gather of ``n`` bytes per rank: sent = received = ``(W-1)·n``, ``W-1`` messages;
* reduce-scatter producing ``n`` bytes per rank: sent = received = ``(W-1)·n`` (on gloo,
  whose reduce-scatter is an all-reduce underneath, a ring of send/recv is used so
  that this is what actually moves);
* point-to-point: the bytes of the tensors themselves, one message per send.

This equals nccl-tests' ``busbw × time`` for the collectives, so measured bytes and
bus bandwidth agree by construction.

Exposed time. ``exposed_s`` is the time the computation waited for communication it
could not hide. On gloo (and emulated ranks) that is host time blocked inside an
operation. On NCCL the host does not block: a collective or a p2p ``wait()`` makes the
compute stream wait for NCCL's stream, so the transport records a CUDA event on the
compute stream before and after it (:class:`DeviceClock`), and the stall between the two
is the exposed time; the events are read when the recorder closes (:func:`record`), after
the step's own synchronisation, so timing adds no host synchronisation inside the step.
"""

from __future__ import annotations

import contextlib
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

__all__ = [
    "CommRecord",
    "OpStats",
    "TorchDistributedTransport",
    "Transport",
    "current",
    "record",
    "use_transport",
]


@dataclass(slots=True)
class OpStats:
    """Traffic of one kind of operation (``"<op>:<label>"``) on this rank."""

    calls: int = 0
    messages: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    exposed_s: float = 0.0
    call_s: list[float] = field(default_factory=list)
    """Each call's own seconds, in call order: a collective's call from entry to return
    (waiting for the slowest peer included), a p2p exchange's ``wait()`` (the host time
    it blocked; an exchange never waited on adds nothing). Python floats appended while
    a recorder is open: no tensor memory."""


@dataclass(slots=True)
class CommRecord:
    """What :func:`record` yields: totals and a per-operation breakdown for this rank."""

    ops: dict[str, OpStats] = field(default_factory=dict)

    @property
    def bytes_sent(self) -> int:
        return sum(s.bytes_sent for s in self.ops.values())

    @property
    def bytes_received(self) -> int:
        return sum(s.bytes_received for s in self.ops.values())

    @property
    def messages(self) -> int:
        return sum(s.messages for s in self.ops.values())

    @property
    def exposed_s(self) -> float:
        return sum(s.exposed_s for s in self.ops.values())

    def add(
        self,
        key: str,
        *,
        messages: int,
        sent: int,
        received: int,
        exposed_s: float,
        timed: bool = True,
    ) -> None:
        """Count one call; ``timed`` False (a p2p post) leaves its time to :meth:`waited`."""
        stats = self.ops.setdefault(key, OpStats())
        stats.calls += 1
        stats.messages += messages
        stats.bytes_sent += sent
        stats.bytes_received += received
        stats.exposed_s += exposed_s
        if timed:
            stats.call_s.append(exposed_s)

    def waited(self, key: str, seconds: float) -> None:
        """Charge one p2p exchange's wait."""
        stats = self.ops.setdefault(key, OpStats())
        stats.exposed_s += seconds
        stats.call_s.append(seconds)

    pending: list = field(default_factory=list)
    """Device-timed waits not yet read: ``(key, start event, end event, timed)``, in call
    order (:class:`DeviceClock`); :meth:`resolve` turns them into seconds."""

    def resolve(self) -> None:
        """Read the pending device events (waiting for them) and charge their seconds."""
        for key, start, end, timed in self.pending:
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
            stats = self.ops.setdefault(key, OpStats())
            stats.exposed_s += seconds
            if timed:
                stats.call_s.append(seconds)
        self.pending.clear()

    def call_seconds(self) -> dict[str, list[float]]:
        """Per ``op:label``, each call's own seconds (:attr:`OpStats.call_s`)."""
        return {key: list(s.call_s) for key, s in sorted(self.ops.items())}

    def as_dict(self) -> dict[str, dict[str, float]]:
        """Plain-data view, for JSON records."""
        return {
            key: {
                "calls": s.calls,
                "messages": s.messages,
                "bytes_sent": s.bytes_sent,
                "bytes_received": s.bytes_received,
                "exposed_s": s.exposed_s,
            }
            for key, s in sorted(self.ops.items())
        }


def p2p_tag(label: str) -> int:
    """The tag of every p2p message with this label: the same on every rank, in 1..2^30."""
    return zlib.crc32(label.encode()) % (1 << 30) + 1


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class DeviceClock:
    """Marks on a device's current stream: ``mark()`` records a timing event there.

    Two marks around a wait give the time the stream stalled in it (``CommRecord.resolve``
    reads them later). ``event`` makes the event; ``torch.cuda.Event`` by default.
    """

    def __init__(self, device: torch.device, event=None) -> None:
        self.device = device
        self.event = event or (lambda: torch.cuda.Event(enable_timing=True))

    def mark(self):
        event = self.event()
        event.record()
        return event


class PendingP2P:
    """Handle for posted point-to-point operations; ``wait()`` returns the receive buffers."""

    def __init__(self, transport: Transport, key: str, works: list, recv_buffers: list):
        self._transport = transport
        self._key = key
        self._works = works
        self._buffers = recv_buffers
        self._done = False

    def wait(self) -> list[torch.Tensor]:
        if not self._done:
            with self._transport._timed(self._key, self._buffers):
                for work in self._works:
                    work.wait()
            self._done = True
            self._works = []  # release the sent tensors
        return self._buffers


class Transport:
    """Moves tensors between ranks and counts what it moves.

    Subclasses implement ``_all_gather``, ``_reduce_scatter`` and ``_post_p2p``; this
    class does the bookkeeping, so a real and an emulated transport count identically.
    """

    rank: int
    world_size: int

    def __init__(self) -> None:
        self._recorders: list[CommRecord] = []
        self._lock = threading.Lock()

    # -- the operations the losses use -------------------------------------------------
    def all_gather(self, tensor: torch.Tensor, label: str) -> torch.Tensor:
        tensor = tensor.contiguous()
        key = f"all_gather:{label}"
        n = _nbytes(tensor) * (self.world_size - 1)
        self._charge(
            key, messages=self.world_size - 1, sent=n, received=n, exposed_s=0.0, timed=False
        )
        with self._timed(key, [tensor]):
            out = self._all_gather(tensor)
        return out

    def reduce_scatter(self, tensor: torch.Tensor, label: str) -> torch.Tensor:
        tensor = tensor.contiguous()
        if tensor.shape[0] % self.world_size:
            raise ValueError(
                f"reduce_scatter({label}): dim 0 ({tensor.shape[0]}) is not a multiple of "
                f"the world size ({self.world_size})"
            )
        key = f"reduce_scatter:{label}"
        n = _nbytes(tensor) // self.world_size * (self.world_size - 1)
        self._charge(
            key, messages=self.world_size - 1, sent=n, received=n, exposed_s=0.0, timed=False
        )
        with self._timed(key, [tensor]):
            out = self._reduce_scatter(tensor)
        return out

    def start_p2p(
        self,
        sends: Sequence[tuple[torch.Tensor, int]],
        recvs: Sequence[tuple[torch.Tensor, int]],
        label: str,
    ) -> PendingP2P:
        """Post sends ``(tensor, dst)`` and receives ``(buffer, src)``; returns a handle."""
        sends = [(t.contiguous(), peer) for t, peer in sends]
        for _, peer in list(sends) + list(recvs):
            if peer == self.rank or not 0 <= peer < self.world_size:
                raise ValueError(f"p2p({label}): bad peer {peer} for rank {self.rank}")
        key = f"p2p:{label}"
        self._charge(
            key,
            messages=len(sends),
            sent=sum(_nbytes(t) for t, _ in sends),
            received=sum(_nbytes(b) for b, _ in recvs),
            exposed_s=0.0,
            timed=False,
        )
        works = self._post_p2p(sends, recvs, p2p_tag(label)) if (sends or recvs) else []
        return PendingP2P(self, key, works, [b for b, _ in recvs])

    # -- bookkeeping ---------------------------------------------------------------------
    def _charge(self, key: str, **amounts) -> None:
        with self._lock:
            for rec in self._recorders:
                rec.add(key, **amounts)

    def _charge_wait(self, key: str, seconds: float) -> None:
        with self._lock:
            for rec in self._recorders:
                rec.waited(key, seconds)

    @contextlib.contextmanager
    def _timed(self, key: str, tensors):
        """Charge the time the enclosed communication kept the computation waiting to
        ``key``: host time, or device time where :meth:`_device_clock` says so."""
        clock = self._device_clock(tensors)
        if clock is None:
            start = time.perf_counter()
            yield
            self._charge_wait(key, time.perf_counter() - start)
            return
        start = clock.mark()
        yield
        end = clock.mark()
        with self._lock:
            for rec in self._recorders:
                rec.pending.append((key, start, end, True))

    def _device_clock(self, tensors) -> DeviceClock | None:
        """A device clock where the host does not block on this transport's work (None:
        host time)."""
        return None

    # -- to implement --------------------------------------------------------------------
    def _all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _reduce_scatter(self, tensor: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _post_p2p(self, sends, recvs, tag: int = 0) -> list:
        raise NotImplementedError


# torch 2.13 renamed the tensor collectives; keep working on torch >= 2.4.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_REDUCE_SCATTER_TAG = p2p_tag("reduce_scatter")


class TorchDistributedTransport(Transport):
    """A ``torch.distributed`` process group (gloo, NCCL, ...): the default one, or ``group``.

    Ranks are ranks within the group; point-to-point peers are translated to global ranks.
    """

    def __init__(self, group=None) -> None:
        super().__init__()
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "no process group: the distributed losses need torch.distributed to be "
                "initialised (torch.distributed.init_process_group, torchrun, or "
                "profiling.launch) before the first forward"
            )
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)
        self.backend = dist.get_backend(self.group)
        self._global = [dist.get_global_rank(self.group, r) for r in range(self.world_size)]

    def _device_clock(self, tensors) -> DeviceClock | None:
        if self.backend != "nccl" or not tensors or not tensors[0].is_cuda:
            return None
        return DeviceClock(tensors[0].device)

    def _all_gather(self, tensor):
        out = tensor.new_empty((self.world_size * tensor.shape[0], *tensor.shape[1:]))
        _all_gather_single(out, tensor, group=self.group)
        return out

    def _reduce_scatter(self, tensor):
        if self.backend == "gloo":
            return self._ring_reduce_scatter(tensor)
        out = tensor.new_empty((tensor.shape[0] // self.world_size, *tensor.shape[1:]))
        _reduce_scatter_single(out, tensor, group=self.group)
        return out

    def _ring_reduce_scatter(self, tensor):
        """Ring reduce-scatter from send/recv: gloo's own runs as an all-reduce and would
        move twice the ``(W−1)·n`` bytes counted here. Step ``k`` sends the partial sum of
        chunk ``r−k−1`` to rank ``r+1`` and adds its own chunk ``r−k−2`` to what arrives;
        after ``W−1`` steps rank ``r`` holds the full sum of chunk ``r``."""
        world, rank = self.world_size, self.rank
        chunks = tensor.chunk(world)
        if world == 1:
            return chunks[0].clone()
        partial = chunks[(rank - 1) % world].contiguous()
        spare = torch.empty_like(partial)  # two buffers, alternating: no allocation churn
        for step in range(world - 1):
            index = (rank - step - 2) % world
            arriving = spare
            for work in self._post_p2p(
                [(partial, (rank + 1) % world)],
                [(arriving, (rank - 1) % world)],
                _REDUCE_SCATTER_TAG,
            ):
                work.wait()
            spare = partial if step > 0 else torch.empty_like(partial)
            partial = arriving.add_(chunks[index])
        return partial

    def _post_p2p(self, sends, recvs, tag: int = 0):
        g = self._global
        ops = [dist.P2POp(dist.isend, t, g[peer], self.group, tag) for t, peer in sends]
        ops += [dist.P2POp(dist.irecv, b, g[peer], self.group, tag) for b, peer in recvs]
        return dist.batch_isend_irecv(ops)


# The process-wide transport (one per process group), and a per-thread override used by
# emulated ranks, where several simulated ranks share one process.
_default: TorchDistributedTransport | None = None
_override = threading.local()


def current(group=None) -> Transport:
    """The transport the calling code should use; raises if there is no process group.

    ``group``: a ``torch.distributed`` process group (a data-parallel subgroup of a
    larger job), a one-dimensional ``DeviceMesh`` (or one dimension of a mesh, e.g.
    ``mesh["dp"]``), or None for the default group. A transport installed with
    :func:`use_transport` (emulated ranks, tests) takes precedence over all of them.
    """
    stack = getattr(_override, "stack", None)
    if stack:
        return stack[-1]
    if group is not None:
        return _transport_of(_as_process_group(group))
    global _default
    if _default is None or not dist.is_initialized() or _default.group is not dist.group.WORLD:
        _default = TorchDistributedTransport()
    return _default


_by_group: dict[int, TorchDistributedTransport] = {}


def _transport_of(group) -> TorchDistributedTransport:
    """One transport per process group (the group object's identity), made on first use."""
    key = id(group)
    cached = _by_group.get(key)
    if cached is None or cached.group is not group or not dist.is_initialized():
        cached = _by_group[key] = TorchDistributedTransport(group)
    return cached


def _as_process_group(group):
    """A process group from a process group or a one-dimensional DeviceMesh."""
    if hasattr(group, "get_group") and hasattr(group, "mesh"):  # a DeviceMesh
        if group.ndim != 1:
            raise ValueError(
                f"group: a {group.ndim}-D DeviceMesh is ambiguous; pass one dimension "
                f"(e.g. mesh['dp']) or its process group"
            )
        return group.get_group()
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            f"group must be a torch.distributed ProcessGroup or a 1-D DeviceMesh, "
            f"got {type(group).__name__}"
        )
    return group


@contextlib.contextmanager
def use_transport(transport: Transport) -> Iterator[Transport]:
    """Make ``transport`` current in this thread (emulated ranks, tests)."""
    stack = getattr(_override, "stack", None)
    if stack is None:
        stack = _override.stack = []
    stack.append(transport)
    try:
        yield transport
    finally:
        stack.pop()


@contextlib.contextmanager
def record(transport: Transport | None = None) -> Iterator[CommRecord]:
    """Count this rank's traffic (forward and backward alike) while the block runs."""
    transport = transport or current()
    rec = CommRecord()
    with transport._lock:
        transport._recorders.append(rec)
    try:
        yield rec
    finally:
        with transport._lock:
            transport._recorders.remove(rec)
        rec.resolve()
