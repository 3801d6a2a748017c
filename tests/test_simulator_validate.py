"""Validation and the command line: a synthetic results file whose measurements are the
predictions off by known factors gives those deltas, per point and per regime; bad CLI
input exits 2 with one line."""

from __future__ import annotations

import io
import json
import math

import pytest
from rich.console import Console

from experiments.cli import main
from simulator import predict
from simulator.model import STEP_STATISTIC
from simulator.validate import message_bucket, validate
from tests.simulator_fakes import cpu_hardware, profile_dict, rng


def _record(key, config, measured, status="ok"):
    return {"schema": 1, "key": key, "status": status, "message": None,
            "config": config, "env": {"host": "test"}, "measured": measured}  # fmt: skip


def _synthetic(tmp_path, factors):
    """Records for sigmoid-ring at W ∈ {2, 4}: measured = predicted / factor, per quantity
    (the model's statistic of the steps by ``time``, their median by ``median``)."""
    hw = cpu_hardware()
    lines, expected = [], {}
    for i, (world, batch, dim) in enumerate([(2, 64, 32), (2, 256, 128), (4, 64, 32)]):
        config = {"method": "sigmoid-ring", "world": world, "batch": batch, "dim": dim,
                  "dtype": "fp32", "backend": "gloo", "emulate": None, "overlap": True,
                  "tile": None}  # fmt: skip
        p = predict("sigmoid-ring", world, batch, dim, "fp32", hw, overlap=True, tile=None)
        f = factors[i]
        measured = {
            "bytes_sent": int(p.bytes_sent),
            "messages": int(p.messages),
            "peak_alloc_bytes": float(p.peak_memory_bytes) / f["memory"],
            "peak_live_bytes": 0.5 * float(p.peak_memory_bytes),  # not what is validated
            "step_time_s": {
                STEP_STATISTIC: float(p.step_time_s) / f["time"],
                "median": float(p.step_time_s) / f.get("median", f["time"]),
            },
        }
        lines.append(_record(f"k{i}", config, measured))
        expected[(world, batch, "step time")] = 100 * (f["time"] - 1)
        expected[(world, batch, "step time (median)")] = 100 * (f.get("median", f["time"]) - 1)
        expected[(world, batch, "peak memory")] = 100 * (f["memory"] - 1)
        expected[(world, batch, "bytes sent")] = 0.0
    lines.append(_record("k9", lines[0]["config"] | {"world": 8}, None, status="oom"))
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    hw_path = tmp_path / "cpu.json"
    hw_path.write_text(json.dumps(profile_dict(**{
        "cores": 2, "ranks_per_node": {"value": None, "source": "t"}, "comm_uses_cores": True,
        "memory_shared": True, "inter_node": None,
        "intra_node.oversubscribed_wait_us": 1000.0})))  # fmt: skip
    return path, hw_path, expected


