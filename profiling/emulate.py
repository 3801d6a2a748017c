"""Emulated ranks: one process plays rank 0 of a W-rank world.

Every loss talks to its peers through a ``profiling.comm.Transport``; installing another
transport with ``comm.use_transport`` replaces the peers. The base class still counts
every byte as if it were sent, so traffic is exactly a real run's. Two modes:

* ``exact`` (:func:`run_exact`): the ``W-1`` peers run as threads of the same process,
  each with its own :class:`ThreadTransport` over in-memory mailboxes (:class:`ThreadHub`),
  each computing its real share. Loss, gradients, bytes and live-tensor peak of rank 0
  equal a real multi-process run's (``tests/test_emulate.py``); the live-tensor tracker
  is thread-local, so it sees rank 0 only. Times are not representative (the threads
  share the cores) and process-wide views (RSS, CUDA allocator) include every peer, so
  an exact record leaves them null. CPU only: on CUDA, autograd runs every thread's
  backward in one device thread, where ranks waiting on each other would deadlock.
  Small W only (``measure.EXACT_MAX_WORLD``).
* ``stand-in`` (:class:`StandInTransport`): rank 0 alone; whatever peers would send is
  filled with deterministic stand-in data of the right shape, dtype and device:
  all-gathered rows and received p2p buffers are copied from a cached block of seeded,
  L2-normalised random rows (integer tensors and vectors, i.e. the cross-rank check and
  the upstream scalars, repeat rank 0's own: peers agree with rank 0); a reduce-scatter returns rank 0's own contribution to its slice. Bytes, the
  live-tensor peak and the compute are a real rank's at any W (64...4096 on one device);
  the loss value is not, and the record says ``peer_values: "stand-in"``. The stand-in
  copies run inside the transport and are charged as exposed communication time.
"""

from __future__ import annotations

import threading
from collections import deque

import torch
from torch.utils._python_dispatch import _disable_current_modes

from profiling import comm, measure

PEER_TIMEOUT_S = 300.0


class PeerFailed(RuntimeError):
    """Another emulated rank failed; this one stops instead of waiting forever."""


class _Done:
    """A completed or pending exchange; ``wait()`` mirrors ``torch.distributed.Work``."""

    def __init__(self, hub: ThreadHub, event: threading.Event | None = None, tensor=None):
        # Like a backend's work object, hold the tensor for as long as the caller holds us.
        self._hub, self._event, self._tensor = hub, event, tensor

    def wait(self) -> bool:
        if self._event is not None and not self._event.wait(self._hub.timeout_s):
            self._hub.abort()
            raise PeerFailed(f"p2p not matched within {self._hub.timeout_s:g} s")
        self._hub.check()
        return True


class ThreadHub:
    """Shared state of ``W`` thread ranks: a barrier, collective slots, p2p mailboxes."""

    def __init__(self, world: int, timeout_s: float = PEER_TIMEOUT_S):
        self.world, self.timeout_s = world, timeout_s
        self._barrier = threading.Barrier(world, timeout=timeout_s)
        self._slots: list = [None] * world
        self._lock = threading.Lock()
        self._sends: dict[tuple[int, int], deque] = {}
        self._recvs: dict[tuple[int, int], deque] = {}
        self.failed = False

    def abort(self) -> None:
        self.failed = True
        self._barrier.abort()

    def check(self) -> None:
        if self.failed:
            raise PeerFailed("another emulated rank failed")

    def barrier(self) -> None:
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:
            self.failed = True
            raise PeerFailed("another emulated rank failed or timed out") from None

    def exchange(self, rank: int, item, consume):
        """Publish ``item``; call ``consume(all items)`` while every rank's is published."""
        self._slots[rank] = item
        self.barrier()
        try:
            return consume(list(self._slots))
        finally:
            self.barrier()

    def post(self, src: int, dst: int, tag: int, *, send=None, recv=None) -> _Done:
        """Match a send with a receive of the same tag (FIFO per pair and tag), as gloo
        does; whoever posts second copies. A matched pair that differs in shape or dtype
        raises (a real backend would fail or corrupt; ``copy_`` would cast or broadcast)."""
        key = (src, dst, tag)
        with self._lock:
            waiting = self._recvs if send is not None else self._sends
            other = waiting.setdefault(key, deque())
            if other:
                peer_item, event = other.popleft()
                tensor, buffer = (send, peer_item) if send is not None else (peer_item, recv)
                if tensor.shape != buffer.shape or tensor.dtype != buffer.dtype:
                    self.abort()
                    event.set()
                    raise ValueError(
                        f"p2p {src}->{dst} tag {tag}: send {tuple(tensor.shape)} {tensor.dtype} "
                        f"matched a receive buffer {tuple(buffer.shape)} {buffer.dtype}"
                    )
                with torch.no_grad(), _disable_current_modes():
                    buffer.copy_(tensor.detach())
                event.set()
                return _Done(self, tensor=send if send is not None else recv)
            event = threading.Event()
            mine = self._sends if send is not None else self._recvs
            mine.setdefault(key, deque()).append((send if send is not None else recv, event))
            return _Done(self, event, tensor=send if send is not None else recv)


