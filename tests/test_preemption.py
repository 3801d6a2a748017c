"""Preemption of busy ranks (simulator.variability.Preemption): stalls only where a node's
ranks fill its cores (per compute second only where they fill them exactly: beyond,
processor sharing slices the time), additive (the same stall lengthens short and long steps alike),
Poisson per compute second and per wait slept through; a profile carries it with sources
and simulate() adds it by default; fit_preemption recovers the stalls that drew a set of
simulated steps."""

from __future__ import annotations

import numpy as np
import pytest

from simulator import simulate
from simulator.calibrated_profile import preemption_section
from simulator.hardware import HardwareError, parse_profile
from simulator.jitter_fit import fit_preemption
from simulator.variability import Preemption, Variability
from tests.simulator_fakes import cpu_hardware, profile_dict

STALL = Preemption(stall_s=0.004, per_compute_s=200.0, per_wake=0.3)


def _steps(world, preemption, batch=1024, seed=3, method="sigmoid-ring"):
    return simulate(method, world, batch, 64, "fp32", cpu_hardware(), steps=400, seed=seed,
                    jitter={}, preemption=preemption).step_time_s  # fmt: skip


def test_stalls_come_only_where_ranks_fill_the_cores():
    for world in (1,):  # one rank on two cores: a core stays free
        assert np.array_equal(_steps(world, STALL), _steps(world, Preemption()))
    quiet, busy = _steps(2, Preemption()), _steps(2, STALL)
    assert np.ptp(quiet) == pytest.approx(0.0, abs=1e-12)
    excess = busy - quiet
    stalled = excess > 1e-9
    assert 0.2 < stalled.mean() < 0.95
    # additive: most stalled steps are late by whole stalls (a stall can also hide in
    # part behind a wait for the other rank)
    counts = excess[stalled] / STALL.stall_s
    assert np.mean(np.isclose(counts, np.round(counts), atol=1e-6)) > 0.8
    # oversubscribed ranks (4 on 2 cores) already share the cores' time slices (processor
    # sharing): no stalls per compute second on top, only on waking (none in lock step)
    assert np.array_equal(_steps(4, STALL), _steps(4, Preemption()))


def test_stalls_on_waking_come_to_the_ranks_that_slept():
    wakes = Preemption(stall_s=0.004, per_wake=0.5)
    # in lock step nobody waits, so nobody wakes
    assert np.array_equal(_steps(2, wakes), _steps(2, Preemption()))

    def late(preemption):  # rank 1 computes 1.5x slower: rank 0 waits at every exchange
        return simulate("sigmoid-allgather", 2, 256, 64, "fp32", cpu_hardware(), steps=400,
                        seed=5, jitter={}, stragglers={1: 1.5},
                        preemption=preemption).step_time_s  # fmt: skip

    assert np.mean(late(wakes) > late(Preemption()) + 1e-9) > 0.2

    def late4(preemption):  # oversubscribed: a woken rank may find its core taken too
        return simulate("sigmoid-allgather", 4, 256, 64, "fp32", cpu_hardware(), steps=400,
                        seed=5, jitter={}, stragglers={1: 1.5},
                        preemption=preemption).step_time_s  # fmt: skip

    assert np.mean(late4(wakes) > late4(Preemption()) + 1e-9) > 0.2


def test_stalls_per_compute_second_grow_with_the_step():
    per_second = Preemption(stall_s=0.004, per_compute_s=50.0)
    short = _steps(2, per_second, batch=128) - _steps(2, Preemption(), batch=128)
    long = _steps(2, per_second, batch=2048) - _steps(2, Preemption(), batch=2048)
    assert np.mean(long > 0) > np.mean(short > 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stall_s": -1.0}, "stall_s must be a finite number ≥ 0"),
        ({"per_wake": float("nan")}, "per_wake must be a finite number ≥ 0"),
        ({"per_compute_s": True}, "per_compute_s must be a number"),
    ],
)
def test_bad_preemption_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Preemption(**kwargs)
    with pytest.raises(ValueError, match="must be a Preemption"):
        Variability(preemption=0.004)


def _fit_result(preemption=STALL):
    return {"preemption": preemption, "samples": 120, "points": 3, "world": 2, "log_err": 0.02}


def test_a_profile_carries_its_preemption_and_simulate_adds_it_by_default():
    data = profile_dict(**{"cores": 2, "comm_uses_cores": True, "inter_node": None,
                           "ranks_per_node": {"value": None, "source": "test: one host"}})  # fmt: skip
    data["preemption"] = preemption_section(_fit_result(), "calibrated on test")
    hw = parse_profile(data, "t")
    assert hw.preemption == STALL
    assert "calibrated on test" in hw.sources["preemption.stall_us"]
    fitted = simulate("sigmoid-ring", 2, 64, 64, "fp32", hw, steps=200, jitter={})
    assert fitted.variability.preemption == STALL and np.ptp(fitted.step_time_s) > 0
    off = simulate("sigmoid-ring", 2, 64, 64, "fp32", hw, steps=200, jitter={},
                   preemption=Preemption())  # fmt: skip
    assert np.ptp(off.step_time_s) == pytest.approx(0.0, abs=1e-12)
    data["preemption"] = {"stall_us": {"value": 1, "source": "s"}}
    with pytest.raises(HardwareError, match="'preemption' must hold") as err:
        parse_profile(data, "bad.json")
    assert "\n" not in str(err.value)


def test_fit_recovers_the_stalls_that_drew_the_steps():
    hw = cpu_hardware()
    truth = Preemption(stall_s=0.004, per_compute_s=20.0)
    configs = [  # steps of 3 to 50 ms on the fake profile: 0.1 to 2 stalls a step
        {"method": m, "batch": b, "dim": 64, "dtype": "fp32"}
        for m, b in (("sigmoid-ring", 1024), ("softmax-allgather", 2048), ("sigmoid-ring", 4096))
    ]
    samples = [
        [
            simulate(c["method"], 2, c["batch"], c["dim"], "fp32", hw, steps=200,
                     seed=100 + 10 * i + g, jitter={}, preemption=truth).step_time_s
            for g in range(3)
        ]
        for i, c in enumerate(configs)
    ]  # fmt: skip
    fit = fit_preemption(configs, samples, hw, 2)
    got = fit["preemption"]
    assert got.stall_s in (0.003, 0.004, 0.005) and got.per_compute_s in (10.0, 20.0, 40.0)
    assert fit["log_err"] < 0.05 and fit["points"] == 3 and fit["samples"] == 1800
    # a fit of stall-free steps finds no stalls
    quiet = [[simulate(c["method"], 2, c["batch"], c["dim"], "fp32", hw, steps=50, jitter={},
                       preemption=Preemption()).step_time_s] * 2 for c in configs]  # fmt: skip
    assert not fit_preemption(configs, quiet, hw, 2)["preemption"].active
