"""Traffic of one data point: a second byte count, the communication time, bandwidth, overlap.

* **Byte cross-check.** One untimed step runs under ``torch.profiler`` and the backend's
  recorded collectives are turned into bytes per rank with the convention of
  ``profiling.comm`` (all-gather / reduce-scatter ``(W-1)·n``, all-reduce
  ``2(W-1)/W·n``, p2p the tensor). NCCL records ``record_param_comms`` events ("In msg
  nelems", "Out msg nelems", dtype); gloo records ``gloo:<op>`` events with input shapes
  and types. The result (``profiler_bytes``, per kind) is compared with ``comm_ops``;
  ``profiler_agrees`` is False with a ``profiler_note`` when the totals differ (per kind
  they may: on gloo ``profiling.comm`` runs reduce-scatter as send/recv, because gloo's
  own reduce-scatter is an all-reduce moving twice the bytes).
* **Communication time.** The operations of one step, logged by
  :class:`RecordingTransport` with their shapes, peers and order, are replayed alone,
  without compute, each waited for (device synchronised) before the next: ``comm_time_s``
  is the maximum over ranks of the replayed total, median of 3 replays; each op key of
  ``comm_ops`` gets its ``replay_s``.
* **Bandwidth, nccl-tests convention.** Per key, ``algbw = S / t`` with ``S`` the total
  gathered size (all-gather), the input size (reduce-scatter), the bytes sent (p2p), and
  ``busbw = algbw · (W-1)/W`` for the collectives, ``· 1`` for p2p; ``busbw·t`` is then
  exactly ``bytes_sent``. Over mixed ops the point's ``algbw_GBps`` / ``busbw_GBps`` are
  ``Σ S / comm_time_s`` and ``Σ bytes_sent / comm_time_s`` (GB = 1e9 bytes).
* **Overlap.** ``overlap_pct = 100·(1 - exposed / comm_time)`` (medians; clipped to
  [0, 100]) where exposed is the time the computation waited in communication
  (``profiling.comm``: host time blocked on gloo, the compute stream's stall between two
  CUDA events on NCCL). Null with ``overlap_note`` when it is not defined: with no
  traffic or no replay.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from profiling import comm

_ELEM_BYTES = {
    "float": 4, "float32": 4, "double": 8, "float64": 8, "c10::bfloat16": 2, "bfloat16": 2,
    "c10::half": 2, "half": 2, "float16": 2, "long int": 8, "long": 8, "int64": 8, "int": 4,
    "int32": 4, "unsigned char": 1, "byte": 1, "uint8": 1,
}  # fmt: skip
REPLAY_REPEATS = 3


class RecordingTransport(comm.TorchDistributedTransport):
    """The real transport; while ``logging`` is on it also logs each operation for replay."""

    def __init__(self, group=None) -> None:
        super().__init__(group)
        self.logging = False
        self.log: list[tuple] = []

    def all_gather(self, tensor, label):
        if self.logging:
            self.log.append(("all_gather", f"all_gather:{label}", tensor.shape, tensor.dtype))
        return super().all_gather(tensor, label)

    def reduce_scatter(self, tensor, label):
        if self.logging:
            key = f"reduce_scatter:{label}"
            self.log.append(("reduce_scatter", key, tensor.shape, tensor.dtype))
        return super().reduce_scatter(tensor, label)

    def start_p2p(self, sends, recvs, label):
        if self.logging:
            sent = [(t.shape, t.dtype, peer) for t, peer in sends]
            received = [(b.shape, b.dtype, peer) for b, peer in recvs]
            self.log.append(("p2p", f"p2p:{label}", sent, received))
        return super().start_p2p(sends, recvs, label)


def not_measured(reason: str) -> dict:
    return {
        "profiler_bytes": None,
        "profiler_agrees": None,
        "profiler_note": reason,
        "comm_time_s": None,
        "comm_replay": None,
        "algbw_GBps": None,
        "busbw_GBps": None,
    }


def nvml_used_bytes(device) -> int | None:
    """Device memory used as NVML reports it (all processes, CUDA context, NCCL buffers)."""
    try:
        return int(torch.cuda.device_memory_used(device))
    except Exception:  # no NVML (driver, library), reported as absent rather than wrong
        return None


# -- torch.profiler cross-check -------------------------------------------------------------


def trace_events(prof) -> list[dict]:
    """A finished torch.profiler run's chrome-trace events."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            return json.load(f).get("traceEvents", [])
    finally:
        os.unlink(path)


