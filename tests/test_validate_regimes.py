"""Validation by median and p90: the event simulator's median and p90 step beside the
closed form's median error, per regime with issue 11's targets and the noise floor
(leave-one-out over launches); the measured-vs-simulated distribution plot; the
noise-floor verb's bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from experiments import noise_floor, plots
from experiments.backends import compare as backends_compare
from experiments.cli import main
from experiments.report import regime_rows, regime_table
from simulator import simulate
from simulator.hardware import BUNDLED_DIR, parse_profile
from simulator.validate import TARGETS_PCT, by_regime, compare, summarize
from simulator.variability import Jitter


def _hardware():
    data = json.loads((BUNDLED_DIR / "h100-sxm.json").read_text())
    data["cores"]["value"] = 2  # so that W = 4 is oversubscribed (a CPU-like profile)
    hw = parse_profile(data, "test")
    jitter = {"compute": Jitter(distribution="lognormal", sigma=0.2, median=0.97)}
    return dataclasses.replace(hw, jitter=jitter)


def _record(world, scale_median, scale_p90, hw, samples=None, cores=2, key=None):
    sim = simulate("sigmoid-ring", world, 64, 32, "fp32", hw, steps=150, seed=0)
    measured = {
        "bytes_sent": 0,
        "messages": 0,
        "step_time_s": {"median": sim.median_s * scale_median, "p90": sim.p90_s * scale_p90,
                        "p25": sim.median_s},
    }  # fmt: skip
    if samples is not None:
        measured["step_samples_s"] = samples
    return {
        "key": key or f"k{world}",
        "status": "ok",
        "config": {"method": "sigmoid-ring", "world": world, "batch": 64, "dim": 32,
                   "dtype": "fp32"},
        "env": {"cpu_count": cores},
        "measured": measured,
    }  # fmt: skip


def test_simulated_median_and_p90_are_compared_by_regime():
    hw = _hardware()
    records = [_record(2, 1 / 1.1, 1.0, hw), _record(4, 1.0, 1 / 0.8, hw)]
    rows = compare(records, hw)["rows"]
    got = {(r["world"], r["quantity"]): r["delta_pct"] for r in rows}
    assert got[(2, "simulated median")] == pytest.approx(10.0)
    assert got[(2, "simulated p90")] == pytest.approx(0.0, abs=1e-9)
    assert got[(4, "simulated median")] == pytest.approx(0.0, abs=1e-9)
    assert got[(4, "simulated p90")] == pytest.approx(-20.0)
    noise = {"ranks <= cores": {"median_pct": 3.0, "p90_pct": 8.0}}
    regimes = {r["regime"]: r for r in by_regime(summarize(rows), noise)}
    assert regimes["ranks <= cores"]["simulated_median_pct"] == pytest.approx(10.0)
    assert regimes["oversubscribed"]["simulated_p90_pct"] == pytest.approx(20.0)
    assert regimes["ranks <= cores"]["noise_p90_pct"] == 8.0
    assert regimes["oversubscribed"]["noise_median_pct"] is None
    assert (
        regimes["oversubscribed"]["target_p90_pct"]
        == TARGETS_PCT["simulated p90"]["oversubscribed"]
    )
    # the run directory's path (experiments.backends) gives the same numbers
    comparisons, _ = backends_compare(records, hw)
    again = {r["regime"]: r for r in regime_rows(comparisons, noise)}
    for regime in regimes:
        for key in ("simulated_median_pct", "simulated_p90_pct", "closed_form_median_pct"):
            assert again[regime][key] == pytest.approx(regimes[regime][key]), (regime, key)
    table = "\n".join(regime_table(list(again.values())))
    assert "10.0 [≤ 10]" in table and "20.0 [≤ 20]" in table
    # the simulator can be left out
    assert not any(
        "simulated" in r["quantity"] for r in compare(records, hw, simulated_steps=0)["rows"]
    )


def test_noise_floor_is_the_leave_one_out_error_per_regime():
    def launch(world, median, p90):
        return {"key": f"w{world}", "status": "ok", "env": {"cpu_count": 2},
                "config": {"method": "sigmoid-ring", "world": world, "batch": 128},
                "measured": {"step_time_s": {"median": median, "p90": p90}}}  # fmt: skip

    records = [launch(2, m, 2.0) for m in (1.0, 1.2, 0.9)]
    records += [launch(8, 1.0, p) for p in (2.0, 3.0, 2.0)]
    records.append({"key": "w4", "status": "error", "config": {}, "measured": None})
    floor = noise_floor.floor(records)
    # launch k against the mean of the others: 5 %, 20.8 %, 22.2 %
    assert floor["ranks <= cores"]["median_pct"] == pytest.approx(
        (5.0 * 100 * 0.25 / 1.2 * 100 * 0.2 / 0.9) ** (1 / 3)
    )
    assert floor["oversubscribed"]["median_pct"] == pytest.approx(1e-6)  # all equal
    assert floor["oversubscribed"]["p90_pct"] > 10
    assert floor["ranks <= cores"]["points"] == 1 and len(floor["per_point"]) == 2


def test_distribution_plot_draws_measured_beside_simulated_and_skips_old_records():
    hw = _hardware()
    rng = np.random.default_rng(0)
    records = [
        _record(w, 1, 1, hw, samples=list(1e-3 * (1 + rng.exponential(0.1, 40))), key=f"{w}")
        for w in (1, 2, 4)
    ]
    fig = plots.step_distributions(records, hw, steps=20)
    assert fig is not None and len(fig.axes) == 3
    assert all(len(ax.patches) == 2 for ax in fig.axes)  # one measured, one simulated box
    plots.plt.close(fig)
    for r in records:
        del r["measured"]["step_samples_s"]
    assert plots.step_distributions(records, hw) is None


def test_noise_floor_refuses_too_few_launches_in_one_line(tmp_path, capsys):
    code = main(["noise-floor", "--repeat", "1", "--out", str(tmp_path / "nf")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "--repeat must be a whole number ≥ 2" in err
    code = main(["noise-floor", "--worlds", "2,x", "--out", str(tmp_path / "nf")])
    assert code == 2 and "--worlds" in capsys.readouterr().err
