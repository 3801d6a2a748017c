"""The simulator's fast path at scale (coarse rounds): quiet one-way rings with the
accumulator exposed stay exact, a quiet bidirectional ring and every ring with the
accumulator hidden (CUDA's default) stay within 1% at the coarseness simulate picks, the jittered median and p90 stay within 2% of the exact engine, jitter of a merged round has
the mean and variance of the rounds it stands for, and ``simulate`` picks and reports it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from simulator import program, resolve_hardware, simulate
from simulator.events import Engine, RingPass
from simulator.model import resolve_method
from simulator.scale import stragglers
from simulator.simulate import COARSE_RANK_ROUNDS, EXACT_RANK_ROUNDS, coarse_for, ring_rounds
from simulator.variability import Jitter, Variability

H100 = "h100-sxm"


EXPOSED = {"hide_accumulator": False}
"""The two-buffer ring (CPU's default): each accumulator waited for before its block."""


def test_quiet_one_way_rings_with_the_accumulator_exposed_are_exact_at_any_coarseness():
    # max-plus homogeneous rounds plus the ramps at fill and drain: node boundaries and all
    for method in ("sigmoid-ring", "softmax-ring"):
        exact = simulate(method, 64, 1024, 768, "bf16", H100, steps=1, coarse=1, **EXPOSED)
        for g in (2, 8, 32):
            coarse = simulate(method, 64, 1024, 768, "bf16", H100, steps=1, coarse=g, **EXPOSED)
            assert coarse.coarse == g
            assert coarse.step_time_s[0] == pytest.approx(exact.step_time_s[0], rel=1e-12)


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_quiet_bidirectional_ring_errs_by_the_measured_fraction(dtype):
    # measured (docs/simulator.md, "At scale"): +0.00% (bf16) and +0.71% (fp32) at
    # W = 64, g = 2 = W/32, the most simulate picks; node boundaries set it off
    exact = simulate("sigmoid-ring-bidir", 64, 1024, 768, dtype, H100, steps=1, coarse=1, **EXPOSED)
    coarse = simulate(
        "sigmoid-ring-bidir", 64, 1024, 768, dtype, H100, steps=1, coarse=2, **EXPOSED
    )
    error = coarse.step_time_s[0] / exact.step_time_s[0] - 1
    assert -1e-12 <= error <= 0.01


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("method", ["sigmoid-ring", "softmax-ring", "sigmoid-ring-bidir"])
def test_quiet_rings_with_the_accumulator_hidden_err_by_the_measured_fraction(method, dtype):
    # CUDA's default (three buffers: the accumulator waited for after the block). Measured
    # 2026-11-29 at W = 64, g = 2 = W/32 (the most simulate picks): sigmoid-ring +0.00%
    # (bf16) / +0.13% (fp32), softmax-ring +0.09% / +0.00%, sigmoid-ring-bidir +0.00% /
    # +0.45%; larger g errs more (up to +3.1% at g = 8 and 32, bidir fp32)
    exact = simulate(method, 64, 1024, 768, dtype, H100, steps=1, coarse=1)
    coarse = simulate(method, 64, 1024, 768, dtype, H100, steps=1, coarse=2)
    assert exact.predicted_s == simulate(method, 64, 1024, 768, dtype, H100, steps=1,
                                         hide_accumulator=True).predicted_s  # fmt: skip
    error = coarse.step_time_s[0] / exact.step_time_s[0] - 1
    assert -1e-12 <= error <= 0.01


@pytest.mark.parametrize(
    ("dtype", "slow"),
    [("bf16", {}), ("fp32", stragglers(64, None, 2.0)), ("fp32", stragglers(64, 0.05, 2.0))],
)
def test_jittered_median_and_p90_stay_within_two_percent_of_the_exact_engine(dtype, slow):
    # measured at g = W/32 (the most simulate picks): |Δ| ≤ 1.2% over W ∈ {64, 256, 1024}
    # and the ring methods, sampling noise included (python -m simulator.scale --errors);
    # at W = 64 it was ≤ 0.25%, so 2% leaves room for other seeds
    jitter = Jitter(sigma=0.1)
    exact, coarse = (
        simulate(
            "sigmoid-ring",
            64,
            1024,
            768,
            dtype,
            H100,
            steps=200,
            seed=seed,
            jitter=jitter,
            stragglers=slow,
            coarse=g,
        )
        for seed, g in ((1, 1), (2, 2))
    )
    assert coarse.median_s == pytest.approx(exact.median_s, rel=0.02)
    assert coarse.p90_s == pytest.approx(exact.p90_s, rel=0.02)
    assert coarse.median_s > coarse.predicted_s  # jitter still costs the ring


def test_a_merged_rounds_jitter_has_the_mean_and_variance_of_the_rounds_it_stands_for():
    rng = np.random.default_rng(0)
    for jitter in (Jitter(sigma=0.3), Jitter(distribution="exponential", sigma=0.5, median=2)):
        n = 8
        rounds = jitter.draw(rng, (200_000, n)).mean(axis=1)
        merged = jitter.draw_mean(rng, 200_000, n)
        assert merged.mean() == pytest.approx(rounds.mean(), rel=0.005)
        assert merged.var() == pytest.approx(rounds.var(), rel=0.03)
        assert jitter.draw_mean(np.random.default_rng(1), 5, 1) == pytest.approx(
            jitter.draw(np.random.default_rng(1), 5)
        )


def test_units_cover_every_round_and_ramp_by_at_most_two():
    hw = resolve_hardware(H100)
    for method in ("sigmoid-ring", "sigmoid-ring-bidir", "softmax-ring"):
        prog = program.build(resolve_method(method), 300, 64, 64, "bf16", hw)
        engine = Engine(prog.machine, Variability(), 1, 0, False, coarse=16)
        for ring in (s for s in prog.segments if isinstance(s, RingPass)):
            per_round = [p for p in ring.parts for _ in range(p.rounds)]
            chains = max(p.chains for p in ring.parts)
            rounds = [sum(p.rounds for p in ring.parts if p.chains > c) for c in range(chains)]
            units = list(engine._units(per_round, rounds))
            starts = [i for i, _ in units]
            assert starts == [1 + sum(n for _, n in units[:k]) for k in range(len(units))]
            assert sum(n for _, n in units) == len(per_round)
            assert units[0][1] == 1 and max(n for _, n in units) == 16
            assert all(
                b <= 2 * a and a <= max(2 * b, 1) for (_, a), (_, b) in itertools.pairwise(units)
            )
            for home in rounds:  # a chain's last round stays single
                assert (home, 1) in units


def test_simulate_picks_coarse_rounds_only_past_the_exact_budget():
    hw = resolve_hardware(H100)
    method = resolve_method("sigmoid-ring")
    small = program.build(method, 1024, 1024, 768, "bf16", hw)
    assert coarse_for(small, 100) == 1  # 1.05e8 rank-rounds
    assert 1024 * ring_rounds(small) * 100 <= EXACT_RANK_ROUNDS
    big = program.build(method, 4096, 1024, 768, "bf16", hw)
    g = coarse_for(big, 1000)
    assert 1 < g <= 4096 // 32
    assert 4096 * 1000 * -(-ring_rounds(big) // g) <= COARSE_RANK_ROUNDS
    wide = program.build(method, 65536, 1024, 768, "bf16", hw)
    assert 1 < coarse_for(wide, 10) <= 65536 // 32


def test_coarse_runs_are_seeded_and_refuse_what_they_cannot_do():
    kwargs = dict(jitter=Jitter(sigma=0.1), coarse=4, hardware=H100)
    kwargs["steps"] = 600  # three chunks of steps (CHUNK_RANK_STEPS)
    one = simulate("sigmoid-ring", 256, 64, 64, seed=5, **kwargs)
    again = simulate("sigmoid-ring", 256, 64, 64, seed=5, **kwargs)
    np.testing.assert_array_equal(one.step_time_s, again.step_time_s)
    assert one.step_time_s.shape == (600,) and one.coarse == 4
    assert one.summary()["coarse"] == 4
    with pytest.raises(ValueError, match="coarse must be"):
        simulate("sigmoid-ring", 8, 64, 64, hardware=H100, coarse=0)
    with pytest.raises(ValueError, match="trace needs the exact engine"):
        simulate("sigmoid-ring", 8, 64, 64, hardware=H100, coarse=2, trace=True)
    assert stragglers(1000, 0.01, 1.5) == {r: 1.5 for r in range(50, 1000, 100)}