def test_validate_reports_the_known_deltas(tmp_path):
    gen = rng(7)
    factors = [{"time": float(gen.uniform(0.8, 1.25)), "memory": float(gen.uniform(0.97, 1.03)),
                "median": float(gen.uniform(0.5, 0.8))} for _ in range(3)]  # fmt: skip
    path, hw_path, expected = _synthetic(tmp_path, factors)
    console = Console(record=True, width=200)
    summary = validate([path], str(hw_path), console)
    assert summary["points_compared"] == 3 and summary["skipped"] == {"oom": 1}
    simulated = [r for r in summary["rows"] if r["quantity"].startswith("simulated")]
    assert {r["quantity"] for r in simulated} == {"simulated median"}  # no p90 in records
    for row in summary["rows"]:
        if row in simulated:  # the event simulator's own error: tests/test_validate_regimes.py
            continue
        want = expected[(row["world"], row["batch"], row["quantity"])]
        assert row["delta_pct"] == pytest.approx(want, abs=1e-9)
    steps = [abs(expected[k]) for k in expected if k[2] == "step time"]
    stats = summary["quantities"]["step time"]
    assert stats["all"]["max_abs_err_pct"] == pytest.approx(max(steps))
    geomean = math.exp(sum(math.log(s) for s in steps) / 3)
    assert stats["all"]["geomean_abs_err_pct"] == pytest.approx(geomean)
    assert stats["by_world"]["W=4"]["points"] == 1
    assert stats["by_oversubscription"]["oversubscribed"]["points"] == 1
    assert stats["by_oversubscription"]["ranks <= cores"]["points"] == 2
    assert summary["quantities"]["bytes sent"]["all"]["max_abs_err_pct"] == 0.0
    medians = [abs(expected[k]) for k in expected if k[2] == "step time (median)"]
    assert summary["quantities"]["step time (median)"]["all"]["max_abs_err_pct"] == (
        pytest.approx(max(medians))
    )
    text = console.export_text()
    assert "error summary" in text and "not compared (status not ok): 1 oom" in text
    first = summary["rows"][2]  # W=2 b=64 step time
    assert f"{first['delta_pct']:+.2f}" in text


def test_last_record_of_a_key_wins_and_buckets(tmp_path):
    path, hw_path, _ = _synthetic(tmp_path, [{"time": 1.0, "memory": 1.0}] * 3)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    rewritten = dict(records[0])
    rewritten["measured"] = dict(rewritten["measured"], bytes_sent=1)
    path.write_text(path.read_text() + json.dumps(rewritten) + "\n")
    summary = validate([path], str(hw_path), Console(file=io.StringIO()))
    assert summary["points_compared"] == 3
    assert summary["quantities"]["bytes sent"]["all"]["max_abs_err_pct"] > 1e6
    assert message_bucket(0, 0) == "no messages"
    assert message_bucket(100 * 2**10, 1) == "64 KiB-1 MiB"
    assert message_bucket(8 * 2**20, 2) == ">= 1 MiB"


def test_cli_predict_validate_and_errors(tmp_path, capsys):
    assert main(["predict", "--method", "sigmoid-ring", "--world", "1,2,4", "--batch", "64",
                 "--dim", "32", "--hardware", "h100-sxm"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "Model on h100-sxm, fp32" in out and "step (ms)" in out
    assert main(["predict", "--method", "softmax-ring", "--world", "2", "--batch", "8",
                 "--dim", "4", "--hardware", "a100-sxm-80gb", "--json"]) == 0  # fmt: skip
    point = json.loads(capsys.readouterr().out)
    assert point["world"] == 2 and point["hardware"] == "a100-sxm-80gb"
    path, hw_path, _ = _synthetic(tmp_path, [{"time": 1.1, "memory": 1.0}] * 3)
    summary_path = tmp_path / "summary.json"
    assert main(["validate", str(path), "--hardware", str(hw_path),
                 "--summary-json", str(summary_path)]) == 0  # fmt: skip
    assert json.loads(summary_path.read_text())["points_compared"] == 3
    capsys.readouterr()
    assert main(["validate", str(path), "--hardware", str(hw_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["points_compared"] == 3
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"name": "x"}))
    for argv, message in [
        (["predict", "--method", "nope", "--world", "2", "--batch", "8", "--dim", "4"],
         "unknown method 'nope'"),
        (["predict", "--method", "sigmoid-ring", "--world", "0", "--batch", "8", "--dim", "4"],
         "world must be at least 1"),
        (["predict", "--method", "sigmoid-ring", "--world", "2", "--batch", "8", "--dim", "4",
          "--hardware", "tpu"], "unknown hardware 'tpu'"),
        (["predict", "--method", "sigmoid-ring", "--world", "2", "--batch", "8", "--dim", "4",
          "--hardware", str(broken)], "missing key 'summary'"),
        (["validate", str(tmp_path / "absent.jsonl"), "--hardware", "h100-sxm"], "cannot read"),
    ]:  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
