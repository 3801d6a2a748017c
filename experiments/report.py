"""The Markdown report of one run directory, written from its files alone.

:func:`write_report` reads nothing but what it is given (the run's config, its metadata,
its result records, the model comparisons and the plot files already written), so
``sigsim report RUN_DIR`` regenerates it without rerunning anything. Units: ms
(10^-3 s), MiB (2^20 bytes); every table header carries its unit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from experiments import backends
from experiments.records import Row, failures, rows

MiB = 2**20


CAPTIONS = {
    "memory": "Per-rank peak memory against the global batch, one panel per W: markers "
    "measured (the allocator's peak; live tensors where a record has none, as labelled), "
    "lines the model.",
    "memory_emulated": "Per-rank peak memory against W from emulated ranks, one panel per "
    "local batch: markers measured (allocator, or live tensors as labelled), lines the "
    "model.",
    "bytes": "Bytes sent per rank per step against W at one (b, d): markers measured "
    "(profiling.comm's count), lines the model.",
    "step_time": "Measured step time split into compute (solid) and exposed communication "
    "(pale), hatched: ring overlap off; black ticks: the model's step time.",
    "predicted_vs_measured": "The model against every measured point, y = x with a ±10% "
    "band; hollow markers: emulated ranks.",
    "step_distributions": "Every timed step's time, measured (filled boxes) and "
    "simulated by the event simulator with the profile's fitted jitter (hatched), per "
    "method, W and local batch: box p25-p75, whiskers p10-p90, line the median.",
    "cluster_scale": "The model alone at cluster scale (H100 SXM profile): per-rank memory "
    "(× where a method stops fitting), step time, and communication the overlap "
    "does not hide (dashed: ring overlap off).",
    "maxbatch": "The model alone: largest local and global batch whose peak loss memory "
    "fits in the profile's device memory.",
}


def _table(header: Sequence[str], body: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in body]
    return [*lines, ""]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}"


def _mib(n: float | None) -> str:
    return "–" if n is None else f"{n / MiB:.4g}"


def _options(row: Row) -> str:
    if not backends.is_ring(row.method):
        return "–"
    return ("overlap" if row.overlap else "no overlap") + (f", tile {row.tile}" if row.tile else "")


def results_table(table: Sequence[Row]) -> list[str]:
    header = [
        "method",
        "options",
        "W",
        "b",
        "N = b·W",
        "d",
        "dtype",
        "step (ms)",
        "p10–p90 (ms)",
        "exposed comm (ms)",
        "overlap (%)",
        "sent / rank (MiB)",
        "peak alloc / rank (MiB)",
        "peak live / rank (MiB)",
        "RSS peak (MiB)",
    ]
    body = [
        [
            r.method,
            _options(r),
            r.world,
            r.batch,
            r.global_batch,
            r.dim,
            r.dtype,
            _ms(r.step_time_s),
            f"{_ms(r.step_time_p10_s)}–{_ms(r.step_time_p90_s)}",
            _ms(r.comm_exposed_s),
            "–" if r.overlap_pct is None else f"{r.overlap_pct:.0f}",
            _mib(r.bytes_sent),
            _mib(r.peak_alloc_bytes),
            _mib(r.peak_live_bytes),
            _mib(r.rss_peak_bytes),
        ]
        for r in sorted(table, key=lambda r: (r.method, r.world, r.batch, r.dim, not r.overlap))
    ]
    return _table(header, body)


def environment_table(records: Sequence[dict], hardware_line: str) -> list[str]:
    env = next((r.get("env") for r in records if r.get("env")), {}) or {}
    keys = [
        ("host", "host"),
        ("device_name", "device"),
        ("cpu_count", "CPU cores"),
        ("gpu_count", "GPUs"),
        ("backend", "backend"),
        ("torch", "torch"),
        ("nccl", "NCCL"),
        ("python", "Python"),
    ]
    body = [[label, "–" if env[key] is None else env[key]] for key, label in keys if key in env]
    body.append(["model profile", hardware_line])
    return _table(["", "value"], body)


def summary_table(summary: Sequence[dict]) -> list[str]:
    header = ["quantity", "points", "regime", "geomean |error| (%)", "max |error| (%)"]
    body = [
        [
            s["quantity"],
            s["points"],
            s["regime"],
            "0 (exact)" if s["max_error_pct"] == 0 else f"{s['geomean_error_pct']:.3g}",
            f"{s['max_error_pct']:.3g}",
        ]
        for s in summary
    ]
    return _table(header, body)


def _geomean_abs(errors: Sequence[float]) -> float | None:
    if not errors:
        return None
    return math.exp(sum(math.log(max(abs(e), 1e-6)) for e in errors) / len(errors))


def regime_rows(comparisons: Sequence[backends.Comparison], noise: dict | None = None):
    """Per regime (real ranks within the cores, oversubscribed): points, geomean |error| %
    of the closed form's median, the simulated median and p90 (``simulator.validate``),
    issue 11's targets and the noise floor (``experiments.noise_floor``) where given."""
    from simulator.validate import REGIMES, TARGETS_PCT

    out = []
    for regime in REGIMES:
        mine = [
            c for c in comparisons if not c.emulated and c.oversubscribed == (regime != REGIMES[0])
        ]

        def err(quantity, mine=mine):
            return _geomean_abs([c.error_pct for c in mine if c.quantity == quantity])

        floor = (noise or {}).get(regime) or {}
        out.append(
            {
                "regime": regime,
                "points": sum(c.quantity == "step_time_median_simulated_s" for c in mine),
                "closed_form_median_pct": err("step_time_median_s"),
                "simulated_median_pct": err("step_time_median_simulated_s"),
                "simulated_p90_pct": err("step_time_p90_simulated_s"),
                "target_median_pct": TARGETS_PCT["simulated median"][regime],
                "target_p90_pct": TARGETS_PCT["simulated p90"][regime],
                "noise_median_pct": floor.get("median_pct"),
                "noise_p90_pct": floor.get("p90_pct"),
            }
        )
    return out


