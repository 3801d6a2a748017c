"""profiling.measure and traffic: one W=3 gloo process group measures several points (two
inside bf16 autocast); bytes equal the methods' formulas and torch.profiler's count, the
allocator peak the memory model's within 1%, times are ordered, the live peak equals a
one-step probe's, ranks agree; the NCCL profiler parse and the overlap rules."""

from __future__ import annotations

import pytest
import torch

from profiling import comm, traffic
from profiling.launch import launch
from profiling.losses import Shape, get_method
from profiling.measure import (
    DistGroup,
    PointConfig,
    measure_point,
    single_step,
    spread,
)

CPU = torch.device("cpu")
CASES = [
    PointConfig(method="sigmoid-ring", world=3, batch=16, dim=32, steps=3, warmup=1),
    PointConfig(method="softmax-ring", world=3, batch=16, dim=32, steps=3, warmup=1, tile=8),
    PointConfig(method="sigmoid-allgather", world=3, batch=16, dim=32, steps=3, warmup=1),
    # inside torch.autocast, as open_clip's --precision amp runs a loss
    PointConfig(method="sigmoid-ring", world=3, batch=32, dim=64, steps=2, warmup=1,
                autocast="bf16"),
    PointConfig(method="softmax-allgather", world=3, batch=32, dim=64, steps=2, warmup=1,
                autocast="bf16"),
]  # fmt: skip


def measure_cases(rank, world):
    out = []
    for config in CASES:
        transport = traffic.RecordingTransport()
        measured = measure_point(config, DistGroup(CPU), transport, CPU)
        probe = single_step(config, rank, comm.current(), CPU)
        out.append((measured, probe["peak_live_bytes"]))
    return out


@pytest.fixture(scope="module")
def measured():
    outcome = launch(measure_cases, world=3, timeout_s=300)
    assert outcome.status == "ok", outcome.message
    return outcome.values


@pytest.mark.slow
@pytest.mark.multiprocess
def test_measured_points(measured):
    for index, config in enumerate(CASES):
        rank0, probe_peak = measured[0][index]
        shape = Shape.of(3, config.batch, config.dim, "fp32", tile=config.tile,
                         autocast=config.autocast)  # fmt: skip
        spec = get_method(config.method)
        schedule = spec.schedule(shape)
        assert rank0["bytes_sent"] == int(schedule.bytes_sent()), config.method
        assert rank0["bytes_received"] == int(schedule.bytes_received()), config.method
        model_peak = sum(int(v) for v in spec.peak_terms(shape).values())
        assert abs(model_peak - rank0["peak_alloc_bytes"]) <= 0.01 * rank0["peak_alloc_bytes"]
        assert rank0["ranks_agree"] and rank0["rank_values"] is None
        assert rank0["peak_live_bytes"] == probe_peak
        for name in ("step_time_s", "forward_time_s", "backward_time_s"):
            s = rank0[name]
            assert 0 < s["min"] <= s["p10"] <= s["median"] <= s["p90"] <= s["max"], name
        assert rank0["step_time_s"]["max"] >= rank0["forward_time_s"]["min"]
        assert rank0["comm_time_s"] > 0
        expected_busbw = rank0["bytes_sent"] / rank0["comm_time_s"] / 1e9
        assert rank0["busbw_GBps"] == pytest.approx(expected_busbw)
        assert rank0["algbw_GBps"] >= rank0["busbw_GBps"]
        assert set(rank0["comm_replay"]) == set(rank0["comm_ops"])
        assert 0 <= rank0["overlap_pct"] <= 100 and rank0["overlap_note"] is None
        assert rank0["rss_peak_bytes"] > 0 and rank0["peak_cuda_allocated_bytes"] is None
        # every rank returns the same reduced numbers
        for rank in (1, 2):
            other = measured[rank][index][0]
            assert other["step_time_s"] == rank0["step_time_s"]
            assert other["loss"] == pytest.approx(rank0["loss"])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_profiler_cross_check(measured):
    ring, softmax_ring, allgather = (measured[0][i][0] for i in range(3))
    assert ring["profiler_agrees"] and softmax_ring["profiler_agrees"]
    assert (
        ring["profiler_bytes"]["p2p"]["bytes_sent"]
        == ring["comm_ops"]["p2p:sigmoid.payload"]["bytes_sent"]
        + ring["comm_ops"]["p2p:sigmoid.acc"]["bytes_sent"]
    )
    # gloo's own reduce-scatter is an all-reduce (twice the bytes); profiling.comm runs a
    # ring of send/recv instead, which the profiler sees as p2p: totals agree.
    assert allgather["profiler_agrees"], allgather["profiler_note"]
    rs = allgather["comm_ops"]["reduce_scatter:sigmoid.text_grads"]["bytes_sent"]
    assert "all_reduce" not in allgather["profiler_bytes"]
    assert allgather["profiler_bytes"]["p2p"]["bytes_sent"] == rs


