"""The cost model: counts are the method's own sums, inputs broadcast, huge grids stay finite,
and the time rules (α-β, overlap, topology, directions, core sharing) give their formulas."""

from __future__ import annotations

import time

import numpy as np
import pytest

from profiling.losses.registry import Shape
from simulator import predict
from tests.simulator_fakes import (
    bidir_method,
    cpu_hardware,
    global_block_method,
    make_hardware,
    make_method,
    ring_schedule,
    rng,
)

MB = 1e6


def test_counts_are_the_schedule_sums_exactly():
    gen = rng(1)
    world = gen.integers(1, 300, size=50)
    batch = gen.integers(1, 5000, size=50)
    dim = gen.integers(1, 2048, size=50)
    method = make_method()
    for dtype in ("fp32", "bf16", "fp64"):
        p = predict(method, world, batch, dim, dtype, make_hardware())
        schedule = ring_schedule(Shape.of(world, batch, dim, dtype))
        np.testing.assert_array_equal(p.bytes_sent, schedule.bytes_sent())
        np.testing.assert_array_equal(p.bytes_received, schedule.bytes_received())
        np.testing.assert_array_equal(p.messages, schedule.messages())
        np.testing.assert_array_equal(p.flops_forward, schedule.flops("forward"))
        np.testing.assert_array_equal(p.flops_backward, schedule.flops("backward"))
        np.testing.assert_array_equal(p.flops, p.flops_forward + p.flops_backward)
        assert p.bytes_sent.dtype == np.int64
        s = 2 if dtype == "bf16" else 8 if dtype == "fp64" else 4
        np.testing.assert_array_equal(p.memory_terms["payloads"], 2 * batch * dim * s)
        np.testing.assert_array_equal(
            p.peak_memory_bytes, sum(p.memory_terms[k] for k in ("payloads", "block", "grads"))
        )


def test_inputs_broadcast_and_match_scalar_calls():
    gen = rng(2)
    world = gen.integers(1, 64, size=(5, 1))
    batch = gen.integers(1, 4096, size=(1, 3))
    hw = make_hardware()
    p = predict(make_method(), world, batch, 256, hardware=hw)
    assert p.step_time_s.shape == p.bytes_sent.shape == p.fits.shape == (5, 3)
    for i in range(5):
        for j in range(3):
            one = predict(make_method(), world[i, 0], batch[0, j], 256, hardware=hw)
            assert p.bytes_sent[i, j] == one.bytes_sent
            assert p.step_time_s[i, j] == pytest.approx(one.step_time_s.item(), rel=1e-12)


def test_hundred_thousand_points():
    gen = rng(3)
    n = 100_000
    world, batch = gen.integers(1, 100_000, n), gen.integers(1, 10_000, n)
    start = time.perf_counter()
    p = predict(make_method(), world, batch, gen.integers(64, 2048, n), hardware=make_hardware())
    print(f"\n10^5 points predicted in {time.perf_counter() - start:.3f} s")
    assert p.step_time_s.shape == (n,) and np.all(np.isfinite(p.step_time_s))


def test_extreme_scale_has_no_overflow():
    # W = 10^5 ranks, N = 10^8 global batch, d = 4096: b·N·d·4 = 1.6e15 fits int64 only
    # just; b = N (W = 1) overflows it and must fall back to float64, never wrap.
    world = np.array([100_000, 1, 100_000])
    batch = np.array([1_000, 100_000_000, 1])
    p = predict(global_block_method(), world, batch, 4096, "fp64", make_hardware())
    expected = batch.astype(float) * (world * batch).astype(float) * 4096 * 8
    np.testing.assert_allclose(p.peak_memory_bytes.astype(float), expected, rtol=1e-12)
    assert np.all(p.peak_memory_bytes.astype(float) > 0)
    for field in ("flops", "bytes_sent", "step_time_s", "compute_s", "exposed_comm_s"):
        value = getattr(p, field).astype(float)
        assert np.all(np.isfinite(value)) and np.all(value >= 0), field
    assert p.bytes_sent[0] == 2 * (100_000 - 1) * 1_000 * 4096 * 8  # exact int64
    assert not p.fits[1]