def _bytes_of(op: str, in_elems: int, out_elems: int, elem: int, world: int):
    """(kind, sent, received) in profiling.comm's convention; None for non-traffic ops."""
    op = op.lower()
    if "barrier" in op:
        return None
    if "all_gather" in op or "allgather" in op:
        return "all_gather", (world - 1) * in_elems * elem, (world - 1) * in_elems * elem
    if "reduce_scatter" in op:
        n = (world - 1) * (in_elems // world) * elem
        return "reduce_scatter", n, n
    if "all_reduce" in op or "allreduce" in op:
        n = round(2 * (world - 1) / world * in_elems * elem)
        return "all_reduce", n, n
    if "send" in op:
        return "p2p", in_elems * elem, 0
    if "recv" in op:
        return "p2p", 0, max(in_elems, out_elems) * elem
    return "other:" + op, None, None


def profiler_bytes(events: list[dict], world: int) -> dict[str, dict]:
    """Bytes per kind from a chrome trace's collective events (see the module docstring)."""
    nccl = [e for e in events if e.get("name") == "record_param_comms"]
    rows = []
    for e in nccl:
        a = e.get("args", {})
        elem = _ELEM_BYTES.get(str(a.get("dtype", "")).lower())
        if elem is None or "Collective name" not in a:
            continue
        size = int(a.get("Group size", world) or world)
        rows.append(
            _bytes_of(a["Collective name"], a["In msg nelems"], a["Out msg nelems"], elem, size)
        )
    if not nccl:
        for e in events:
            name = e.get("name", "")
            if not name.startswith("gloo:"):
                continue
            a = e.get("args", {})
            dims, types = a.get("Input Dims") or [[]], a.get("Input type") or [""]
            elem = _ELEM_BYTES.get(str(types[0]).lower())
            if elem is None:
                continue
            n = math.prod(dims[0])
            rows.append(_bytes_of(name[5:], n, n, elem, world))
    out: dict[str, dict] = {}
    for row in rows:
        if row is None:
            continue
        kind, sent, received = row
        entry = out.setdefault(kind, {"calls": 0, "bytes_sent": 0, "bytes_received": 0})
        entry["calls"] += 1
        if sent is None:
            entry["bytes_sent"] = entry["bytes_received"] = None
        elif entry["bytes_sent"] is not None:
            entry["bytes_sent"] += sent
            entry["bytes_received"] += received
    return out


def comm_bytes_by_kind(ops: dict[str, dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for key, stats in ops.items():
        entry = out.setdefault(key.split(":")[0], {"bytes_sent": 0, "bytes_received": 0})
        entry["bytes_sent"] += stats["bytes_sent"]
        entry["bytes_received"] += stats["bytes_received"]
    return out


def _compare(ours: dict, theirs: dict) -> str | None:
    """Totals must agree; kinds may differ where the backend builds one op from others
    (on gloo ``profiling.comm`` runs reduce-scatter as a ring of send/recv)."""
    total = {
        side: tuple(sum(v[k] or 0 for v in d.values()) for k in ("bytes_sent", "bytes_received"))
        for side, d in (("ours", ours), ("theirs", theirs))
    }
    if total["ours"] == total["theirs"]:
        return None
    kinds = sorted(set(ours) | set(theirs))
    diffs = [f"total: comm {total['ours']} vs profiler {total['theirs']} (sent, received)"]
    for kind in kinds:
        a = ours.get(kind, {"bytes_sent": 0, "bytes_received": 0})
        b = theirs.get(kind, {"bytes_sent": 0, "bytes_received": 0})
        pair_a = (a["bytes_sent"], a["bytes_received"])
        pair_b = (b["bytes_sent"], b["bytes_received"])
        if pair_a != pair_b:
            diffs.append(f"{kind}: comm {pair_a} vs profiler {pair_b} (sent, received)")
    return "; ".join(diffs) or None


# -- replay ---------------------------------------------------------------------------------


def _prepare(log, device):
    def rand(shape, dtype):
        if dtype.is_floating_point:
            return torch.randn(shape, device=device).to(dtype)
        return torch.ones(shape, dtype=dtype, device=device)

    ready = []
    for entry in log:
        if entry[0] == "p2p":
            sends = [(rand(s, dt), peer) for s, dt, peer in entry[2]]
            recvs = [(torch.empty(s, dtype=dt, device=device), peer) for s, dt, peer in entry[3]]
            ready.append(("p2p", entry[1], (sends, recvs)))
        else:
            ready.append((entry[0], entry[1], rand(entry[2], entry[3])))
    return ready


def replay(transport: RecordingTransport, group, device) -> tuple[float, dict[str, float]]:
    """Replay the logged step's traffic alone; (max over ranks of total, per-key seconds)."""
    ready = _prepare(transport.log, device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    totals, per_key = [], {}
    for _ in range(REPLAY_REPEATS):
        times: dict[str, float] = {}
        group.barrier()
        for kind, key, payload in ready:
            sync()
            start = time.perf_counter()
            if kind == "all_gather":
                transport._all_gather(payload)
            elif kind == "reduce_scatter":
                transport._reduce_scatter(payload)
            else:
                for work in transport._post_p2p(*payload):
                    work.wait()
            sync()
            times[key] = times.get(key, 0.0) + time.perf_counter() - start
        totals.append(sum(times.values()))
        for key, seconds in times.items():
            per_key.setdefault(key, []).append(seconds)
    keys = sorted(per_key)
    reduced = group.reduce(
        [statistics.median(totals)] + [statistics.median(per_key[k]) for k in keys], "max"
    )
    return reduced[0], dict(zip(keys, reduced[1:], strict=True))


@contextlib.contextmanager
def _stderr_silenced():
    """Kineto writes a "USDT ... profiler_start/stop" line to stderr (fd 2) at every start
    and stop, per rank; a grid would print hundreds. Silence fd 2 for those two calls."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cross_check(step_fn, transport: RecordingTransport, rec: comm.CommRecord, group, device):
    """Profiled step (byte cross-check) and replayed traffic (time, bandwidth)."""
    transport.log = []
    transport.logging = True
    prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
    try:
        with comm.record(transport) as profiled:
            with _stderr_silenced():
                prof.start()
            try:
                step_fn()  # outside the silenced stretch: its errors still show
            finally:
                with _stderr_silenced():
                    prof.stop()
    finally:
        transport.logging = False
    theirs = profiler_bytes(trace_events(prof), transport.world_size)
    if theirs:
        note = _compare(comm_bytes_by_kind(profiled.as_dict()), theirs)
        result = {"profiler_bytes": theirs, "profiler_agrees": note is None, "profiler_note": note}
    else:
        result = {
            "profiler_bytes": None,
            "profiler_agrees": None,
            "profiler_note": "the backend recorded no collectives in torch.profiler",
        }
    comm_time_s, per_key = replay(transport, group, device)
    world = transport.world_size
    algbw_bytes = busbw_bytes = 0
    for key, stats in rec.as_dict().items():
        sent = stats["bytes_sent"]
        size = sent if key.startswith("p2p") else sent * world // max(world - 1, 1)
        algbw_bytes, busbw_bytes = algbw_bytes + size, busbw_bytes + sent
        seconds = per_key.get(key)
        moved = bool(seconds) and sent > 0  # W=1: the op runs but moves nothing
        result.setdefault("comm_replay", {})[key] = {
            "replay_s": seconds,
            "algbw_GBps": size / seconds / 1e9 if moved else None,
            "busbw_GBps": sent / seconds / 1e9 if moved else None,
        }
    result.setdefault("comm_replay", {})
    result["comm_time_s"] = comm_time_s
    moved = comm_time_s > 0 and busbw_bytes > 0
    result["algbw_GBps"] = algbw_bytes / comm_time_s / 1e9 if moved else None
    result["busbw_GBps"] = busbw_bytes / comm_time_s / 1e9 if moved else None
    return result


def overlap(exposed: dict | None, cross: dict) -> dict:
    """``overlap_pct`` and, when it is null, ``overlap_note`` saying why."""
    comm_time_s = cross.get("comm_time_s")
    note = None
    if comm_time_s is None:
        note = cross.get("profiler_note") or "communication time not measured"
    elif comm_time_s <= 0 or exposed is None:
        note = "no communication"
    if note:
        return {"overlap_pct": None, "overlap_note": note}
    hidden = 1.0 - exposed["median"] / comm_time_s
    return {"overlap_pct": 100.0 * min(1.0, max(0.0, hidden)), "overlap_note": None}
