"""``sigsim simulate`` end to end: the JSON summary, and the Chrome trace it writes (a
process per rank, compute and communication slices named as the code labels its
transfers, slices of one thread that never overlap, the step's end where it says)."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict

import numpy as np
import pytest

from experiments.cli import main
from simulator import predict, simulate
from simulator.trace import chrome_trace


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["simulate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    ("method", "world"), [("sigmoid-ring", 4), ("sigmoid-ring-bidir", 5), ("softmax-allgather", 3)]
)
def test_trace_has_a_process_per_rank_and_the_code_s_labels(tmp_path, capsys, method, world):
    path = tmp_path / "sim.json"
    args = ["--method", method, "--world", str(world), "--batch", "64", "--dim", "32"]
    args += ["--hardware", "h100-sxm", "--steps", "3", "--jitter", "lognormal:0.2"]
    code, out, _ = _run(capsys, *args, "--trace", str(path), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["trace"] == str(path)
    assert summary["min_s"] <= summary["median_s"] <= summary["p90_s"] <= summary["max_s"]
    trace = json.loads(path.read_text())
    events = trace["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names == {r: f"rank {r}" for r in range(world)}
    slices = [e for e in events if e["ph"] == "X"]
    by_rank = defaultdict(set)
    for e in slices:
        assert 0 <= e["pid"] < world and e["dur"] > 0 and e["ts"] >= 0
        by_rank[e["pid"]].add(e["cat"])
    for rank in range(world):
        assert {"compute"} <= by_rank[rank]
        assert by_rank[rank] & {"p2p", "collective"}
    closed = predict(method, world, 64, 32, hardware="h100-sxm")
    moving = {k for k, row in closed.bytes_by_op.items() if row["messages"] > 0}
    comm_names = {e["name"] for e in slices if e["cat"] in ("p2p", "collective")}
    assert comm_names == moving
    lanes = defaultdict(list)
    for e in slices:
        lanes[e["pid"], e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
    for spans in lanes.values():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end - 1e-6  # one thread: no overlapping slices
    last = max(e["ts"] + e["dur"] for e in slices)
    assert trace["otherData"]["step0_s"] * 1e6 >= last - 1e-6


def test_table_output_and_one_line_errors(capsys):
    code, out, _ = _run(capsys, "--world", "4", "--hardware", "a100-sxm-80gb", "--steps", "2")
    assert code == 0
    assert "step (ms)" in out and "median" in out and "p90" in out and "closed form" in out
    for bad, needle in (
        (["--stragglers", "9:2"], "straggler rank 9"),
        (["--jitter", "gauss:0.1"], "unknown jitter distribution"),
        (["--slow-node", "0:2,1:2"], "one INDEX:SLOWDOWN"),
        (["--method", "nope"], "unknown method"),
    ):
        code, _, err = _run(capsys, "--world", "8", "--hardware", "h100-sxm", *bad)
        assert code == 2
        assert needle in err and err.count("\n") == 1


def test_a_simulation_without_timeline_has_no_trace():
    sim = simulate("sigmoid-ring", 2, 8, 8, hardware="h100-sxm", steps=1)
    with pytest.raises(ValueError, match="trace=True"):
        chrome_trace(sim)
    traced = simulate("sigmoid-ring", 2, 8, 8, hardware="h100-sxm", steps=1, trace=True)
    ends = [float(np.max(s.end_s)) for s in traced.timeline]
    assert max(ends) == pytest.approx(float(traced.step_time_s[0]))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigsim_trace_writes_measured_and_simulated_side_by_side(tmp_path, capsys):
    """One W = 2 gloo point, profiled: both files have a process per rank, compute and
    communication slices, and the same communication labels."""
    world = 2
    args = ["trace", "--method", "sigmoid-ring", "--world", str(world), "--batch", "16"]
    args += ["--dim", "8", "--hardware", "h100-sxm", "--warmup", "1", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "measured" in out and "simulated" in out
    labels = {}
    for name in ("measured", "simulated"):
        events = json.loads((tmp_path / f"{name}.json").read_text())["traceEvents"]
        names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
        assert names == {r: f"rank {r}" for r in range(world)}, name
        slices = [e for e in events if e["ph"] == "X"]
        for rank in range(world):
            cats = {e["cat"] for e in slices if e["pid"] == rank}
            assert {"compute", "p2p", "collective"} <= cats, (name, rank, cats)
        assert min(e["ts"] for e in slices) >= 0
        labels[name] = {e["name"] for e in slices if e["cat"] in ("p2p", "collective", "wait")}
    assert {"p2p:sigmoid.payload", "p2p:sigmoid.acc", "all_gather:rank_check"} <= labels["measured"]
    comm = {label for label in labels["simulated"] if not label.startswith("wait ")}
    assert comm <= labels["measured"]
    assert {label.removeprefix("wait ") for label in labels["measured"]} == comm
