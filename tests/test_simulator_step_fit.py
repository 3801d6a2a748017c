"""Step calibration and the fixed costs it feeds: the real-step fits recover known overheads,
rates, and the busy-rank slowdown and sync cost from synthetic timings (outliers dropped), the schedule features
count what the code does at W = 1, and the model prices step, phase, collective-call and
thread costs by its docstring's formulas."""

from __future__ import annotations

import numpy as np
import pytest

from profiling.losses.registry import Phase, Schedule, Transfer
from simulator import predict, step_fit
from tests.simulator_fakes import cpu_hardware, make_method, rng

TRUE = {"o_step": 150e-6, "o": 60e-6, "k": 40e-6, "mm": 9e10, "pw": 5e8, "softmax": 1.8}


def _synthetic_points(gen, n=40) -> list[step_fit.StepPoint]:
    points = []
    for i in range(n):
        b, d = int(gen.integers(16, 400)), int(gen.integers(16, 256))
        phases = float(gen.integers(1, 3))
        calls = float(gen.choice([0, 2, 4]))
        flops = phases * 6.0 * b * b * d
        points.append(
            step_fit.StepPoint(
                f"m{i}", b, d, "fp32", phases, flops, phases * b * b, calls, softmax=i % 2 == 1
            )
        )
    return points


def _one_thread_times(points, gen, noise=0.01):
    x = step_fit.features(points)
    coef = np.array([TRUE["o_step"], TRUE["o"], TRUE["k"], 1 / TRUE["mm"], 1 / TRUE["pw"],
                     1 / (TRUE["softmax"] * TRUE["pw"])])  # fmt: skip
    return (x @ coef) * (1 + noise * gen.standard_normal(len(points)))


def test_one_thread_fit_recovers_overheads_and_rates_despite_an_outlier():
    gen = rng(7)
    points = _synthetic_points(gen)
    times = _one_thread_times(points, gen)
    times[3] *= 8.0  # a step that met a busy machine
    fit = step_fit.fit_one_thread(points, times)
    assert fit["dropped"] >= 1
    assert fit["step_overhead_s"] == pytest.approx(TRUE["o_step"], rel=0.1)
    assert fit["phase_overhead_s"] == pytest.approx(TRUE["o"], rel=0.15)
    assert fit["collective_call_s"] == pytest.approx(TRUE["k"], rel=0.15)
    assert fit["matmul_rate"] == pytest.approx(TRUE["mm"], rel=0.05)
    assert fit["pointwise_rate"] == pytest.approx(TRUE["pw"], rel=0.1)
    assert fit["softmax_pointwise_ratio"] == pytest.approx(TRUE["softmax"], rel=0.1)
    assert fit["median_rel_err"] < 0.03


def test_busy_rank_fit_recovers_slowdown_and_sync_despite_an_outlier():
    gen = rng(11)
    hw = cpu_hardware(**{"compute.step_overhead_us": 120.0})
    configs = [
        {"method": m, "batch": int(b), "dim": int(d), "dtype": "fp32"}
        for m in ("sigmoid-ring", "softmax-allgather", "sigmoid-ring-bidir")
        for b, d in zip(gen.integers(16, 400, 6), gen.integers(16, 256, 6), strict=True)
    ]
    truth = cpu_hardware(
        **{
            "compute.step_overhead_us": 120.0,
            "compute.busy_rank_slowdown": 0.8,
            "intra_node.sync_us": 150.0,
        }
    )
    times = np.array(
        [
            predict(c["method"], 2, c["batch"], c["dim"], hardware=truth).step_time_s.item()
            for c in configs
        ]
    ) * (1 + 0.005 * gen.standard_normal(len(configs)))
    times[2] *= 6.0  # a step that met a busy machine
    fit = step_fit.fit_busy_ranks(configs, times, hw, 2)
    assert fit["dropped"] >= 1
    assert fit["busy_rank_slowdown"] == pytest.approx(0.8, abs=0.03)
    assert fit["sync_s"] == pytest.approx(150e-6, rel=0.15)
    with pytest.raises(ValueError, match="at least 2 ranks"):
        step_fit.fit_busy_ranks(configs, times, hw, 1)


def test_too_few_points_is_refused_with_one_line():
    points = _synthetic_points(rng(3), n=3)
    with pytest.raises(ValueError, match="at least 6 points"):
        step_fit.fit_one_thread(points, np.ones(3))