def test_registered_methods_at_extreme_scale():
    from profiling.losses import METHODS

    for name in METHODS:
        p = predict(name, [1, 100_000, 100_000], [1, 1_000, 1], 1024, "fp32", "h100-sxm")
        for field in ("flops", "bytes_sent", "peak_memory_bytes", "step_time_s"):
            value = getattr(p, field).astype(float)
            assert np.all(np.isfinite(value)) and np.all(value >= 0), (name, field)
        assert p.bytes_sent[0] == 0, name


def _single_phase(repeat, flops, transfer, overlapped):
    from profiling.losses.registry import Phase, Schedule

    def schedule(shape):
        return Schedule((Phase(name="p", pass_="forward", repeat=repeat(shape),
                               matmul_flops=flops, transfers=(transfer,),
                               overlapped=overlapped),))  # fmt: skip

    return make_method(schedule, lambda s: {"x": 0 * s.batch}, "fake-phase")


def _p2p(nbytes, peer="neighbor", directions=1, messages=1):
    from profiling.losses.registry import Transfer

    return Transfer(op="p2p", label="t", bytes_sent=nbytes, bytes_received=nbytes,
                    messages=messages, peer=peer, directions=directions)  # fmt: skip


@pytest.mark.parametrize("flops", [1e6, 1e9])  # comm-bound, then compute-bound
def test_overlap_rule(flops):
    hw = make_hardware()  # 1 TFLOP/s, 10 us overhead, p2p 10 us + 100 us/MB
    transfer = _p2p(2 * MB)
    compute = 10e-6 + flops / 1e12
    comm = 10e-6 + 2 * 100e-6
    for overlapped in (True, False):
        method = _single_phase(lambda s: s.world - 1, flops, transfer, overlapped)
        p = predict(method, 5, 8, 8, hardware=hw)
        if overlapped:
            assert p.step_time_s == pytest.approx(4 * max(compute, comm))
            assert p.exposed_comm_s == pytest.approx(4 * max(0.0, comm - compute))
        else:
            assert p.step_time_s == pytest.approx(4 * (compute + comm))
            assert p.exposed_comm_s == pytest.approx(4 * comm)
        assert p.comm_s == pytest.approx(4 * comm)
        assert p.compute_s == pytest.approx(4 * compute)
        assert p.step_time_s == pytest.approx(p.compute_s + p.exposed_comm_s)


@pytest.mark.parametrize("hide", [False, True])
@pytest.mark.parametrize("chains", [1, 2])
@pytest.mark.parametrize("flops", [1e6, 1e9])  # comm-bound, then compute-bound
def test_a_ring_accumulator_is_waited_for_before_or_after_the_block(flops, chains, hide):
    # profiling.losses.ring: the next payload hides behind the block. Exposed (two
    # buffers): the block adds into the accumulator just received, so it is waited for
    # first, hidden only behind the blocks of the chains computed before it, and the next
    # payload queues behind it. Hidden (three): the contribution is computed apart and
    # the accumulator waited for after the block, so both transfers hide behind it
    from profiling.losses.registry import Phase, Schedule, Transfer
    from simulator.model import transfer_time_s

    hw = make_hardware()  # 1 TFLOP/s, 10 us overhead, p2p 10 us + 100 us/MB

    def p2p(label, nbytes):
        return Transfer(op="p2p", label=label, bytes_sent=chains * nbytes,
                        bytes_received=chains * nbytes, messages=chains, peer="neighbor",
                        directions=chains)  # fmt: skip

    payload, acc = p2p("r.payload", 2 * MB), p2p("r.acc", MB)

    def schedule(shape):
        return Schedule((Phase(name="round", pass_="forward", repeat=shape.world - 1,
                               matmul_flops=flops, transfers=(payload, acc),
                               overlapped=True),))  # fmt: skip

    p = predict(make_method(schedule, lambda s: {"x": 0 * s.batch}, "fake-ring"), 5, 8, 8,
                hardware=hw, hide_accumulator=hide)  # fmt: skip
    compute = 10e-6 + flops / 1e12
    moving_payload = float(transfer_time_s(payload, hw.intra_node))
    moving_acc = float(transfer_time_s(acc, hw.intra_node))
    if hide:
        round_s = max(compute, moving_payload + moving_acc)
    else:
        round_s = max(compute, moving_acc + max(compute / chains, moving_payload))
    assert p.step_time_s == pytest.approx(4 * round_s)
    assert p.exposed_comm_s == pytest.approx(4 * (round_s - compute))
    assert p.comm_s == pytest.approx(4 * (moving_payload + moving_acc))
    if flops == 1e9:  # compute-bound: one exposed chain shows its accumulator, else hidden
        exposed = 4 * moving_acc if chains == 1 and not hide else 0.0
        assert p.exposed_comm_s == pytest.approx(exposed)


