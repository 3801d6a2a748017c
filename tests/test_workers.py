"""profiling.workers: one pool of W = 2 ranks serves several points and gives the bytes,
loss and memory peaks that fresh processes give; the RSS peak is each point's own; a
point that raises or hangs becomes its fault record, and the next point runs on fresh
ranks; an emulated point reuses the one-process worker of a W = 1 point."""

from __future__ import annotations

import mmap

import pytest

from profiling.grid import run_point
from profiling.launch import ConfigError
from profiling.losses.costs import RANK_CHECK_BYTES
from profiling.measure import _rss_peak_bytes
from profiling.point import PointConfig
from profiling.workers import Runner, WorkerPool, check_world

SMALL = dict(batch=16, dim=32, steps=2, warmup=1, timeout_s=120, pg_timeout_s=60)
B = PointConfig(method="sigmoid-ring", world=2, **SMALL)
C = PointConfig(method="softmax-allgather", world=2, **SMALL)
RAISES = PointConfig(method="sigmoid-ring", world=2, fault="raise@rank1", **SMALL)
HANGS = PointConfig(method="softmax-ring", world=2, fault="hang@rank0", **{**SMALL, "timeout_s": 5})
ONE = PointConfig(method="sigmoid-ring", world=1, **SMALL)
STAND_IN = PointConfig(method="softmax-ring", world=8, emulate="stand-in", **SMALL)
BALLOON_BYTES = 512 * 2**20


def balloon(rank: int, world: int, nbytes: int) -> int:
    """Touch ``nbytes`` of fresh pages, unmap them, return the resident high-water mark."""
    block = mmap.mmap(-1, nbytes)
    for offset in range(0, nbytes, mmap.PAGESIZE):
        block[offset] = 1
    block.close()
    return _rss_peak_bytes()


@pytest.fixture(scope="module")
def runs():
    with Runner() as workers:
        high = workers.run(balloon, (BALLOON_BYTES,), world=2, pg_timeout_s=60, timeout_s=120)
        pooled = [run_point(c, workers=workers) for c in (B, C, RAISES, B, HANGS, C, ONE, STAND_IN)]
    fresh = [run_point(c) for c in (B, C, STAND_IN)]
    return high, pooled, fresh


def same_measurement(pooled: dict, fresh: dict, world: int) -> None:
    """Bytes, loss and the profiler's count equal; peaks equal up to the rank check's
    buffers, which gloo may still hold a moment after the check (fresh processes differ
    by as much between runs)."""
    a, b = pooled["measured"], fresh["measured"]
    for name in ("bytes_sent", "bytes_received", "messages", "loss", "profiler_bytes"):
        assert a[name] == b[name], name
    assert {k: v["bytes_sent"] for k, v in a["comm_ops"].items()} == {
        k: v["bytes_sent"] for k, v in b["comm_ops"].items()
    }
    for name in ("peak_alloc_bytes", "peak_live_bytes"):
        assert abs(a[name] - b[name]) <= world * RANK_CHECK_BYTES, (name, a[name], b[name])
    assert a["peak_alloc_bytes"] > 0


def test_refusals():
    with pytest.raises(ConfigError, match="world size must be at least 1"):
        check_world(0, "gloo")
    pool = WorkerPool(1)
    pool.close()
    with pytest.raises(RuntimeError, match="worker pool is closed"):
        pool.run(balloon, (4096,))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_pool_serves_several_points_like_fresh_processes(runs):
    high, pooled, fresh = runs
    assert high.status == "ok" and high.served == 1
    b, c = pooled[0], pooled[1]
    assert [r["env"]["worker_point"] for r in (b, c)] == [2, 3]
    assert [r["env"]["worker_point"] for r in fresh] == [1, 1, 1]
    same_measurement(b, fresh[0], 2)
    same_measurement(c, fresh[1], 2)
    # the balloon's pages are gone, and so is its high-water mark: each point's own peak
    for record in (b, c):
        assert 0 < record["measured"]["rss_peak_bytes"] < high.values[0] - BALLOON_BYTES // 2
    # an emulated point on the worker a real W = 1 point started
    one, stand_in = pooled[6], pooled[7]
    assert one["status"] == stand_in["status"] == "ok"
    assert stand_in["env"]["worker_point"] == 2
    assert stand_in["measured"]["peer_values"] == "stand-in"
    same_measurement(stand_in, fresh[2], 1)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_fault_is_recorded_and_the_next_point_runs_on_fresh_ranks(runs):
    _, pooled, fresh = runs
    statuses = [r["status"] for r in pooled]
    assert statuses == ["ok", "ok", "error", "ok", "timeout", "ok", "ok", "ok"]
    assert pooled[2]["message"] == "rank 1: RuntimeError: injected fault: rank 1 raised"
    assert "no result after 5 s" in pooled[4]["message"]
    assert pooled[2]["measured"] is None and pooled[4]["measured"] is None
    # after each fault the pool was ended: the next point started its own ranks
    assert [r["env"]["worker_point"] for r in pooled[2:6]] == [4, 1, 2, 1]
    same_measurement(pooled[3], fresh[0], 2)
    same_measurement(pooled[5], fresh[1], 2)


def test_compare_table_lines_up_runs_and_refuses_different_bytes():
    from experiments.runner_compare import RUNS, table

    def record(run: int, sent: int) -> dict:
        measured = {
            "bytes_sent": sent, "bytes_received": sent, "messages": 2, "loss": 1.5,
            "peak_alloc_bytes": 1000 + run, "peak_live_bytes": 900, "rss_peak_bytes": 2**28,
            "step_time_s": {"median": 0.001 * (run + 1)},
        }  # fmt: skip
        config = {"method": "sigmoid-ring", "world": 2}
        return {"config": config, "measured": measured, "env": {"worker_point": 2}, "wall_s": 1.0}

    runs = {name: [record(i, 64)] for i, (name, _) in enumerate(RUNS)}
    row = table(runs).splitlines()[-1]
    assert row.startswith("| sigmoid-ring | 2 | 2 | 64 | 1000 / 1001 / 1002 / 1003 | 900 | True")
    assert "1.00 / 2.00 / 3.00 / 4.00" in row
    runs["reused2"] = [record(3, 65)]
    with pytest.raises(ValueError, match="bytes_sent differs between runs"):
        table(runs)