def test_features_count_calls_made_at_world_one():
    points = {
        p.method: p
        for p in step_fit.step_points(
            ["sigmoid-ring", "sigmoid-allgather", "softmax-allgather", "softmax-ring"],
            [8],
            [4],
            "fp32",
        )
    }
    # the rank check is skipped on one rank; every other collective is still called
    assert points["sigmoid-ring"].collective_calls == 0
    assert points["sigmoid-allgather"].collective_calls == 2
    assert points["softmax-allgather"].collective_calls == 4
    assert points["softmax-ring"].compute_phases == 2  # home blocks, no rounds at W = 1
    assert points["sigmoid-ring"].matmul_flops == 6 * 8 * 8 * 4


def _method_with_gather():
    def schedule(shape):
        gather = Transfer(
            op="all_gather",
            label="fake.gather",
            bytes_sent=0 * shape.world,
            bytes_received=0 * shape.world,
            messages=0 * shape.world,
        )
        check = Transfer(
            op="all_gather",
            label="rank_check",
            bytes_sent=0 * shape.world,
            bytes_received=0 * shape.world,
            messages=0 * shape.world,
            called_alone=False,
        )
        return Schedule((
            Phase(name="check", pass_="forward", repeat=1, transfers=(check,)),
            Phase(name="block", pass_="forward", repeat=1, matmul_flops=1e9 + 0 * shape.world,
                  transfers=(gather,)),
        ))  # fmt: skip

    return make_method(schedule, lambda s: {"none": 0 * s.batch}, "fake-gather")


def test_step_phase_and_call_costs_with_thread_scaling():
    hw = cpu_hardware(
        **{
            "threads_per_rank": 2,
            "compute.step_overhead_us": 100.0,
            "compute.collective_call_us": 30.0,
            "compute.parallel_efficiency": 0.5,
            "compute.thread_overhead_growth": 0.2,
        }
    )
    p = predict(_method_with_gather(), 1, 1, 1, hardware=hw)
    # W=1 on 2 cores: 2 threads, speedup 1.5, fixed costs x1.2; one gather call, no check
    fixed = 1.2 * (100e-6 + 10e-6 + 30e-6)
    assert p.step_time_s.item() == pytest.approx(fixed + 1e9 / 1e12 / 1.5)
    assert p.compute_s.item() == pytest.approx(p.step_time_s.item())
    assert p.forward_time_s.item() == pytest.approx(p.step_time_s.item())
    slower = predict(
        _method_with_gather(),
        1,
        1,
        1,
        hardware=cpu_hardware(
            **{
                "threads_per_rank": 2,
                "compute.parallel_efficiency": -0.5,
            }
        ),
    )
    assert slower.step_time_s.item() == pytest.approx(10e-6 + 1e9 / 1e12 / 0.5)


def test_the_compute_jitter_is_fitted_on_rate_bound_points_only():
    configs = [
        {"method": m, "batch": b, "dim": 128, "dtype": "fp32"}
        for m in ("sigmoid-ring", "softmax-allgather")
        for b in (16, 96, 384, 1024)
    ]
    # fixed costs of 1 ms a step against 100 GFLOP/s and 0.4 Gelem/s
    one = {"step_overhead_s": 1e-3, "phase_overhead_s": 0.0, "collective_call_s": 0.0,
           "matmul_rate": 1e11, "pointwise_rate": 4e8}  # fmt: skip
    chosen = step_fit.rate_bound_points(configs, one)
    assert [configs[i]["batch"] for i in chosen] == [384, 1024, 384, 1024]
    # with fewer than four such points every point is used
    slow = one | {"step_overhead_s": 1.0}
    assert step_fit.rate_bound_points(configs, slow) == list(range(len(configs)))


def test_the_softmax_losses_elementwise_rate_is_its_own():
    hw = cpu_hardware(**{"compute.softmax_pointwise_ratio": 2.0})
    same = cpu_hardware()
    for method, factor in (("softmax-ring", 2.0), ("sigmoid-ring", 1.0)):
        fast = predict(method, 1, 512, 64, hardware=hw).compute_s.item()
        slow = predict(method, 1, 512, 64, hardware=same).compute_s.item()
        elems = sum(
            float(p.pointwise_elems) for p in step_fit.step_points([method], [512], [64], "fp32")
        )
        rate = same.compute.pointwise_elems_per_s["fp32"]
        # the elementwise seconds shrink by the factor, everything else stays
        assert slow - fast == pytest.approx(elems / rate * (1 - 1 / factor), rel=1e-9, abs=1e-12)
    assert same.compute.softmax_pointwise_ratio == 1.0  # absent from the profile: 1