def test_topology_rule_inter_node_past_ranks_per_node():
    hw = make_hardware()  # 8 ranks per node; intra 10 us + 100 us/MB, inter 50 us + 400 us/MB
    from profiling.losses.registry import Transfer

    gather = Transfer(op="all_gather", label="g", bytes_sent=7 * MB, bytes_received=7 * MB,
                      messages=7)  # fmt: skip
    method = _single_phase(lambda s: 1 + 0 * s.world, 0, gather, False)
    p = predict(method, [8, 9], 1, 1, hardware=hw)
    intra = 5e-6 + 7 * 10e-6 + 7 * 100e-6
    inter = 5e-6 + 7 * 50e-6 + 7 * 400e-6
    np.testing.assert_allclose(p.step_time_s, [intra, inter])
    np.testing.assert_array_equal(p.crosses_nodes, [False, True])
    # a neighbour exchange on a ring that spans nodes is as slow as its slowest hop
    ring = _single_phase(lambda s: s.world - 1, 0, _p2p(MB), False)
    p = predict(ring, [8, 9], 1, 1, hardware=hw)
    np.testing.assert_allclose(p.step_time_s, [7 * (10e-6 + 100e-6), 8 * (50e-6 + 400e-6)])


def test_two_directions_share_no_bandwidth_on_full_duplex_links():
    full = make_hardware()
    half = make_hardware(**{"intra_node.p2p.duplex_efficiency": 0.5})
    p_full = predict(bidir_method(), 3, 1000, 250, hardware=full)  # 2 MB per round
    p_half = predict(bidir_method(), 3, 1000, 250, hardware=half)
    assert p_full.step_time_s == pytest.approx(2 * (10e-6 + 1 * 100e-6))
    assert p_half.step_time_s == pytest.approx(2 * (10e-6 + 2 * 100e-6))


def test_oversubscription_is_priced_and_flagged():
    hw = cpu_hardware()  # 2 cores, 1 thread per rank, comm uses cores, 1 ms wait per α
    transfer = _p2p(MB)
    method = _single_phase(lambda s: 1 + 0 * s.world, 1e9, transfer, False)
    p = predict(method, [1, 2, 4, 8], 1, 1, hardware=hw)
    np.testing.assert_array_equal(p.oversubscribed, [False, False, True, True])
    np.testing.assert_allclose(p.core_share, [1, 1, 2, 4])
    compute = 10e-6 + 1e9 / 1e12
    comm = 10e-6 + 100e-6
    wait = 1e-3
    expected = [compute + comm, compute + comm]
    expected += [f * (compute + comm + wait) for f in (2, 4)]
    np.testing.assert_allclose(p.step_time_s, expected)
    # memory shared by the ranks of a host: q × peak must fit
    big = make_method(memory=lambda s: {"x": s.batch * 2**30}, name="fake-big")
    fits = predict(big, [1, 8], 8, 1, hardware=cpu_hardware(memory_GiB=60)).fits
    np.testing.assert_array_equal(fits, [True, False])


