"""Result records: append-only JSON lines, one per data point (``docs/results-schema.md``).

The one place that writes and reads them. The schema's field names are defined here
once (:data:`RECORD_FIELDS`, :data:`CONFIG_FIELDS` from :class:`profiling.point.PointConfig`,
:data:`ENV_FIELDS`, :data:`TOPOLOGY_FIELDS`, :data:`MEASURED_FIELDS`); a test checks
``docs/results-schema.md`` against them.

* :func:`point_key`: a stable hash of the fields that define a measurement (not its
  timeouts), used to skip finished points when a grid is run again;
* :func:`environment`: where it ran (host, versions, device, cores), without creating a
  CUDA context in the calling process;
* :func:`topology`: where the ranks ran (nodes, ranks per node, node of each rank) and
  which ring hops and communication operations crossed a node boundary;
* :func:`make_record` / :func:`append_record`: one record, written as one line, flushed
  and fsynced before the next point starts, so a crash loses at most the point running;
* :func:`read_records` (one file or several, in the order written) and :func:`latest`
  (the last record of each key: a resumed grid may write a point twice): what the
  simulator's validation, the plots and the report read;
* :func:`resume_state`: what a rerun skips. Finished means a
  record with status ``ok``, ``oom`` or ``error`` (errors are deterministic here: a rerun
  would fail the same way; ``retry_errors`` reruns them), or ``MAX_TIMEOUT_ATTEMPTS``
  timeouts (a timeout may be a busy machine, so it is retried once, the record of the
  retry has ``attempt`` 2).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import socket
import sys
from collections.abc import Iterable
from pathlib import Path

from profiling.point import POINT_FIELDS

SCHEMA_VERSION = 1
STATUSES = ("ok", "oom", "error", "timeout")
MAX_TIMEOUT_ATTEMPTS = 2
_NOT_IN_KEY = ("timeout_s", "pg_timeout_s")
KEY_OMITS_AT_DEFAULT = {"hide_accumulator": None}
"""Config fields added after records were first kept, left out of a point's key while
they hold their default, so that a run directory measured before they existed resumes
without measuring its points again."""

RECORD_FIELDS = (
    "schema",
    "key",
    "status",
    "message",
    "attempt",
    "wall_s",
    "config",
    "env",
    "topology",
    "measured",
)
"""A record's top-level fields, in the order written."""
CONFIG_FIELDS = (*POINT_FIELDS, "backend")
"""``config``: the point's :class:`profiling.point.PointConfig` (``as_dict``)."""
ENV_FIELDS = (
    "host",
    "time_utc",
    "torch",
    "python",
    "backend",
    "nccl",
    "cuda",
    "device_name",
    "cpu_count",
    "gpu_count",
    "launcher",
    "worker_point",
)
"""``env``: where the point ran (:func:`environment`), and which point of its ranks'
life it was (``worker_point``, set by ``profiling.grid.run_point``)."""
TOPOLOGY_FIELDS = (
    "nodes",
    "ranks_per_node",
    "node_of_rank",
    "node_hosts",
    "ring_hops_crossing",
    "ops_crossing",
)
"""``topology``: where the ranks ran (:func:`topology`)."""
MEASURED_FIELDS = (
    "loss",
    "step_time_s",
    "forward_time_s",
    "backward_time_s",
    "comm_exposed_s",
    "bytes_sent",
    "bytes_received",
    "messages",
    "comm_ops",
    "step_samples_s",
    "compute_samples_s",
    "comm_calls_s",
    "profiler_bytes",
    "profiler_agrees",
    "profiler_note",
    "comm_replay",
    "comm_time_s",
    "algbw_GBps",
    "busbw_GBps",
    "overlap_pct",
    "overlap_note",
    "peak_alloc_bytes",
    "peak_reserved_bytes",
    "peak_live_bytes",
    "peak_cuda_allocated_bytes",
    "nvml_used_bytes",
    "rss_bytes",
    "rss_peak_bytes",
    "torch_threads",
    "host_allocator",
    "ranks_agree",
    "rank_values",
    "peer_values",
    "loss_note",
    "timing_note",
)
"""``measured`` (``profiling.measure``): what a measured point may hold; null when the
point did not finish."""


