"""Calibration: the fits recover known α, β, duplex efficiency and oversubscription wait from
synthetic timings, and a tiny real gloo calibration writes a profile that loads and predicts."""

from __future__ import annotations

import time

import numpy as np
import pytest

from simulator import hardware, predict
from simulator.calibrate import (
    CalibrationConfig,
    OtherLoad,
    calibrate,
    fit_comm,
    fit_least_squares,
    quality,
)
from simulator.hardware import load_profile
from simulator.machine import fingerprint, machine_key
from tests.simulator_fakes import make_method, rng


def test_least_squares_recovers_a_line_and_stays_non_negative():
    gen = rng(11)
    n = np.geomspace(1e3, 1e7, 12)
    t = 50e-6 + n * 2e-9
    noisy = t * (1 + gen.normal(0, 0.01, n.size))
    fit = fit_least_squares(np.column_stack([np.ones_like(n), n]), noisy, ["a", "b"])
    assert fit["a"] == pytest.approx(50e-6, rel=0.1)
    assert fit["b"] == pytest.approx(2e-9, rel=0.05)
    assert fit["r2"] > 0.99
    # a negative intercept is dropped, not reported
    fit = fit_least_squares(np.column_stack([np.ones_like(n), n]), n * 2e-9 - 1e-7, ["a", "b"])
    assert fit["a"] == 0.0 and fit["b"] > 0


def test_fit_comm_recovers_the_model_parameters():
    gen = rng(12)
    base, alpha, beta, duplex, wait, cores = 20e-6, 80e-6, 1e-9, 0.6, 2e-3, 3
    rows = []
    for world in (2, 3, 4):
        share = max(1.0, world / cores)
        extra = wait if world > cores else 0.0
        for n in (4096, 65536, 524288, 4194304):
            noise = 1 + gen.normal(0, 0.005)
            steps = world - 1
            coll = share * (base + steps * (alpha + extra) + steps * n * beta) * noise
            rows += [("all_gather", world, n, coll), ("reduce_scatter", world, n, coll)]
            rows.append(("p2p", world, n, share * (alpha + extra + n * beta) * noise))
            bidir = share * (alpha + extra + n * beta / duplex) * noise
            rows.append(("p2p_bidir", world, n, bidir))
    fits = fit_comm(rows, cores=cores, uses_cores=True)
    ag = fits["all_gather"]
    assert ag["base_s"] == pytest.approx(base, rel=0.25)
    assert ag["alpha_s"] == pytest.approx(alpha, rel=0.1)
    assert ag["beta_s_per_byte"] == pytest.approx(beta, rel=0.05)
    p2p = fits["p2p"]
    assert p2p["alpha_s"] == pytest.approx(alpha, rel=0.1)
    assert p2p["beta_s_per_byte"] == pytest.approx(beta, rel=0.05)
    assert p2p["duplex_efficiency"] == pytest.approx(duplex, rel=0.05)
    assert fits["oversubscribed"]["wait_s"] == pytest.approx(wait, rel=0.1)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_tiny_calibration_writes_a_usable_profile(tmp_path):
    path = tmp_path / "here.json"
    config = CalibrationConfig(output=path, worlds=(2,), message_bytes=(4096, 2097152),
                               warmup=1, repeats=3, dtypes=("fp32",), quick=True,
                               command="pytest tests/test_calibrate.py",
                               attempts=1)  # fmt: skip
    written, fits = calibrate(config)
    assert written == path
    profile = load_profile(path)
    # marked with its verdict and the machine it describes, named by that machine's key
    assert profile.quality["verdict"] in ("good", "poor") and profile.quality["attempts"] == 1
    assert 0 <= profile.quality["other_processes_core_share"] <= 1
    assert profile.machine == fingerprint("gloo") and profile.name == machine_key(profile.machine)
    assert profile.backend == "gloo" and profile.ranks_per_node is None
    assert profile.compute.matmul_flops_per_s["fp32"] > 1e8
    assert profile.intra_node.p2p.beta_s_per_byte >= 0
    fitted = [k for k in profile.sources if k.startswith(("compute.", "intra_node."))]
    assert len(fitted) >= 15
    assert all("calibrated on" in profile.sources[k] for k in fitted)
    assert "pytest tests/test_calibrate.py" in profile.sources["intra_node.p2p.alpha_us"]
    if profile.cores >= 2:  # the busy-rank fit ran at W=2 and says so
        assert "W=2" in profile.sources["compute.busy_rank_slowdown"]
        assert "W=2" in profile.sources["intra_node.sync_us"]
        assert profile.compute.busy_rank_slowdown >= 0 and profile.intra_node.sync_s >= 0
    for op in ("all_gather", "reduce_scatter", "p2p"):
        assert np.isfinite(fits["comm"][op]["r2"])
    # jitter fitted per kind from per-call timings and real steps, with its sources
    assert set(profile.jitter) == {"compute", "p2p", "collective"}
    assert all(j.median > 0 and j.sigma >= 0 for j in profile.jitter.values())
    assert "simulator.jitter_fit" in profile.sources["jitter.p2p.sigma"]
    p = predict(make_method(), [1, 2, 4], 256, 128, hardware=profile)
    assert np.all(p.step_time_s > 0) and np.all(np.isfinite(p.step_time_s))


