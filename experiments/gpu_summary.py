"""The closing summary of ``experiments.gpu_check``: two tables as plain text.

Read back from the files the check wrote (results and correctness JSON lines), so the
summary shows exactly what was recorded. Uses rich when it is installed, plain columns
otherwise.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from profiling import results

MiB = 1024**2
RESULT_COLUMNS = (
    "part",
    "method",
    "W",
    "b",
    "dtype",
    "status",
    "step median (ms)",
    "live peak (MiB)",
    "alloc peak (MiB)",
    "NVML used (MiB)",
    "sent/rank (MiB)",
)


def _mib(value) -> str:
    if value is None:
        return ""
    return f"{value / MiB:,.1f}" if value >= 10 * MiB else f"{value / MiB:.4f}"


def result_rows(records: list[dict]) -> list[tuple[str, ...]]:
    rows = []
    for r in records:
        c, m = r["config"], r.get("measured") or {}
        step = m.get("step_time_s") or {}
        status = "skipped" if r.get("skipped") else r["status"]
        rows.append(
            (
                r.get("part", ""),
                c["method"],
                str(c["world"]),
                str(c["batch"]),
                c["dtype"] + (f" amp {c['autocast']}" if c.get("autocast") else ""),
                status,
                f"{step['median'] * 1e3:,.2f}" if step else "",
                _mib(m.get("peak_live_bytes")),
                _mib(m.get("peak_alloc_bytes", m.get("peak_cuda_allocated_bytes"))),
                _mib(m.get("nvml_used_bytes")),
                _mib(m.get("bytes_sent")),
            )
        )
    return rows


def correctness_rows(lines: list[dict]) -> list[tuple[str, ...]]:
    rows = []
    for c in lines:
        verdict = {True: "PASS", False: "FAIL", None: "SKIPPED"}[c.get("passed")]
        error = c.get("max_rel_error")
        detail = (
            f"{error:.1e} (tol {c['tolerance']:g})" if error is not None else c.get("error", "")
        )
        rows.append((c["method"], str(c["world"]), c.get("where", ""), verdict, detail))
    return rows


def _render(title: str, headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        lines = [title, "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
        return "\n".join(lines)
    table = Table(title=title, title_justify="left")
    for header in headers:
        table.add_column(header)
    for row in rows:
        table.add_row(*row)
    console = Console(record=True, width=150, file=io.StringIO())
    console.print(table)
    return console.export_text()


def summary_text(results_path: Path, correctness_path: Path) -> str:
    records = results.read_records(results_path)
    correct = []
    if correctness_path.exists():
        correct = [json.loads(s) for s in correctness_path.read_text().splitlines() if s.strip()]
    parts = [
        _render(
            "correctness against reference_loss (fp32)",
            ("method", "W", "where", "verdict", "max rel error"),
            correctness_rows(correct),
        ),
        _render("measured points", RESULT_COLUMNS, result_rows(records)),
    ]
    counts: dict[str, int] = {}
    for row in result_rows(records):
        counts[row[4]] = counts.get(row[4], 0) + 1
    passed = sum(1 for c in correct if c.get("passed"))
    parts.append(
        f"points: {', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}; "
        f"correctness: {passed}/{len(correct)} PASS"
    )
    return "\n".join(parts)
