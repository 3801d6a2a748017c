"""simulator.jitter_fit: per-call multipliers over their lower quartile recover the
distribution that drew them (lognormal or exponential, oversubscribed cases left out);
the compute fit through the simulator recovers a per-event sigma from whole steps; a
profile carries the fitted jitter (with sources) and simulate() draws it by default."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from simulator import simulate
from simulator.calibrated_profile import jitter_section
from simulator.hardware import BUNDLED_DIR, HardwareError, parse_profile
from simulator.jitter_fit import fit_comm_jitter, fit_compute_jitter, multipliers
from simulator.variability import Jitter

RNG = np.random.default_rng(7)


def _cases(draw, worlds=(2,)):
    """Per-call seconds of 8 cases (base 1e-4..8e-4 s) at each world, 400 calls each."""
    return [
        (op, w, 4096 * (i + 1), list(1e-4 * (i + 1) * draw(400)))
        for w in worlds
        for i, op in enumerate(("p2p", "p2p_bidir", "all_gather", "reduce_scatter") * 2)
    ]


def test_lognormal_calls_give_a_lognormal_with_their_sigma_over_the_lower_quartile():
    fits = fit_comm_jitter(_cases(lambda n: np.exp(0.3 * RNG.standard_normal(n))), cores=2)
    assert set(fits) == {"p2p", "collective"}
    for fit in fits.values():
        j = fit["jitter"]
        assert j.distribution == "lognormal"
        assert j.sigma == pytest.approx(0.3, rel=0.12)
        # median over the lower quartile: exp(0.3 · z_0.75)
        assert j.median == pytest.approx(math.exp(0.3 * 0.6745), rel=0.05)
        assert fit["samples"] == 4 * 400 and fit["worlds"] == [2]


def test_exponential_calls_are_recognised_and_oversubscribed_cases_left_out():
    quiet = _cases(lambda n: 1.0 + RNG.exponential(0.5, n))
    noisy = _cases(lambda n: np.exp(2.0 * RNG.standard_normal(n)), worlds=(4,))
    fits = fit_comm_jitter(quiet + noisy, cores=2)
    for fit in fits.values():
        assert fit["jitter"].distribution == "exponential"
        assert fit["jitter"].sigma == pytest.approx(0.5, rel=0.2)
        assert fit["worlds"] == [2]
    # a long tail (p90 2.7x the median: a busy machine's wake-ups) is still exponential
    tail = fit_comm_jitter(_cases(lambda n: 1.0 + RNG.exponential(4.0, n)), cores=2)
    assert tail["p2p"]["jitter"].distribution == "exponential"
    assert tail["p2p"]["jitter"].sigma == pytest.approx(4.0, rel=0.25)
    # with no case within the cores, the oversubscribed ones are all there is
    assert fit_comm_jitter(noisy, cores=2)["p2p"]["worlds"] == [4]


def test_too_few_timings_are_refused():
    with pytest.raises(ValueError, match="3 or more positive timings"):
        multipliers([1e-3, 2e-3])


def test_compute_fit_recovers_the_per_event_sigma_from_whole_steps():
    configs = [
        {"method": m, "batch": b, "dim": 64, "dtype": "fp32"}
        for m in ("sigmoid-ring", "softmax-allgather")
        for b in (64, 256)
    ]
    truth = Jitter(distribution="lognormal", sigma=0.4)
    samples = [
        simulate(
            c["method"],
            1,
            c["batch"],
            c["dim"],
            "fp32",
            "h100-sxm",
            steps=300,
            seed=11 + i,
            jitter={"compute": truth},
        ).step_time_s
        for i, c in enumerate(configs)
    ]
    fit = fit_compute_jitter(configs, samples, "h100-sxm", 1, {})
    assert fit["jitter"].distribution == "lognormal"
    assert fit["jitter"].sigma in (0.3, 0.4, 0.5)
    assert fit["log_err"] < 0.05 and fit["points"] == 4
    # the median puts the simulated lower quartile on the closed form
    sim = simulate("sigmoid-ring", 1, 256, 64, "fp32", "h100-sxm", steps=300,
                   jitter={"compute": fit["jitter"]})  # fmt: skip
    assert np.quantile(sim.step_time_s, 0.25) == pytest.approx(sim.predicted_s, rel=0.05)


def _profile_with_jitter(section):
    data = json.loads((BUNDLED_DIR / "h100-sxm.json").read_text())
    data["jitter"] = section
    return data


def test_a_profile_carries_its_jitter_and_simulate_draws_it_by_default():
    fits = {
        "compute": {"jitter": Jitter(distribution="lognormal", sigma=0.2, median=0.95),
                    "samples": 40, "points": 4, "world": 2, "log_err": 0.01},
        "p2p": {"jitter": Jitter(distribution="exponential", sigma=0.5, median=1.1),
                "samples": 80, "cases": 8, "worlds": [2], "log_err": 0.02},
    }  # fmt: skip
    hw = parse_profile(_profile_with_jitter(jitter_section(fits, "calibrated on test")), "t")
    assert hw.jitter == {kind: fit["jitter"] for kind, fit in fits.items()}
    assert "calibrated on test" in hw.sources["jitter.compute.sigma"]
    fitted = simulate("sigmoid-ring", 4, 256, 64, "fp32", hw, steps=50)
    assert fitted.variability.jitter == hw.jitter and np.ptp(fitted.step_time_s) > 0
    quiet = simulate("sigmoid-ring", 4, 256, 64, "fp32", hw, steps=50, jitter={})
    assert np.ptp(quiet.step_time_s) == 0
    assert parse_profile(_profile_with_jitter(None), "t").jitter == {}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"disk": {}}, "unknown jitter kind 'jitter.disk'"),
        ({"p2p": {"distribution": "lognormal"}}, "must hold 'distribution', 'median'"),
        ({"p2p": {"distribution": "gamma", "median": {"value": 1, "source": "s"},
                  "sigma": {"value": 0.1, "source": "s"}}}, "unknown jitter distribution"),
    ],
)  # fmt: skip
def test_a_bad_jitter_section_is_refused_in_one_line(section, message):
    with pytest.raises(HardwareError, match=message) as err:
        parse_profile(_profile_with_jitter(section), "bad.json")
    assert "\n" not in str(err.value) and "bad.json" in str(err.value)


def test_sigsim_simulate_draws_the_profiles_jitter_unless_told_otherwise(tmp_path, capsys):
    from experiments.cli import main

    fits = {"compute": {"jitter": Jitter(distribution="lognormal", sigma=0.3), "samples": 40,
                        "points": 4, "world": 1, "log_err": 0.01}}  # fmt: skip
    path = tmp_path / "fitted.json"
    path.write_text(json.dumps(_profile_with_jitter(jitter_section(fits, "calibrated on test"))))
    base = ["simulate", "--method", "sigmoid-ring", "--world", "4", "--batch", "64", "--dim",
            "32", "--hardware", str(path), "--steps", "40", "--json"]  # fmt: skip
    assert main(base) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["p90_s"] > fitted["median_s"]
    assert main([*base, "--jitter", "lognormal:0"]) == 0
    quiet = json.loads(capsys.readouterr().out)
    assert quiet["p90_s"] == pytest.approx(quiet["median_s"])


def test_where_ranks_fill_the_cores_the_stall_tail_is_left_to_preemption():
    def stalled(n):  # lognormal body, 12% of calls descheduled for 30x their length
        body = np.exp(0.1 * RNG.standard_normal(n))
        return np.where(RNG.random(n) < 0.12, 30.0 * body, body)

    cases = _cases(stalled)
    filled = fit_comm_jitter(cases, cores=2)["p2p"]  # W = 2 on 2 cores
    free = fit_comm_jitter(cases, cores=4)["p2p"]  # W = 2 on 4 cores
    assert filled["quantiles"] == [0.1, 0.25, 0.5, 0.75]
    assert free["quantiles"] == [0.1, 0.25, 0.5, 0.75, 0.9]
    spread = {name: fit["jitter"] for name, fit in (("filled", filled), ("free", free))}
    # the body alone is narrow; with the p90 in, the stalls widen the jitter
    assert _p90_over_median(spread["filled"]) < 1.3 < _p90_over_median(spread["free"])


def _p90_over_median(jitter: Jitter) -> float:
    draws = jitter.draw(np.random.default_rng(0), 20000)
    return float(np.quantile(draws, 0.9) / np.median(draws))