def test_nccl_profiler_events_are_parsed():
    events = [
        {"name": "record_param_comms", "args": {"Collective name": "_allgather_base",
         "In msg nelems": 100, "Out msg nelems": 400, "dtype": "Float", "Group size": 4}},
        {"name": "record_param_comms", "args": {"Collective name": "_reduce_scatter_base",
         "In msg nelems": 400, "Out msg nelems": 100, "dtype": "BFloat16", "Group size": 4}},
        {"name": "record_param_comms", "args": {"Collective name": "send",
         "In msg nelems": 50, "Out msg nelems": 50, "dtype": "Float", "Group size": 4}},
        {"name": "record_param_comms", "args": {"Collective name": "recv",
         "In msg nelems": 50, "Out msg nelems": 50, "dtype": "Float", "Group size": 4}},
        {"name": "record_param_comms", "args": {"Collective name": "barrier",
         "In msg nelems": 1, "Out msg nelems": 1, "dtype": "Float", "Group size": 4}},
        {"name": "gloo:all_gather", "args": {"Input Dims": [[9, 9]], "Input type": ["float"]}},
    ]  # fmt: skip
    got = traffic.profiler_bytes(events, world=4)
    assert got == {
        "all_gather": {"calls": 1, "bytes_sent": 3 * 100 * 4, "bytes_received": 3 * 100 * 4},
        "reduce_scatter": {"calls": 1, "bytes_sent": 3 * 100 * 2, "bytes_received": 3 * 100 * 2},
        "p2p": {"calls": 2, "bytes_sent": 200, "bytes_received": 200},
    }


def test_overlap_rules_and_spread():
    exposed = spread([0.1, 0.3, 0.2])
    assert exposed["median"] == 0.2 and exposed["min"] == 0.1 and exposed["max"] == 0.3
    assert traffic.overlap(exposed, {"comm_time_s": 0.8})["overlap_pct"] == pytest.approx(75.0)
    assert traffic.overlap(exposed, {"comm_time_s": 0.1})["overlap_pct"] == 0.0
    assert traffic.overlap(exposed, {"comm_time_s": 0.0})["overlap_note"] == "no communication"
    assert traffic.overlap(None, {"profiler_note": "no replay"})["overlap_note"] == "no replay"


class _Event:
    """A stand-in for ``torch.cuda.Event``: ``record()`` reads a shared device clock (ms)."""

    now_ms = 0.0

    def __init__(self):
        self.at, self.synchronized = None, False

    def record(self):
        self.at = _Event.now_ms

    def synchronize(self):
        self.synchronized = True

    def elapsed_time(self, end):
        return end.at - self.at


class _DeviceTimedTransport(comm.Transport):
    """One rank whose waits are device-timed (as NCCL's are); each op takes 2 ms of
    device time, and a p2p wait 5 ms, on the stand-in clock."""

    rank, world_size = 0, 2

    def __init__(self):
        super().__init__()
        self.events = []

    def _device_clock(self, tensors):
        def event():
            self.events.append(_Event())
            return self.events[-1]

        return comm.DeviceClock(torch.device("cpu"), event=event)

    def _all_gather(self, tensor):
        _Event.now_ms += 2.0
        return torch.cat([tensor, tensor])

    def _post_p2p(self, sends, recvs, tag=0):
        class Work:
            def wait(self):
                _Event.now_ms += 5.0

        return [Work()]


def test_device_timed_waits_are_read_when_the_recorder_closes():
    """On NCCL the host does not block: the stall is read from events around each wait,
    after the step, in call order (``comm.DeviceClock``, ``CommRecord.resolve``)."""
    transport = _DeviceTimedTransport()
    with comm.record(transport) as rec:
        transport.all_gather(torch.zeros(3), "x")
        pending = transport.start_p2p([(torch.zeros(4), 1)], [(torch.zeros(4), 1)], "y")
        _Event.now_ms += 100.0  # compute between posting and waiting: not exposed
        pending.wait()
        assert rec.exposed_s == 0.0 and len(rec.pending) == 2  # nothing read mid-step
    assert rec.pending == [] and all(e.synchronized for e in transport.events[1::2])
    assert rec.call_seconds() == {"all_gather:x": [0.002], "p2p:y": [0.005]}
    assert rec.exposed_s == pytest.approx(0.007)
    assert rec.as_dict()["p2p:y"]["bytes_sent"] == 16 and rec.bytes_sent == 16 + 12


def test_host_timed_waits_are_charged_at_once():
    transport = _DeviceTimedTransport()
    transport._device_clock = lambda tensors: None  # gloo: host time
    with comm.record(transport) as rec:
        transport.all_gather(torch.zeros(3), "x")
        assert rec.pending == [] and len(rec.call_seconds()["all_gather:x"]) == 1


def test_ranks_agree_exact_bytes_and_peak_within_slack():
    from profiling.measure import PEAK_SLACK_BYTES, _ranks_agree

    assert _ranks_agree([[100, 100, 2, 5000], [100, 100, 2, 5000 + PEAK_SLACK_BYTES]])
    assert not _ranks_agree([[100, 100, 2, 5000], [100, 100, 2, 5001 + PEAK_SLACK_BYTES]])
    assert not _ranks_agree([[100, 100, 2, 5000], [101, 100, 2, 5000]])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_per_step_and_per_call_samples(measured):
    """The record's samples: one step time per timed step (their spread is the record's),
    this rank's compute below its step, and every call's own seconds per op:label."""
    for index, config in enumerate(CASES):
        rank0 = measured[0][index][0]
        steps = rank0["step_samples_s"]
        assert len(steps) == config.steps and len(rank0["compute_samples_s"]) == config.steps
        assert spread(steps)["median"] == pytest.approx(rank0["step_time_s"]["median"], abs=1e-6)
        assert all(
            0 < c <= s + 1e-6 for c, s in zip(rank0["compute_samples_s"], steps, strict=True)
        )
        assert set(rank0["comm_calls_s"]) == set(rank0["comm_ops"])
        for key, per_step in rank0["comm_calls_s"].items():
            assert len(per_step) == config.steps, key
            calls = rank0["comm_ops"][key]["calls"]
            # a collective is timed per call; p2p exchanges per wait (one per post here)
            assert all(len(step) == calls for step in per_step), key
            assert all(t >= 0 for step in per_step for t in step), key
