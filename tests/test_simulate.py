"""The event simulator: quiet runs reproduce the closed form (up to ring fill and drain),
and jitter, stragglers, a slow node or link and shared cores move the steps as stated."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from profiling.losses import METHODS
from simulator import predict, program, resolve_hardware, simulate
from simulator.events import RingPass
from simulator.model import resolve_method
from simulator.variability import Jitter, parse_factors, parse_jitter
from tests.simulator_fakes import cpu_hardware

GPU_PROFILES = ("h100-sxm", "a100-sxm-80gb")


def _ring_passes(method, world, batch, dim, dtype, hw, **options):
    prog = program.build(resolve_method(method), world, batch, dim, dtype, hw, **options)
    return [s for s in prog.segments if isinstance(s, RingPass)]


@pytest.mark.slow
def test_quiet_simulation_reproduces_the_closed_form_on_gpu_profiles():
    grid = list(
        itertools.product(METHODS, (1, 3, 8, 9, 16), (16, 1024), (64, 768), ("fp32", "bf16"))
    )
    ring_options = list(itertools.product((True, False), (False, True)))  # overlap, hide
    checked = 0
    for name in GPU_PROFILES:
        hw = resolve_hardware(name)
        for method, world, batch, dim, dtype in grid:
            ring = resolve_method(method).ring
            for overlap, hide in ring_options if ring else [(None, None)]:
                options = {} if overlap is None else {"overlap": overlap, "hide_accumulator": hide}
                sim = simulate(method, world, batch, dim, dtype, hw, steps=2, **options)
                assert np.all(sim.step_time_s == sim.step_time_s[0])
                diff = sim.step_time_s[0] - sim.predicted_s
                if overlap is not None:
                    passes = _ring_passes(method, world, batch, dim, dtype, hw, **options)
                if overlap and world > 1 and (hide or method == "sigmoid-ring-bidir"):
                    # fill and drain: at most one round (its block and exchanges) per pass
                    bound = sum(
                        p.chains * p.block_s + p.payload.inter_s + p.acc.inter_s
                        for ring in passes
                        for p in ring.parts[:1]
                    )
                    assert abs(diff) <= bound, (method, world, batch, dim, dtype, hide)
                elif method == "sigmoid-ring-bidir" and world > 2:
                    # the code waits for one chain's exchange before posting the other's;
                    # the closed form runs the two directions at once
                    two_way = ring_parts = passes[0].parts[0]
                    assert ring_parts.chains == 2
                    crosses = hw.ranks_per_node is not None and world > hw.ranks_per_node
                    level = "inter_s" if crosses else "intra_s"
                    extra = two_way.rounds * sum(
                        getattr(t, level) for t in (two_way.payload, two_way.acc)
                    )
                    assert diff == pytest.approx(extra, rel=1e-9, abs=1e-15)
                else:  # one-way rings with the accumulator exposed (or no overlap). The
                    # closed form prices every round alike, A + max(C, P); the code's first
                    # round waits for its payload P with nothing to hide it, and the own
                    # block C, last, covers the accumulator A coming home, which the first
                    # round did not wait for: P − max(C, P) + max(C, A) − A per pass
                    expected = 0.0
                    if overlap and world > 1:
                        crosses = hw.ranks_per_node is not None and world > hw.ranks_per_node
                        level = "inter_s" if crosses else "intra_s"
                        for ring in passes:
                            (part,) = ring.parts
                            own = ring.home.seconds
                            p, a = (getattr(t, level) for t in (part.payload, part.acc))
                            expected += p - max(own, p) + max(own, a) - a
                    assert diff == pytest.approx(expected, rel=1e-9, abs=1e-12 * sim.predicted_s)
                checked += 1
    # profiles × points × (all-gathers + rings × overlap × accumulator policy)
    assert checked == len(GPU_PROFILES) * 5 * 2 * 2 * 2 * (2 + 3 * 4)


@pytest.mark.parametrize("method", ["sigmoid-ring", "softmax-ring"])
def test_on_a_gpu_profile_hiding_the_accumulator_saves_its_transfer_every_round(method):
    # CUDA's default policy (three buffers): the accumulator waits after the block, so a
    # compute-bound round (W = 8 on one h100-sxm node) saves one accumulator transfer, A;
    # where the hidden round is bound by its transfers (W = 64: inter-node hops) it saves
    # what the exposed round spent beyond them, compute + A − comm. Per ring round, in the
    # closed form exactly and in the simulator to within one round per pass
    hw = resolve_hardware("h100-sxm")
    b, d = 1024, 768
    for world in (8, 64):
        exposed, hidden = (
            simulate(method, world, b, d, "fp32", hw, steps=1, hide_accumulator=h)
            for h in (False, True)
        )
        default = simulate(method, world, b, d, "fp32", hw, steps=1)
        assert default.predicted_s == hidden.predicted_s  # CUDA's default hides it
        crosses = world > hw.ranks_per_node
        passes = _ring_passes(method, world, b, d, "fp32", hw, hide_accumulator=False)
        saved, bound = 0.0, 0.0
        for ring in passes:
            (part,) = ring.parts
            acc, payload = (
                getattr(t, "inter_s" if crosses else "intra_s") for t in (part.acc, part.payload)
            )
            comm = acc + payload
            assert (part.block_s >= comm) == (not crosses)  # compute-bound on one node
            saved += part.rounds * min(acc, part.block_s + acc - comm)
            bound += part.block_s + comm
        assert saved > 0
        assert exposed.predicted_s - hidden.predicted_s == pytest.approx(saved, rel=1e-9)
        simulated = exposed.step_time_s[0] - hidden.step_time_s[0]
        assert abs(simulated - saved) <= bound, (world, simulated, saved)


def test_quiet_simulation_equals_the_closed_form_where_ranks_fill_the_cores():
    # gloo-like: moving bytes needs the cores; at W ≥ cores each rank moves its own bytes,
    # nothing hides (the closed form's rule), and lock step makes sharing the core share
    hw = cpu_hardware(**{"intra_node.sync_us": 50.0, "compute.busy_rank_slowdown": 0.3})
    checked = 0
    for method, world in itertools.product(METHODS, (2, 3, 4, 8)):
        for overlap in (True, False) if resolve_method(method).ring else (None,):
            options = {} if overlap is None else {"overlap": overlap}
            sim = simulate(method, world, 64, 32, "fp32", hw, steps=1, **options)
            assert sim.step_time_s[0] == pytest.approx(sim.predicted_s, rel=1e-12), method
            checked += 1
    assert checked == 4 * (2 + 3 * 2)


def test_with_sync_and_free_cores_an_accumulator_moves_during_the_payload_wait():
    # the round waits for its payload (paying sync), then for the accumulator, which was
    # in flight meanwhile; the closed form prices the accumulator as wholly exposed, so
    # the simulated one-way ring is shorter by min(accumulator, payload sync) per round
    # after the first (the exposed accumulator: the fake profile's device is CUDA, whose
    # default hides it)
    hw = cpu_hardware(cores=16, **{"intra_node.sync_us": 50.0})
    exposed = {"hide_accumulator": False}
    for world in (3, 8):
        sim = simulate("sigmoid-ring", world, 64, 32, "fp32", hw, steps=1, **exposed)
        (ring,) = _ring_passes("sigmoid-ring", world, 64, 32, "fp32", hw, **exposed)
        (part,) = ring.parts
        overlapped = min(part.acc.intra_s, part.payload.intra_sync_s)
        assert overlapped > 0
        expected = sim.predicted_s - (world - 2) * overlapped
        assert sim.step_time_s[0] == pytest.approx(expected, rel=1e-12)


def test_seeded_jitter_gives_a_repeatable_distribution():
    jitter = Jitter(distribution="lognormal", sigma=0.2)
    one = simulate(
        "sigmoid-ring", 8, 512, 256, steps=200, seed=3, jitter=jitter, hardware="h100-sxm"
    )
    again = simulate(
        "sigmoid-ring", 8, 512, 256, steps=200, seed=3, jitter=jitter, hardware="h100-sxm"
    )
    other = simulate(
        "sigmoid-ring", 8, 512, 256, steps=200, seed=4, jitter=jitter, hardware="h100-sxm"
    )
    np.testing.assert_array_equal(one.step_time_s, again.step_time_s)
    assert not np.array_equal(one.step_time_s, other.step_time_s)
    assert one.step_time_s.shape == (200,)
    assert one.step_time_s.min() < one.median_s < one.p90_s < one.step_time_s.max()
    # a ring waits on its slowest neighbours: the typical step is slower than the quiet one
    assert one.median_s > one.predicted_s


def test_jitter_median_scales_a_lone_rank_exactly():
    for distribution in ("lognormal", "exponential", "none"):
        jitter = {"compute": Jitter(distribution=distribution, median=1.3, sigma=0.0)}
        sim = simulate(
            "sigmoid-allgather", 1, 256, 128, hardware="h100-sxm", steps=3, jitter=jitter
        )
        np.testing.assert_allclose(sim.step_time_s, 1.3 * sim.predicted_s, rtol=1e-12)
    sample = Jitter(distribution="exponential", sigma=0.5).draw(np.random.default_rng(0), 200_000)
    assert np.median(sample) == pytest.approx(1.0, rel=0.01)
    assert sample.min() >= 1 / (1 + 0.5 * np.log(2)) - 1e-12


def test_a_straggler_delays_every_collective_by_its_extra_compute():
    hw = resolve_hardware("h100-sxm")
    closed = predict("sigmoid-allgather", 16, 1024, 512, hardware=hw)
    sim = simulate("sigmoid-allgather", 16, 1024, 512, hardware=hw, steps=1, stragglers={5: 2.0})
    expected = closed.step_time_s + closed.compute_s  # the straggler's compute, twice
    assert sim.predicted_s == closed.step_time_s
    assert sim.step_time_s[0] == pytest.approx(float(expected), rel=1e-12)


def test_a_straggler_paces_a_compute_bound_ring():
    hw = resolve_hardware("h100-sxm")
    world, batch, dim = 8, 4096, 1024
    (ring,) = _ring_passes("sigmoid-ring", world, batch, dim, "fp32", hw)
    block = ring.parts[0].block_s
    quiet = simulate("sigmoid-ring", world, batch, dim, hardware=hw, steps=1)
    slow = simulate("sigmoid-ring", world, batch, dim, hardware=hw, steps=1, stragglers={3: 1.5})
    # every round waits for the straggler's block: (W − 1) rounds at 1.5 blocks, home too
    assert slow.step_time_s[0] >= quiet.step_time_s[0] + 0.5 * world * block - 1e-12
    assert slow.step_time_s[0] <= quiet.step_time_s[0] + 0.5 * (world + 1) * block


def test_slow_node_is_its_ranks_as_stragglers_and_a_slow_link_slows_collectives():
    hw = resolve_hardware("h100-sxm")
    node = simulate("softmax-ring", 16, 512, 256, hardware=hw, steps=4, seed=1,
                    jitter=Jitter(sigma=0.1), slow_node=(1, 1.5))  # fmt: skip
    ranks = simulate("softmax-ring", 16, 512, 256, hardware=hw, steps=4, seed=1,
                     jitter=Jitter(sigma=0.1), stragglers=dict.fromkeys(range(8, 16), 1.5))  # fmt: skip
    np.testing.assert_array_equal(node.step_time_s, ranks.step_time_s)
    closed = predict("softmax-allgather", 16, 512, 256, hardware=hw)
    link = simulate("softmax-allgather", 16, 512, 256, hardware=hw, steps=1, slow_link=(7, 3.0))
    assert link.step_time_s[0] == pytest.approx(float(closed.step_time_s + 2 * closed.comm_s))
    ring = simulate("sigmoid-ring", 16, 64, 1024, hardware=hw, steps=1, slow_link=(7, 3.0))
    assert ring.step_time_s[0] > 2 * ring.predicted_s  # comm-bound: the slow hop paces it


def test_shared_cores_follow_the_closed_form_in_lock_step_and_free_up_for_a_straggler():
    hw = cpu_hardware()
    closed = predict("sigmoid-allgather", 4, 256, 128, hardware=hw)
    quiet = simulate("sigmoid-allgather", 4, 256, 128, hardware=hw, steps=1)
    assert quiet.step_time_s[0] == pytest.approx(float(closed.step_time_s), rel=1e-12)
    assert closed.core_share == 2.0
    slow = simulate("sigmoid-allgather", 4, 256, 128, hardware=hw, steps=1, stragglers={0: 3.0})
    held = closed.step_time_s + 2.0 * closed.compute_s  # if the straggler never got a core back
    assert closed.step_time_s < slow.step_time_s[0] < held
    within = cpu_hardware(cores=8)
    alone = simulate(
        "sigmoid-allgather", 4, 256, 128, hardware=within, steps=1, stragglers={0: 3.0}
    )
    lone = predict("sigmoid-allgather", 4, 256, 128, hardware=within)
    assert alone.step_time_s[0] == pytest.approx(float(lone.step_time_s + 2 * lone.compute_s))


def test_bad_input_is_refused_with_one_line():
    cases = [
        (dict(stragglers={8: 2.0}), "straggler rank 8"),
        (dict(slow_node=(3, 2.0)), "slow node 3"),
        (dict(slow_link=(0, -1.0)), "positive"),
        (dict(steps=0), "steps"),
        (dict(jitter={"disk": Jitter()}), "unknown jitter kind"),
        (dict(tilt=3), "unknown option"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(ValueError, match=needle):
            simulate("sigmoid-ring", 8, 64, 64, hardware="h100-sxm", **kwargs)
    with pytest.raises(ValueError, match="single numbers"):
        simulate("sigmoid-ring", [2, 4], 64, 64, hardware="h100-sxm")
    with pytest.raises(ValueError, match="unknown jitter distribution"):
        Jitter(distribution="cauchy")
    with pytest.raises(ValueError, match="trace a smaller world"):
        simulate("sigmoid-ring", 4096, 64, 64, hardware="h100-sxm", trace=True, steps=1)


def test_command_line_specs_parse():
    spec = parse_jitter("compute=lognormal:0.05,p2p=exponential:0.3:1.1")
    assert spec["compute"] == Jitter(distribution="lognormal", sigma=0.05)
    assert spec["p2p"] == Jitter(distribution="exponential", sigma=0.3, median=1.1)
    assert set(parse_jitter("lognormal:0.1")) == {"compute", "p2p", "collective"}
    assert parse_factors("3:1.5, 17:2", "straggler") == {3: 1.5, 17: 2.0}
    for bad in ("lognormal", "compute=lognormal:x", "gpu=lognormal:0.1"):
        with pytest.raises(ValueError):
            parse_jitter(bad)
    with pytest.raises(ValueError, match="INDEX:SLOWDOWN"):
        parse_factors("3", "straggler")
