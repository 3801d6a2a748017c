"""The Markdown report and the records it reads: the last record of a key wins, failed
points are listed with their status and message (never dropped), every table header
carries its unit, and the validation summary gives geomean and max error per quantity.
Records are built from a seeded generator in the profiler's schema; no processes."""

from __future__ import annotations

import re

import pytest
from test_plots import synthetic_records

from experiments import backends, report
from experiments.records import failures, latest, rows
from profiling.losses import METHODS


@pytest.fixture(scope="module")
def hardware():
    return backends.hardware_for("h100-sxm")


def with_failures(records):
    broken = dict(records[0], key="broken", status="oom", message="rank 1: OutOfMemoryError: x")
    broken["measured"] = None
    timeout = dict(records[1], key="slow", status="timeout", message="no answer in 120 s")
    timeout["measured"] = None
    return [*records, broken, timeout]


def test_last_record_of_a_key_wins(hardware):
    records = synthetic_records(1, hardware, worlds=(2,), batches=(8,))
    redo = dict(records[0], status="ok")
    redo["measured"] = dict(records[0]["measured"], bytes_sent=12345)
    table = rows([*records, redo])
    assert len(table) == len(records)
    assert sum(r.bytes_sent == 12345 for r in table) == 1
    assert latest([*records, redo])[0]["measured"]["bytes_sent"] == 12345


def test_report_lists_failures_units_and_validation(hardware, tmp_path):
    records = with_failures(synthetic_records(2, hardware, worlds=(1, 2), batches=(8, 32)))
    assert [f["status"] for f in failures(records)] == ["oom", "timeout"]
    comparisons, summary = backends.compare(records, hardware)
    config = {"name": "unit", "backend": "gloo", "device": "cpu", "warmup": 2, "steps": 5}
    config |= {"seed": 0, "description": "a unit test"}
    meta = {"command": "sigsim run unit.toml", "phases_s": {"measurement": 1.5, "total": 2.0}}
    path = report.write_report(
        tmp_path,
        config=config,
        meta=meta,
        records=records,
        comparisons=comparisons,
        summary=summary,
        hardware_line="h100-sxm",
        plot_files=[tmp_path / "memory.png", tmp_path / "memory.svg"],
    )
    text = path.read_text()
    assert "### Points that did not finish" in text
    assert "| oom | rank 1: OutOfMemoryError: x |" in text and "| timeout |" in text
    assert "![memory](memory.png)" in text and "memory.svg" not in text
    assert "maximum over ranks" in text and "median over timed steps" in text
    headers = [line for line in text.splitlines() if line.startswith("| method | options")]
    assert headers
    for cell in (
        "step (ms)",
        "sent / rank (MiB)",
        "peak alloc / rank (MiB)",
        "peak live / rank (MiB)",
    ):
        assert cell in headers[0]
    # Every method's measured rows appear; the failed ones are not in the results table.
    for method in METHODS:
        assert f"| {method} |" in text
    summary_rows = [r for r in summary if r["regime"] == "real ranks: all"]
    assert {r["quantity"] for r in summary_rows} == {
        "bytes_sent",
        "peak_memory_bytes",
        "step_time_s",
        "step_time_median_s",
        "step_time_median_simulated_s",
        "step_time_p90_simulated_s",
    }
    bytes_all = next(r for r in summary_rows if r["quantity"] == "bytes_sent")
    assert bytes_all["max_error_pct"] == 0
    assert re.search(r"\| bytes_sent \| \d+ \| real ranks: all \| 0 \(exact\) \| 0 \|", text)
    step_all = next(r for r in summary_rows if r["quantity"] == "step_time_s")
    assert 0 < step_all["geomean_error_pct"] <= step_all["max_error_pct"] <= 25