def point_key(config: dict) -> str:
    """16 hex digits of SHA-1 over the canonical JSON of the defining config fields."""
    defining = {
        k: v
        for k, v in sorted(config.items())
        if k not in _NOT_IN_KEY and not (k in KEY_OMITS_AT_DEFAULT and v == KEY_OMITS_AT_DEFAULT[k])
    }
    text = json.dumps(defining, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _gpu_names() -> list[str]:
    """GPU names through NVML (no CUDA context is created in this process)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else name)
        return names
    except Exception:  # no driver / no NVML: no GPU names to report
        return []


def environment(backend: str, device: str, launcher: str = "spawn") -> dict:
    """The ``env`` of a record (:data:`ENV_FIELDS`), read in the parent: no CUDA context."""
    import torch

    nccl = None
    if backend == "nccl" and torch.cuda.is_available():
        version = torch.cuda.nccl.version()
        nccl = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    gpus = _gpu_names() if device == "cuda" else []
    return {
        "host": socket.gethostname(),
        "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "backend": backend,
        "nccl": nccl,
        "cuda": torch.version.cuda,
        "device_name": (gpus[0] if gpus else "cuda") if device == "cuda" else _cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "launcher": launcher,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def topology(placement: list[tuple[int, str]], comm_ops: dict | None) -> dict:
    """Where the ranks ran, from ``(node, host)`` per rank (``launch.node_placement``).

    The ring is the ranks in rank order, ``r -> (r+1) mod W``: ring methods move their
    payloads and accumulators along it (bidirectional rings both ways over the same
    edges), and NCCL and gloo run all-gather and reduce-scatter as rings over the same
    order. ``ring_hops_crossing`` lists the edges ``[r, (r+1) mod W]`` whose ends are on
    different nodes; ``ops_crossing`` the ``comm_ops`` keys that moved bytes while such an
    edge exists (every ring op then crosses: null when nothing was measured).
    """
    node_of_rank = [node for node, _ in placement]
    world, nodes = len(placement), sorted(set(node_of_rank))
    hosts = {node: host for node, host in placement}
    hops = [
        [r, (r + 1) % world]
        for r in range(world)
        if world > 1 and node_of_rank[r] != node_of_rank[(r + 1) % world]
    ]
    ops = None
    if comm_ops is not None:
        ops = sorted(k for k, op in comm_ops.items() if hops and op["bytes_sent"] > 0)
    return {
        "nodes": len(nodes),
        "ranks_per_node": [node_of_rank.count(n) for n in nodes],
        "node_of_rank": node_of_rank,
        "node_hosts": [hosts[n] for n in nodes],
        "ring_hops_crossing": hops,
        "ops_crossing": ops,
    }


def _default_topology(config: dict, measured: dict | None, env: dict) -> dict | None:
    """Spawned ranks all ran on this host; under torchrun without a placement, unknown;
    emulated points have one real process and no real peers (None)."""
    if env.get("launcher") != "spawn" or config.get("emulate"):
        return None
    placement = [(0, env.get("host", socket.gethostname()))] * int(config["world"])
    return topology(placement, measured["comm_ops"] if measured else None)


def make_record(
    config: dict,
    status: str,
    message: str | None,
    measured: dict | None,
    env: dict,
    *,
    attempt: int = 1,
    wall_s: float | None = None,
    topology: dict | None = None,
) -> dict:
    """One record; ``topology`` (see :func:`topology`) defaults to one node for spawned
    ranks and to None (unknown) for a torchrun point recorded without a placement."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    if topology is None:
        topology = _default_topology(config, measured, env)
    values = (SCHEMA_VERSION, point_key(config), status, message, attempt, wall_s)
    values += (config, env, topology, measured)
    return dict(zip(RECORD_FIELDS, values, strict=True))


def append_record(path: str | os.PathLike, record: dict) -> None:
    """Append one line and make it durable (flush + fsync) before returning."""
    line = json.dumps(record, sort_keys=False) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell():  # after a torn last line (a crash mid-write), start a fresh one
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def read_records(
    paths: str | os.PathLike | Iterable[str | os.PathLike], *, must_exist: bool = False
) -> list[dict]:
    """Every complete record of one file or several, in the order written.

    A line that does not parse (a crash mid-write tears the last line; a resumed grid
    then starts a fresh one) is skipped with a note on stderr. A missing file reads as
    no records (a grid not started yet), or raises ``ValueError`` with ``must_exist``.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    records = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                lines = list(f)
        except FileNotFoundError:
            if must_exist:
                raise ValueError(f"cannot read results {path}: no such file") from None
            continue
        except OSError as err:
            raise ValueError(f"cannot read results {path}: {err.strerror}") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"{path}:{number}: skipping an unreadable line", file=sys.stderr)
    return records


def latest(records: list[dict]) -> list[dict]:
    """One record per key (the last written), in first-seen order."""
    by_key: dict[str, dict] = {}
    for record in records:
        key = record.get("key") or repr(sorted(record.get("config", {}).items()))
        by_key[key] = record
    return list(by_key.values())


def resume_state(records: list[dict], *, retry_errors: bool = False):
    """(finished keys, timeouts so far per key) from the records already written."""
    done_statuses = {"ok", "oom"} | (set() if retry_errors else {"error"})
    finished, timeouts = set(), {}
    for record in records:
        key = record.get("key")
        if record.get("status") in done_statuses:
            finished.add(key)
        elif record.get("status") == "timeout":
            timeouts[key] = timeouts.get(key, 0) + 1
    finished |= {k for k, n in timeouts.items() if n >= MAX_TIMEOUT_ATTEMPTS}
    return finished, timeouts