def regime_table(rows: Sequence[dict]) -> list[str]:
    """:func:`regime_rows` as Markdown."""

    def pct(value):
        return "–" if value is None else f"{value:.1f}"

    header = [
        "regime",
        "points",
        "closed form, median (%)",
        "simulated median (%) [target]",
        "simulated p90 (%) [target]",
        "noise floor median (%)",
        "noise floor p90 (%)",
    ]
    body = [
        [
            r["regime"],
            r["points"],
            pct(r["closed_form_median_pct"]),
            f"{pct(r['simulated_median_pct'])} [≤ {r['target_median_pct']:g}]",
            f"{pct(r['simulated_p90_pct'])} [≤ {r['target_p90_pct']:g}]",
            pct(r["noise_median_pct"]),
            pct(r["noise_p90_pct"]),
        ]
        for r in rows
    ]
    return _table(header, body)


def comparison_table(comparisons: Sequence[backends.Comparison]) -> list[str]:
    units = {"step_time_s": ("ms", 1e3), "step_time_median_s": ("ms", 1e3)}
    units["step_time_median_simulated_s"] = units["step_time_p90_simulated_s"] = ("ms", 1e3)
    units["peak_memory_bytes"] = ("MiB", 1 / MiB)
    units["bytes_sent"] = ("MiB", 1 / MiB)
    header = ["method", "W", "b", "d", "quantity", "predicted", "measured", "unit", "delta (%)"]
    body = []
    for c in comparisons:
        unit, scale = units.get(c.quantity, ("", 1.0))
        body.append(
            [
                c.method,
                f"{c.world}{' (over cores)' if c.oversubscribed else ''}",
                c.batch,
                c.dim,
                c.quantity,
                f"{c.predicted * scale:.4g}",
                f"{c.measured * scale:.4g}",
                unit,
                f"{c.error_pct:+.1f}",
            ]
        )
    return _table(header, body)


