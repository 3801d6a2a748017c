"""The stragglers-at-scale scenario (experiments/plots_stragglers.py): its records, the
crossover it reads from them, and the figure and files its command writes."""

from __future__ import annotations

import json

import pytest

from experiments import plots_stragglers
from experiments.plots_stragglers import CASES, FAMILIES, crossover, simulate_grid


def _record(method, world, case, median):
    return {"method": method, "world": world, "stragglers": case, "median_ms": median}


def test_crossover_finds_where_the_ring_stays_faster():
    records = []
    for case, _ in CASES:
        for world, ring, gather in ((8, 2.0, 1.0), (16, 2.0, 3.0), (32, 2.0, 1.5), (64, 2, 4)):
            for method in FAMILIES["sigmoid"][:-1] + FAMILIES["softmax"][:-1]:
                records.append(_record(method, world, case, ring))
            for method in (FAMILIES["sigmoid"][-1], FAMILIES["softmax"][-1]):
                records.append(_record(method, world, case, gather))
    out = crossover(records)
    assert len(out) == 3 * len(CASES)
    for row in out:
        assert row["allgather_faster_at"] == [8, 32]
        assert row["ring_faster_from"] == 64  # W = 32 breaks the run from 16
        assert row["allgather_faster_from"] is None
        assert row["allgather_over_ring_at_largest"] == pytest.approx(2.0)


def test_grid_records_and_command_writes_its_files(tmp_path):
    records = simulate_grid(worlds=(8, 16), steps=5, slowdown=3.0)
    methods = [m for ms in FAMILIES.values() for m in ms]
    assert len(records) == len(methods) * 2 * len(CASES)
    one = {(r["method"], r["world"], r["stragglers"]): r for r in records}
    for method in methods:
        quiet, slow = one[method, 16, "none"], one[method, 16, "one"]
        assert slow["straggling_ranks"] == 1 and quiet["straggling_ranks"] == 0
        assert quiet["p90_ms"] >= quiet["median_ms"] > 0
        assert slow["median_ms"] > quiet["median_ms"]  # a 3× rank costs every method
        assert quiet["coarse"] == 1 and quiet["fits"]
    assert plots_stragglers.main(["--out", str(tmp_path), "--largest", "16", "--steps", "3"]) == 0
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    assert len(lines) == len(records)
    assert json.loads(lines[0])["hardware"] == "h100-sxm"
    assert len(json.loads((tmp_path / "crossover.json").read_text())) == 3 * len(CASES)
    assert (tmp_path / "step_vs_world.png").stat().st_size > 10_000
    (tmp_path / "ratio_vs_world.png").unlink()
    assert plots_stragglers.main(["--out", str(tmp_path), "--replot"]) == 0  # no simulating
    assert (tmp_path / "ratio_vs_world.png").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        plots_stragglers.main(["--out", str(tmp_path), "--largest", "100"])