class ThreadTransport(comm.Transport):
    """One thread rank's transport over a :class:`ThreadHub`."""

    backend = "threads"

    def __init__(self, hub: ThreadHub, rank: int):
        super().__init__()
        self.hub, self.rank, self.world_size = hub, rank, hub.world

    def _all_gather(self, tensor):
        out = tensor.new_empty((self.world_size * tensor.shape[0], *tensor.shape[1:]))

        def fill(parts):
            with torch.no_grad(), _disable_current_modes():
                for part, piece in zip(parts, out.split(tensor.shape[0]), strict=True):
                    piece.copy_(part)

        self.hub.exchange(self.rank, tensor.detach(), fill)
        return out

    def _reduce_scatter(self, tensor):
        n = tensor.shape[0] // self.world_size
        out = tensor.new_empty((n, *tensor.shape[1:]))
        rows = slice(self.rank * n, (self.rank + 1) * n)

        def reduce(parts):
            with torch.no_grad(), _disable_current_modes():
                out.copy_(parts[0][rows])
                for part in parts[1:]:
                    out.add_(part[rows])

        self.hub.exchange(self.rank, tensor.detach(), reduce)
        return out

    def _post_p2p(self, sends, recvs, tag: int = 0):
        done = [self.hub.post(self.rank, peer, tag, send=t) for t, peer in sends]
        return done + [self.hub.post(peer, self.rank, tag, recv=b) for b, peer in recvs]


class ThreadGroup:
    """``measure``'s group operations over a :class:`ThreadHub`."""

    def __init__(self, hub: ThreadHub, rank: int):
        self.hub, self.rank, self.world = hub, rank, hub.world

    def barrier(self) -> None:
        self.hub.barrier()

    def reduce(self, values, op="max"):
        columns = self.hub.exchange(
            self.rank, list(values), lambda rows: list(zip(*rows, strict=True))
        )
        return [max(c) if op == "max" else sum(c) for c in columns]

    def gather(self, values):
        return self.hub.exchange(self.rank, list(values), lambda rows: [list(r) for r in rows])


def run_exact(world: int, fn, timeout_s: float = PEER_TIMEOUT_S) -> list:
    """Run ``fn(rank, transport, group)`` on ``world`` thread ranks; results in rank order.

    The first failure aborts the hub (peers raise :class:`PeerFailed`) and is re-raised.
    """
    hub = ThreadHub(world, timeout_s)
    results: list = [None] * world
    errors: list[tuple[int, BaseException]] = []

    def body(rank: int) -> None:
        transport = ThreadTransport(hub, rank)
        try:
            with comm.use_transport(transport):
                results[rank] = fn(rank, transport, ThreadGroup(hub, rank))
        except BaseException as exc:
            errors.append((rank, exc))
            hub.abort()

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(1, world)]
    for thread in threads:
        thread.start()
    body(0)  # rank 0 in the calling thread: its tracker, its profiler, its timings
    for thread in threads:
        thread.join(timeout_s)
    root = [e for e in errors if not isinstance(e[1], PeerFailed)] or errors
    if root:
        raise root[0][1]
    return results