def method_section(config: dict, meta: dict) -> list[str]:
    cores = meta.get("cpu_count", "?")
    return [
        "## Method",
        "",
        f"* Each point starts W processes ({config['backend']} on {config['device']}), "
        f"runs {config['warmup']} untimed warm-up steps, then {config['steps']} timed steps "
        "of the loss forward + backward on fresh random L2-normalised features "
        f"(seed {config['seed']}).",
        "* Times: per step the maximum over ranks (the slowest rank sets the step), then the "
        "median over timed steps; p10–p90 is the spread over steps. Exposed communication is "
        "time a rank spent blocked in communication; the rest of the step is compute.",
        "* Validation: the model predicts the lower quartile of the timed steps "
        "(`step_time_s`), the step as it typically runs when the host's scheduler delays "
        "no rank, and calibration fits the same "
        "statistic; the median step (`step_time_median_s`) is compared with the same "
        "prediction beside it, so the delays a shared host adds stay in view "
        "(`simulator.model`, STEP_STATISTIC).",
        "* Bytes and peak memory are rank 0's (every rank of these methods moves and holds "
        "the same amounts). Peak alloc is the allocator's peak during one forward + "
        "backward, above its level at the step's start, every allocation counted (operator "
        "scratch included): the model's peak memory is validated against it. Peak live is "
        "the peak of bytes held by tensors created in that step (inputs excluded, their "
        "gradients included), a second view; RSS is the process's resident set, for "
        "reference.",
        "* Emulated points: one process plays rank 0 of a W-rank world, generating its "
        "peers' tensors; bytes are counted as if sent.",
        f"* This machine has {cores} CPU cores: points with W above it run oversubscribed "
        "(processes share cores) and are reported as their own regime in the validation.",
        "* Units: ms = 10^-3 s, MiB = 2^20 bytes. Bytes are per rank per step.",
        "",
    ]


def write_report(
    run_dir: Path,
    *,
    config: dict,
    meta: dict,
    records: Sequence[dict],
    comparisons: Sequence[backends.Comparison],
    summary: Sequence[dict],
    hardware_line: str,
    plot_files: Sequence[Path],
    profile_warning: str | None = None,
    noise: dict | None = None,
    jitter_line: str | None = None,
) -> Path:
    """Write ``run_dir/report.md`` and return its path; ``profile_warning`` (a profile
    marked poor by its calibration) opens it; ``noise`` (``experiments.noise_floor``'s
    summary) goes beside the validation by regime, ``jitter_line`` says what jitter the
    simulated rows drew."""
    real, emulated = rows(records, emulated=False), rows(records, emulated=True)
    lines = [f"# sigsim run: {config['name']}", ""]
    if profile_warning:
        lines += [profile_warning, ""]
    if config.get("description"):
        lines += [config["description"], ""]
    lines += [
        f"Run directory `{run_dir}`, command `{meta.get('command', 'sigsim run')}`, "
        f"started {meta.get('started_utc', '?')} (UTC).",
        "",
    ]
    timings = meta.get("phases_s", {})
    if timings:
        lines += _table(["phase", "wall time (s)"], [[k, f"{v:.1f}"] for k, v in timings.items()])
    lines += ["## Hardware and software", "", *environment_table(records, hardware_line)]
    lines += method_section(config, meta)
    lines += ["## Results", "", f"{len(real)} points measured with real processes.", ""]
    lines += results_table(real)
    if emulated:
        lines += ["### Emulated ranks", "", *results_table(emulated)]
    failed = failures(records)
    if failed:
        lines += ["### Points that did not finish", ""]
        lines += _table(
            ["method", "W", "b", "d", "status", "message"],
            [
                [
                    f["config"]["method"],
                    f["config"]["world"],
                    f["config"]["batch"],
                    f["config"]["dim"],
                    f["status"],
                    str(f.get("message") or "").replace("|", "/").splitlines()[0][:160]
                    if f.get("message")
                    else "–",
                ]
                for f in failed
            ],
        )
    lines += ["## Validation: model vs measurement", ""]
    if comparisons:
        lines += [f"Model profile: {hardware_line}.", "", *summary_table(summary)]
        lines += [
            "### Step time by regime: closed form and event simulator",
            "",
            "Geomean |error| of the closed form against the measured median step, and of "
            "the event simulator's median and p90 step (`simulator.simulate`, 150 steps, "
            "the profile's fitted jitter) against the measured median and p90; targets "
            "from issue 11; the noise floor is how far the same points move between "
            "launches (`sigsim noise-floor`), an error below it is as good as this machine "
            "can show." + (f" {jitter_line}." if jitter_line else ""),
            "",
            *regime_table(regime_rows(comparisons, noise)),
        ]
        lines += ["<details><summary>Every point</summary>", "", *comparison_table(comparisons)]
        lines += ["</details>", ""]
    else:
        lines += ["No successful points to compare.", ""]
    lines += ["## Plots", "", "Each plot is also written as SVG beside its PNG.", ""]
    for path in plot_files:
        if path.suffix == ".png":
            caption = CAPTIONS.get(path.stem)
            lines += [f"![{path.stem}]({path.name})", ""] + ([caption, ""] if caption else [])
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out
