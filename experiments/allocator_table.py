"""The model's peak memory against the allocator's over ``tests/test_memory.py``'s grid.

Runs the test's cases (every method, W = 1..8, fp64/fp32/bf16, tiles, overlap on and
off) on 8 local gloo ranks through ``tests/loss_cases.check_case``, and prints per
method the number of points, the ``(model − allocator) / allocator`` largest in size (and where),
and the largest ``(live − allocator)`` and ``(allocator − live)`` gaps in bytes, as a
Markdown table. Rank 0's numbers (every rank holds the same).

Usage: ``python -m experiments.allocator_table`` (about two minutes on 2 vCPUs); the kept
output is in ``docs/allocator-peak.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from loss_cases import run_cases
from spawn import run_world
from test_memory import CASES


def main() -> None:
    rows = run_world(8, run_cases, CASES, timeout_s=900)[0]
    print("| method | points | worst (model − allocator) / allocator | at | "
          "allocator − live, max (B) | live − allocator, max (B) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for method in dict.fromkeys(r["case"].method for r in rows):
        mine = [r for r in rows if r["case"].method == method]
        worst = max(
            mine,
            key=lambda r: (
                abs(r["predicted_peak_bytes"] - r["peak_alloc_bytes"]) / r["peak_alloc_bytes"]
            ),
        )
        err = (worst["predicted_peak_bytes"] - worst["peak_alloc_bytes"]) / worst[
            "peak_alloc_bytes"
        ]
        hidden = max(r["peak_alloc_bytes"] - r["peak_live_bytes"] for r in mine)
        late = max(r["peak_live_bytes"] - r["peak_alloc_bytes"] for r in mine)
        print(
            f"| {method} | {len(mine)} | {100 * err:+.3f}% | {worst['case'].name} | "
            f"{max(hidden, 0)} | {max(late, 0)} |"
        )


if __name__ == "__main__":
    main()