def test_one_world_within_cores_folds_base_into_alpha():
    rows = []
    for world in (2, 4):  # 2 cores: only W=2 is within them
        for n in (4096, 65536, 524288):
            t = max(1.0, world / 2) * (30e-6 + (world - 1) * (70e-6 + n * 1e-9))
            rows += [(op, world, n, t) for op in ("all_gather", "reduce_scatter")]
            rows += [("p2p", world, n, t), ("p2p_bidir", world, n, t)]
    fit = fit_comm(rows, cores=2, uses_cores=True)["all_gather"]
    assert fit["base_s"] == 0.0
    assert fit["alpha_s"] == pytest.approx(100e-6, rel=1e-6)
    assert fit["beta_s_per_byte"] == pytest.approx(1e-9, rel=1e-6)


def test_quality_names_every_reason_and_other_load_is_a_share():
    good = {"all_gather": {"r2": 0.99, "beta_s_per_byte": 1e-9}}
    assert quality(good, {"median_rel_err": 0.05}, 0.01)["verdict"] == "good"
    verdict = quality(
        {
            "all_gather": {"r2": 0.5, "beta_s_per_byte": 1e-9},
            "p2p": {"r2": 0.99, "beta_s_per_byte": 0},
        },
        {"median_rel_err": 0.4},
        0.5,
    )
    assert verdict["verdict"] == "poor" and len(verdict["reasons"]) == 4
    with OtherLoad() as load:
        time.sleep(0.3)
    assert 0 <= load.share <= 1


def test_machine_key_follows_what_determines_the_costs():
    facts = fingerprint("gloo")
    assert facts["cores"] >= 1 and facts["torch"]
    assert machine_key(facts) == machine_key(dict(facts))
    assert machine_key(facts) != machine_key(facts | {"torch": "0.0"})
    assert machine_key(facts) != machine_key(facts | {"kernel_flags": []})
    assert hardware.host_profile_path().name == f"{machine_key(facts)}.json"


def test_a_profile_marked_poor_is_not_used_for_a_run_and_reports_say_so(tmp_path, monkeypatch):
    import json

    from experiments import backends
    from tests.simulator_fakes import profile_dict

    monkeypatch.setattr(hardware, "CACHE_DIR", tmp_path)
    own = hardware.host_profile_path()
    assert backends.local_profile() is None  # none yet: sigsim run calibrates
    data = profile_dict(name="this-machine")
    data["_quality"] = {"verdict": "good", "reasons": []}
    own.write_text(json.dumps(data))
    assert backends.local_profile() == own
    assert backends.profile_warning(hardware.load_profile(own)) is None
    data["_quality"] = {"verdict": "poor", "reasons": ["p2p fit R² 0.412"]}
    own.write_text(json.dumps(data))
    assert backends.local_profile() is None  # marked poor: sigsim run calibrates again
    warning = backends.profile_warning(hardware.load_profile(own))
    assert "marked poor" in warning and "p2p fit R² 0.412" in warning