def test_bad_input_gets_one_clear_error():
    hw = make_hardware()
    with pytest.raises(ValueError, match="unknown option 'tiles'"):
        predict(make_method(), 2, 8, 8, hardware=hw, tiles=4)
    with pytest.raises(ValueError, match="world must be at least 1"):
        predict(make_method(), [2, 0], 8, 8, hardware=hw)
    with pytest.raises(ValueError, match="batch must be whole numbers"):
        predict(make_method(), 2, 8.5, 8, hardware=hw)
    with pytest.raises(ValueError, match="do not broadcast"):
        predict(make_method(), [2, 3], [8, 9, 10], 8, hardware=hw)
    with pytest.raises(ValueError, match="unknown method 'sigmoid-rung'"):
        predict("sigmoid-rung", 2, 8, 8, hardware=hw)
    with pytest.raises(ValueError, match="unknown dtype"):
        predict(make_method(), 2, 8, 8, "int8", hardware=hw)
    with pytest.raises(ValueError, match="no matmul rate for fp64"):
        predict(make_method(), 2, 8, 8, "fp64", hardware=hw.__class__(**{
            **{f: getattr(hw, f) for f in hw.__dataclass_fields__},
            "compute": hw.compute.__class__(matmul_flops_per_s={"fp32": 1e12},
                                            pointwise_elems_per_s={"fp32": 1e9},
                                            phase_overhead_s=0.0, step_overhead_s=0.0,
                                            collective_call_s=0.0, parallel_efficiency=1.0,
                                            thread_overhead_growth=0.0)}))  # fmt: skip


def test_options_reach_the_method():
    seen = {}

    def schedule(shape):
        seen["tile"], seen["overlap"] = shape.tile, shape.overlap
        return ring_schedule(shape)

    predict(make_method(schedule), 4, 64, 32, hardware=make_hardware(), tile=16, overlap=False)
    assert seen == {"tile": 16, "overlap": False}


def test_thread_policy_of_the_profiler():
    # threads_per_rank null: one thread per rank (profiling.launch), so one rank's math
    # runs on one core, two ranks get one each, four share them; overhead stays serial.
    hw = cpu_hardware(threads_per_rank={"value": None, "source": "test: launch policy"})
    transfer = _p2p(0)
    method = _single_phase(lambda s: 1 + 0 * s.world, 1e9, transfer, False)
    p = predict(method, [1, 2, 4], 1, 1, hardware=hw)
    math_s = 1e9 / 1e12
    overhead, alpha, wait = 10e-6, 10e-6, 1e-3
    expected = [overhead + math_s + alpha, overhead + math_s + alpha]
    expected.append(2 * overhead + 2 * math_s + 2 * (alpha + wait))
    np.testing.assert_allclose(p.step_time_s, expected)


def test_busy_ranks_slow_compute_and_each_exchange_pays_an_exposed_sync():
    # k = 0.5: two busy ranks compute 1.5x slower, four (on 2 cores) hold 1.5x and share
    # the cores on top; every p2p exchange that moves bytes pays sync, even when overlap
    # would hide its α-β time (this fake sends one message at every W, W = 1 included).
    # With a core free (W = 1) overlap hides the transfer; once ranks fill the cores
    # (W = 2, 4) gloo's transfers need them too, so nothing is hidden.
    hw = cpu_hardware(**{"compute.busy_rank_slowdown": 0.5, "intra_node.sync_us": 70.0})
    assert hw.comm_uses_cores and hw.cores == 2
    method = _single_phase(lambda s: 1 + 0 * s.world, 1e9, _p2p(1000), True)
    p = predict(method, [1, 2, 4], 1, 1, hardware=hw)
    compute = 10e-6 + 1e9 / 1e12
    np.testing.assert_allclose(p.compute_s, [compute, 1.5 * compute, 2 * 1.5 * compute])
    assert p.comm_s[0] > 70e-6
    np.testing.assert_allclose(p.exposed_comm_s, [70e-6, p.comm_s[1], p.comm_s[2]])
    np.testing.assert_allclose(p.step_time_s, p.compute_s + p.exposed_comm_s)
    quiet = predict(method, 1, 1, 1, hardware=cpu_hardware())
    assert quiet.step_time_s.item() == pytest.approx(compute)