class StandInTransport(comm.Transport):
    """Rank 0 of a ``world``-rank world whose peers' messages are stand-in data."""

    backend = "stand-in"

    def __init__(self, world: int, device, seed: int = 0):
        super().__init__()
        self.rank, self.world_size, self.device, self.seed = 0, world, device, seed
        self._blocks: dict[tuple, torch.Tensor] = {}

    def _block(self, shape, dtype) -> torch.Tensor:
        """The cached stand-in tensor of one shape (created outside any tracker)."""
        key = (tuple(shape), dtype)
        if key not in self._blocks:
            with torch.no_grad(), _disable_current_modes():
                gen = torch.Generator().manual_seed(self.seed + 7919 * len(self._blocks))
                block = torch.randn(shape, generator=gen, dtype=torch.float64)
                if block.dim() == 2:
                    block = block / block.norm(dim=1, keepdim=True)
                self._blocks[key] = block.to(device=self.device, dtype=dtype)
        return self._blocks[key]

    def _all_gather(self, tensor):
        out = tensor.new_empty((self.world_size * tensor.shape[0], *tensor.shape[1:]))
        with torch.no_grad(), _disable_current_modes():
            pieces = out.split(tensor.shape[0])
            pieces[0].copy_(tensor)
            peer = tensor if not tensor.is_floating_point() or tensor.dim() < 2 else None
            for piece in pieces[1:]:
                piece.copy_(peer if peer is not None else self._block(tensor.shape, tensor.dtype))
        return out

    def _reduce_scatter(self, tensor):
        n = tensor.shape[0] // self.world_size
        out = tensor.new_empty((n, *tensor.shape[1:]))
        with torch.no_grad(), _disable_current_modes():
            out.copy_(tensor[:n])
        return out

    def _post_p2p(self, sends, recvs, tag: int = 0):
        return [_StandInReceive(self, [t for t, _ in sends], [b for b, _ in recvs])]


class _StandInReceive:
    """Fills the receive buffers with stand-in data when waited for (charged as exposed).

    Like a real backend's work object, it holds the sent tensors and the receive buffers
    for as long as the caller holds it, so tensor lifetimes (the live peak) match.
    """

    def __init__(self, transport: StandInTransport, sends: list, buffers: list):
        self._transport, self._sends, self._buffers = transport, sends, buffers

    def wait(self) -> bool:
        with torch.no_grad(), _disable_current_modes():
            for buffer in self._buffers:
                buffer.copy_(self._transport._block(buffer.shape, buffer.dtype))
        return True


_EXACT_NULLS = (
    "step_time_s", "forward_time_s", "backward_time_s", "comm_exposed_s", "rss_bytes",
    "rss_peak_bytes", "peak_cuda_allocated_bytes", "nvml_used_bytes", "overlap_pct",
    "step_samples_s", "compute_samples_s", "comm_calls_s",
)  # fmt: skip


def emulate_point(config: measure.PointConfig, device) -> dict:
    """Measure rank 0 of an emulated ``config.world``-rank run; the ``measured`` block."""
    if config.emulate == "stand-in":
        transport = StandInTransport(config.world, device, seed=config.seed)
        out = measure.measure_point(config, measure.SoloGroup(), transport, device, real_comm=False)
        out["peer_values"] = "stand-in"
        out["loss_note"] = "peers' messages are stand-in data: the loss is not a real loss"
        return out

    if config.emulate != "exact":
        raise ValueError(f"emulate must be 'exact' or 'stand-in', got {config.emulate!r}")

    def one_rank(rank, transport, group):
        return measure.measure_point(config, group, transport, device, real_comm=False)

    out = run_exact(config.world, one_rank, timeout_s=config.pg_timeout_s)[0]
    for name in _EXACT_NULLS:
        out[name] = None
    out["peer_values"] = "exact"
    out["timing_note"] = "exact emulation runs every rank as a thread: times, RSS not rank 0's"
    return out
