"""profiling.emulate: at W in {2, 3, 4}, exact emulation (peer threads) equals a real gloo
run in loss, rank-0 gradients, bytes and live-tensor peak; stand-in emulation equals it
in bytes and live peak; at large W the stand-in's bytes match the method's formula.
The points are sized so that one ``b×d`` buffer (5–20 KiB) exceeds the peak slack gloo
needs (4 KiB): a missing or extra buffer fails the comparison. Exact emulation pairs
messages by tag, as gloo does, and refuses a matched pair of different shape or dtype."""

from __future__ import annotations

import pytest
import torch

from profiling import comm
from profiling.emulate import PeerFailed, StandInTransport, emulate_point, run_exact
from profiling.launch import launch
from profiling.losses import METHODS, Shape, get_method
from profiling.measure import PEAK_SLACK_BYTES, PointConfig, single_step

WORLDS = (2, 3, 4)
CPU = torch.device("cpu")


def cases(world: int) -> list[PointConfig]:
    common = dict(world=world, batch=64, dim=40, seed=11)  # b×d: 10 KiB in fp32, 5 in bf16
    out = [PointConfig(method=m, **common) for m in METHODS]
    out.append(PointConfig(method="sigmoid-ring", tile=4, overlap=False, **common))
    out.append(PointConfig(method="softmax-ring", dtype="bf16", **common))
    out.append(PointConfig(method="sigmoid-allgather", dtype="fp64", **common))
    return out


def probe_all(rank, world):
    return [single_step(c, rank, comm.current(), CPU) for c in cases(world)]


@pytest.fixture(scope="module")
def real_runs():
    runs = {}
    for world in WORLDS:
        outcome = launch(probe_all, world=world, timeout_s=300)
        assert outcome.status == "ok", outcome.message
        runs[world] = outcome.values[0]
    return runs


def traffic(ops):
    return {k: {n: v for n, v in row.items() if n != "exposed_s"} for k, row in ops.items()}


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("world", WORLDS)
def test_exact_and_stand_in_match_real_ranks(real_runs, world):
    for config, real in zip(cases(world), real_runs[world], strict=True):
        label = f"{config.method} {config.dtype} W={world}"
        exact = run_exact(world, lambda rank, tp, group, c=config: single_step(c, rank, tp, CPU))[0]
        torch.testing.assert_close(exact["loss"], real["loss"], rtol=1e-6, atol=0, msg=label)
        for mine, theirs in zip(exact["grads"], real["grads"], strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-7, msg=label)
        assert traffic(exact["comm_ops"]) == traffic(real["comm_ops"]), label
        # gloo may hold a finished collective's small buffers a moment longer in a real
        # group (profiling.measure.PEAK_SLACK_BYTES); the stand-in has no gloo.
        assert abs(exact["peak_live_bytes"] - real["peak_live_bytes"]) <= PEAK_SLACK_BYTES, label

        stand_in = single_step(config, 0, StandInTransport(world, CPU, seed=5), CPU)
        assert traffic(stand_in["comm_ops"]) == traffic(real["comm_ops"]), label
        assert abs(stand_in["peak_live_bytes"] - real["peak_live_bytes"]) <= PEAK_SLACK_BYTES, label


def test_exact_reports_the_failing_rank_not_its_peers():
    def fn(rank, transport, group):
        if rank == 2:
            raise ValueError("rank 2 broke")
        group.barrier()
        return rank

    with pytest.raises(ValueError, match="rank 2 broke"):
        run_exact(4, fn, timeout_s=30)
    with pytest.raises(PeerFailed):  # a peer that never answers is bounded by the timeout
        run_exact(2, lambda rank, tp, group: group.barrier() if rank == 0 else None, timeout_s=1)


@pytest.mark.parametrize("method", ["sigmoid-ring", "softmax-allgather"])
def test_stand_in_point_at_large_world(method):
    config = PointConfig(
        method=method, world=256, batch=8, dim=16, steps=2, warmup=1, emulate="stand-in"
    )
    measured = emulate_point(config, CPU)
    shape = Shape.of(256, 8, 16, "fp32")
    schedule = get_method(method).schedule(shape)
    assert measured["bytes_sent"] == int(schedule.bytes_sent())
    assert measured["bytes_received"] == int(schedule.bytes_received())
    assert measured["peer_values"] == "stand-in"
    assert measured["step_time_s"]["median"] > 0
    assert measured["profiler_bytes"] is None and measured["overlap_pct"] is None


def test_exact_pairs_by_tag_and_refuses_mismatched_buffers():
    def tagged(rank, transport, group):
        if rank == 0:
            sends = [torch.full((3,), 1.0), torch.full((3,), 2.0)]
            first = transport.start_p2p([(sends[0], 1)], [], "ring.payload")
            second = transport.start_p2p([(sends[1], 1)], [], "ring.acc")
            first.wait(), second.wait()
            return None
        # posted in the other order: FIFO per pair would swap them, tags do not
        acc = transport.start_p2p([], [(torch.empty(3), 0)], "ring.acc").wait()[0]
        payload = transport.start_p2p([], [(torch.empty(3), 0)], "ring.payload").wait()[0]
        return float(payload[0]), float(acc[0])

    assert run_exact(2, tagged, timeout_s=30)[1] == (1.0, 2.0)

    def mismatched(rank, transport, group):
        if rank == 0:
            return transport.start_p2p([(torch.ones(4, 8), 1)], [], "ring.payload").wait()
        return transport.start_p2p([], [(torch.empty(4, 6), 0)], "ring.payload").wait()

    with pytest.raises(
        ValueError, match=r"send \(4, 8\) torch.float32 matched a receive buffer \(4, 6\)"
    ):
        run_exact(2, mismatched, timeout_s=30)
