"""Every measured number in README.md, regenerated from the records kept in the repository.

README.md (and ``experiments/results/README.md``) hold each measured number inside a
generated block::

    <!-- sigsim:begin NAME -->
    ... text written by the function registered as NAME ...
    <!-- sigsim:end NAME -->

``sigsim readme`` rewrites every block from the committed records under
``experiments/results/`` (run directories, JSON lines, summaries); it never measures.
``sigsim readme --check`` exits with status 1 and names the blocks whose text differs
from what the records give, so a number retyped by hand, or a record changed without
regenerating, fails the test suite (``tests/test_readme.py``). Each block names the
record it comes from and the machine that produced it.

Adding a block is one function: write ``def _name(results: Path) -> str`` returning the
block's Markdown (read records with :func:`profiling.results.read_records` or the JSON
files of a run directory; end with the source sentence of :func:`_source`), decorate it
with ``@block("name")`` (``document=RESULTS_README`` for the results folder's page), put
the two markers where it belongs and run ``sigsim readme``. What the records cannot say
(whether other jobs loaded the machine) is written beside the folder in
:data:`CONDITIONS`, else read from the load averages ``sigsim run`` writes into a run
directory's ``run.json``. A new kept run of the default experiment (a folder under
``experiments/results/`` whose ``run.json`` names the config ``default``) joins the
default-run blocks by itself.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from profiling.results import read_records

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "experiments" / "results"
RESULTS_README = RESULTS / "README.md"
DOCUMENTS = (README, RESULTS_README)
"""The files with generated blocks; each block belongs to one."""
MiB = 2**20
GiB = 2**30

#: How loaded the machine was while each kept folder was measured (the records do not
#: say), as noted when the folder was committed.
CONDITIONS = {
    "cpu2-default-run": "quiet",
    "xeon2-default-run": "quiet",
    "xeon2-default-run-pooled": "quiet",
    "xeon2-default-run-preemption": "quiet (no other job; the load averages in run.json are the run's own ranks)",
    "xeon2-default-run-family-rates": "quiet (no other job; the load averages in run.json are the run's own ranks)",
    "peers": "quiet",
    "h200-gpu-check": "a machine lent for minutes; other load not recorded",
    "h100-profiler-grid": "a machine lent for minutes; other load not recorded",
    "h100-simulator-check": "a machine lent for minutes; other load not recorded",
}
BEGIN = re.compile(r"<!-- sigsim:begin ([a-z0-9-]+) -->\n")
END = "<!-- sigsim:end {name} -->"


@dataclass(frozen=True, slots=True)
class Block:
    """One generated block of README.md."""

    name: str
    """The marker name: ``<!-- sigsim:begin NAME -->``."""
    render: Callable[[Path], str]
    """Writes the block's Markdown from the records under the results folder given."""
    document: Path
    """The file the block lives in (one of :data:`DOCUMENTS`)."""


BLOCKS: dict[str, Block] = {}


def block(name: str, document: Path = README):
    """Register ``render`` as the writer of block ``name`` of ``document``."""

    def register(render: Callable[[Path], str]) -> Callable[[Path], str]:
        if name in BLOCKS:
            raise ValueError(f"README block {name!r} registered twice")
        BLOCKS[name] = Block(name, render, document)
        return render

    return register


# --- reading the records --------------------------------------------------------------


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"README block source {path} does not exist") from None


def _records(path: Path) -> list[dict]:
    return read_records(path, must_exist=True)


def _machine(env: dict) -> str:
    """``2-core Intel(R) Xeon(R) Processor, torch 2.13.0+cpu, gloo`` from a record's env."""
    if env.get("gpu_count"):
        device = f"one {env['device_name']} ({env['cpu_count']} CPU cores)"
    else:
        device = f"{env['cpu_count']}-core {env['device_name']} VM"
    software = f"torch {env['torch']}, {env['backend']}"
    if env.get("nccl"):
        software += f" {env['nccl']}"
    return f"{device}, {software}"


def _dated(env: dict) -> str:
    return f"{_machine(env)}; {env['time_utc'][:10]}"


def _recorded_load(meta_path: Path) -> str:
    """The load averages ``sigsim run`` wrote into run.json (1, 5, 15 min), if any."""
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    loads = [
        f"{when} {meta[key][0]:g}"
        for when, key in (("start", "load_average_at_start"), ("end", "load_average_at_end"))
        if meta.get(key)
    ]
    return "1-min load average " + ", ".join(loads) if loads else "load not recorded"


def _source(results: Path, folder: str, env: dict, what: str = "") -> str:
    """The sentence every block ends with: the record, its machine, date and load."""
    date = env.get("time_utc", "")[:10]
    load = CONDITIONS.get(folder) or _recorded_load(results / folder / "run.json")
    where = f"`experiments/results/{folder}/{what}`"  # as committed, wherever read from
    return f"Source: {where} ({_machine(env)}; {date}; {load})."


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _pct(value: float) -> str:
    """An error in percent with about two significant digits; 'exact' below 1e-4 %."""
    if value < 1e-4:
        return "exact"
    digits = max(0, 1 - math.floor(math.log10(value)))
    return f"{value:.{min(digits, 3)}f}%"


def default_runs(results: Path) -> list[str]:
    """The kept runs of the default experiment (``sigsim run``), oldest first."""
    runs = []
    for meta_path in results.glob("*/run.json"):
        meta = _json(meta_path)
        if meta.get("name") == "default" and (meta_path.parent / "validation.json").is_file():
            runs.append((meta.get("started_utc", ""), meta_path.parent.name))
    return [folder for _, folder in sorted(runs)]


def _run(results: Path, folder: str) -> tuple[dict, list[dict], dict]:
    """(run.json, records, validation.json) of a kept run directory."""
    path = results / folder
    return (
        _json(path / "run.json"),
        _records(path / "results.jsonl"),
        _json(path / "validation.json"),
    )


# --- the blocks -----------------------------------------------------------------------


@block("time-budget")
def _time_budget(results: Path) -> str:
    """The default run's wall time by phase, per kept run (newest first)."""
    parts = []
    for folder in reversed(default_runs(results)):
        meta, records, _ = _run(results, folder)
        phases = meta["phases_s"]
        env = records[0]["env"]
        split = [
            f"{label} {_duration(phases[key])}"
            for key, label in (
                ("calibration", "calibration"),
                ("measurement", "measurement"),
                ("validation, plots and report", "report"),
            )
            if key in phases
        ]
        if "calibration" not in phases:
            split.insert(0, "the machine already calibrated")
        parts.append(
            f"{_duration(phases['total'])} on the {env['cpu_count']}-core "
            f"{env['device_name']} VM on {env['time_utc'][:10]} ({'; '.join(split)}; "
            f"`experiments/results/{folder}/run.json`)"
        )
    return "The default run took " + ", and ".join(parts) + ".\n"


VALIDATION_ROWS = (
    ("bytes_sent", "real ranks: all", "bytes sent", "all points"),
    ("peak_memory_bytes", "real ranks: all", "peak memory (allocator)", "all points"),
    ("step_time_s", "ranks vs cores: ranks <= cores", "step time (lower quartile)", "W ≤ cores"),
    ("step_time_s", "ranks vs cores: oversubscribed", "step time (lower quartile)", "W > cores"),
    ("step_time_median_s", "ranks vs cores: ranks <= cores", "step time (median)", "W ≤ cores"),
    ("step_time_median_s", "ranks vs cores: oversubscribed", "step time (median)", "W > cores"),
    ("step_time_median_simulated_s", "ranks vs cores: ranks <= cores",
     "step time (simulated median)", "W ≤ cores"),
    ("step_time_median_simulated_s", "ranks vs cores: oversubscribed",
     "step time (simulated median)", "W > cores"),
    ("step_time_p90_simulated_s", "ranks vs cores: ranks <= cores",
     "step time (simulated p90)", "W ≤ cores"),
    ("step_time_p90_simulated_s", "ranks vs cores: oversubscribed",
     "step time (simulated p90)", "W > cores"),
)  # fmt: skip


@block("default-run-validation")
def _default_run_validation(results: Path) -> str:
    """Geomean / max error of the model per quantity and regime, one column per kept run."""
    runs = []
    for folder in default_runs(results):
        _, records, validation = _run(results, folder)
        summary = {(s["quantity"], s["regime"]): s for s in validation["summary"]}
        runs.append((folder, records[0]["env"], summary))
    header = "| quantity | regime | " + " | ".join(f"`{f}`" for f, _, _ in runs) + " |"
    lines = [header, "|---|---|" + "---|" * len(runs)]
    for quantity, regime, label, regime_label in VALIDATION_ROWS:
        cells = []
        for _, _, summary in runs:
            s = summary.get((quantity, regime))
            if s is None:
                cells.append("–")
            elif s["max_error_pct"] < 1e-4:
                cells.append(f"exact ({s['points']})")
            else:
                geomean, worst = _pct(s["geomean_error_pct"]), _pct(s["max_error_pct"])
                cells.append(f"{geomean} / {worst} ({s['points']})")
        lines.append(f"| {label} | {regime_label} | " + " | ".join(cells) + " |")
    floors = [_noise_floor(results / folder) for folder, _, _ in runs]
    for statistic in ("median", "p90"):
        for regime, regime_label in (
            ("ranks <= cores", "W ≤ cores"),
            ("oversubscribed", "W > cores"),
        ):
            cells = [
                "–" if floor is None or regime not in floor
                else f"{_pct(floor[regime][statistic + '_pct'])} ({floor[regime]['points']})"
                for floor in floors
            ]  # fmt: skip
            lines.append(
                f"| noise floor ({statistic}; geomean only) | {regime_label} | "
                + " | ".join(cells) + " |"
            )  # fmt: skip
    sources = " ".join(_source(results, f, env, "validation.json") for f, env, _ in runs)
    return (
        "|predicted − measured| / measured, geometric mean / max over points (number of "
        "points); each run validated against the profile it calibrated, with the model of "
        "its day. The noise floor (`sigsim noise-floor`, `noise_floor.json` where the run "
        "has one) is how far a few points' own medians and p90s moved between launches: "
        "an error below it is as good as the machine can show.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + sources
        + "\n"
    )


def _noise_floor(folder: Path) -> dict | None:
    """A kept run's ``noise_floor.json`` (``sigsim noise-floor --out RUN_DIR``), if any."""
    path = folder / "noise_floor.json"
    return _json(path) if path.exists() else None


@block("default-run-bytes-memory")
def _default_run_bytes_memory(results: Path) -> str:
    """Bytes and allocator peak per method and W at one shape of the newest default run."""
    folder = default_runs(results)[-1]
    _, records, validation = _run(results, folder)
    batch, dim = 512, 64
    model = {
        (p["method"], p["world"]): p["predicted"]
        for p in validation["points"]
        if p["quantity"] == "peak_memory_bytes" and (p["batch"], p["dim"]) == (batch, dim)
    }
    lines = [
        "| method | W | bytes sent / rank | bytes received / rank | allocator peak (KiB) "
        "| model peak (KiB) |",
        "|---|---|---|---|---|---|",
    ]
    ok = [
        r
        for r in records
        if r["status"] == "ok"
        and (r["config"]["batch"], r["config"]["dim"]) == (batch, dim)
        and r["config"]["world"] > 1
        and not r["config"].get("emulate")
    ]
    for r in sorted(ok, key=lambda r: (r["config"]["method"], r["config"]["world"])):
        c, m = r["config"], r["measured"]
        lines.append(
            f"| {c['method']} | {c['world']} | {m['bytes_sent']:,} | {m['bytes_received']:,} "
            f"| {m['peak_alloc_bytes'] / 1024:,.1f} "
            f"| {model[(c['method'], c['world'])] / 1024:,.1f} |"
        )
    return (
        f"b = {batch}, d = {dim}, fp32, one forward + backward per rank; bytes from "
        "`profiling.comm`, peak from the counting CPU allocator, model from each method's "
        "`memory_terms` as it was on the day of the run.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + _source(results, folder, records[0]["env"], "results.jsonl")
        + "\n"
    )


def _peak(records: list[dict], method: str, world: int, dtype: str, field: str) -> float:
    (value,) = [
        r["measured"][field]
        for r in records
        if r["status"] == "ok"
        and (r["config"]["method"], r["config"]["world"], r["config"]["dtype"])
        == (method, world, dtype)
    ]
    return value


@block("gpu-check")
def _gpu_check(results: Path) -> str:
    """The H200 check (correctness, stand-in peaks) and the H100 grid and model check."""
    folder = "h200-gpu-check"
    correctness = _records(results / folder / "gpu_correctness.jsonl")
    h200 = _records(results / folder / "gpu_results.jsonl")
    c = h200[0]["config"]
    passed = sum(1 for r in correctness if r["passed"])

    def mib(method, world, field="peak_live_bytes"):
        return f"{_peak(h200, method, world, 'fp32', field) / MiB:.0f} MiB"

    def gib(method, world):
        return f"{_peak(h200, method, world, 'fp32', 'peak_live_bytes') / GiB:.1f} GiB"

    text = (
        f"On one H200 (b = {c['batch']}, d = {c['dim']}, stand-in peers) {passed} of "
        f"{len(correctness)} reference checks pass on the GPU (every method, NCCL at W = 1 "
        f"and emulated W = 4). At emulated W = 512 (fp32) the one-way rings hold "
        f"{mib('sigmoid-ring', 512)} of live tensors (CUDA allocator: "
        f"{mib('sigmoid-ring', 512, 'peak_cuda_allocated_bytes')}; the bidirectional ring "
        f"{mib('sigmoid-ring-bidir', 512)}) against {gib('sigmoid-allgather', 512)} for "
        f"`sigmoid-allgather` and {gib('softmax-allgather', 512)} for `softmax-allgather`; "
        f"at W = 4096 the sigmoid rings still hold {mib('sigmoid-ring', 4096)} and "
        f"{mib('sigmoid-ring-bidir', 4096)}. "
        + _source(results, folder, h200[0]["env"], "gpu_results.jsonl")
    )
    grid_folder = "h100-profiler-grid"
    grid = _records(results / grid_folder / "gpu.jsonl")
    g = grid[0]["config"]
    ring_worlds = sorted(
        r["config"]["world"]
        for r in grid
        if r["status"] == "ok" and r["config"]["method"] == "sigmoid-ring"
    )
    top = ring_worlds[-1]
    ring = _peak(grid, "sigmoid-ring", top, g["dtype"], "peak_live_bytes")
    gather = _peak(grid, "sigmoid-allgather", top, g["dtype"], "peak_live_bytes")
    text += (
        f"\n\nOn an H100 (b = {g['batch']}, d = {g['dim']}, {g['dtype']}) the sigmoid ring "
        f"stays at {ring / MiB:.0f} MiB up to W = {top}, where the all-gather version needs "
        f"{gather / GiB:.0f} GiB. " + _source(results, grid_folder, grid[0]["env"], "gpu.jsonl")
    )
    check_folder = "h100-simulator-check"
    summary = _json(results / check_folder / "summary_gpu.json")
    checked = _records(results / check_folder / "results_gpu.jsonl")
    peak = summary["quantities"]["peak memory"]["all"]
    step = summary["quantities"]["step time"]["all"]
    text += (
        f"\n\nThe calibrated H100 profile predicted the live peak of {peak['points']} W = 1 "
        f"points within {_pct(peak['max_abs_err_pct'])} and their median step with a "
        f"{_pct(step['geomean_abs_err_pct'])} geomean error (max "
        f"{_pct(step['max_abs_err_pct'])}; recorded before the lower quartile existed, so "
        "`sigsim validate` now compares those records' median only). "
        + _source(results, check_folder, checked[0]["env"], "summary_gpu.json")
    )
    return text + "\n"


PEER_RUNS = (
    ("fp32", "peers-xeon2-b512-d512-fp32-ownlast.jsonl"),
    ("bf16 autocast", "peers-xeon2-b512-d512-amp-bf16-ownlast.jsonl"),
    (
        "autocast, `SIGSIM_HALF_MATMUL=1`",
        "peers-xeon2-b512-d512-amp-bf16-half-matmul-ownlast.jsonl",
    ),
)
"""The kept ``sigsim peers`` records of the code as it is (rings that compute the own
block last, af96ea2); ``-2buf`` files hold the rings before it (two accumulator buffers,
a82453a), files without a suffix the three-buffer rings before that."""


@block("peers")
def _peers(results: Path) -> str:
    """Ours / best open_clip per metric and W, from the kept ``sigsim peers`` records."""
    ratios: dict[str, dict] = {}
    env = None
    for label, name in PEER_RUNS:
        records = _records(results / "peers" / name)
        env = env or next(r["env"] for r in records if "env" in r)
        for line in (r for r in records if r.get("type") == "peer_ratios"):
            for row in line["ratios"]:
                ratios[(label, line["world"], row["ours"], row["metric"])] = row
    fp32 = PEER_RUNS[0][0]
    comparisons = sorted({(w, ours) for (lab, w, ours, _) in ratios if lab == fp32})
    headers = [f"{label}: step time" for label, _ in PEER_RUNS]
    lines = [
        "| W | comparison | "
        + " | ".join(headers)
        + " | allocator peak (fp32) | allocator peak (autocast) | bytes (fp32) |",
        "|---|---|" + "---|" * (len(headers) + 3),
    ]
    for world, ours in comparisons:
        cells = []
        for label, _ in PEER_RUNS:
            row = ratios.get((label, world, ours, "step_time_s"))
            cells.append(
                "–" if row is None else f"{row['ratio']:.2f} ({row['paired_median_ratio']:.2f})"
            )
        for label in (fp32, PEER_RUNS[1][0]):
            peak = ratios[(label, world, ours, "peak_alloc_bytes")]
            cells.append(
                f"{peak['ratio']:.3f} ({peak['ours_value'] / MiB:.1f} vs "
                f"{peak['theirs_value'] / MiB:.1f} MiB)"
            )
        sent = ratios[(fp32, world, ours, "bytes_sent")]
        theirs = peak["theirs"]
        cells.append(f"{sent['ratio']:.2f}")
        lines.append(f"| {world} | {ours} vs {theirs} (best of each) | " + " | ".join(cells) + " |")
    return (
        "Ratio = ours / best open_clip per metric (lower is better; the paired "
        "per-repetition median in brackets), b = d = 512, 10 interleaved repetitions.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + _source(results, "peers", env, "peers-xeon2-b512-d512-*-ownlast.jsonl")
        + "\n"
    )


@block("stragglers-at-scale")
def _stragglers_at_scale(results: Path) -> str:
    """All-gather over ring median step per pair, W and straggler case (simulated)."""
    folder = results / "scale-stragglers"
    records = _records(folder / "records.jsonl")
    median = {(r["method"], r["world"], r["stragglers"]): r["median_ms"] for r in records}
    cases = ("none", "one", "1%")
    worlds = sorted({r["world"] for r in records})
    shown = [w for w in worlds if w in (worlds[0], worlds[1], 256, worlds[-1])]
    crossover = {(c["ring"], c["stragglers"]): c for c in _json(folder / "crossover.json")}
    lines = [
        "| ring vs all-gather | stragglers | ring faster from W | "
        + " | ".join(f"all-gather / ring, W = {w:,}" for w in shown)
        + f" | straggler cost at W = {worlds[-1]:,}: ring, all-gather (median) |",
        "|---|---|---|" + "---|" * (len(shown) + 1),
    ]
    for (ring, case), c in sorted(
        crossover.items(), key=lambda kv: (kv[0][0], cases.index(kv[0][1]))
    ):
        ratios = [median[(c["allgather"], w, case)] / median[(ring, w, case)] for w in shown]
        costs = [
            median[(m, worlds[-1], case)] / median[(m, worlds[-1], "none")] - 1
            for m in (ring, c["allgather"])
        ]
        lines.append(
            f"| `{ring}` vs `{c['allgather']}` | {case} | {c['ring_faster_from'] or 'never'} | "
            + " | ".join(f"{x:.3g}" for x in ratios)
            + " | "
            + ("–" if case == "none" else ", ".join(f"{x * 100:+.2g}%" for x in costs))
            + " |"
        )
    first = records[0]
    return (
        f"Median step, all-gather over ring (above 1: the ring is faster); b = {first['batch']}, "
        f"d = {first['dim']}, {first['dtype']}, {first['steps']} steps, jitter "
        f"{first['jitter']}, stragglers {max(r['slowdown'] for r in records)}× slower.\n\n"
        + "\n".join(lines)
        + f"\n\nSource: `experiments/results/scale-stragglers/records.jsonl` and `crossover.json` "
        f"(simulated on the bundled `{first['hardware']}` profile: NVIDIA H100 datasheet "
        "numbers; not a measurement).\n"
    )


def _default_run_line(results: Path, folder: str) -> str:
    meta, records, validation = _run(results, folder)
    summary = {(s["quantity"], s["regime"]): s for s in validation["summary"]}
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in meta["phases_s"].items() if k != "total")

    def err(quantity, regime):
        s = summary[(quantity, regime)]
        return f"{_pct(s['geomean_error_pct'])} / {_pct(s['max_error_pct'])}"

    ok = sum(1 for r in records if r["status"] == "ok")
    return (
        f"* `{folder}/` ({_machine(records[0]['env'])}; {meta['started_utc'][:10]}): "
        f"{ok} of {len(records)} points ok; {phases}; bytes "
        f"{_pct(summary[('bytes_sent', 'real ranks: all')]['max_error_pct'])}, peak memory "
        f"max {_pct(summary[('peak_memory_bytes', 'real ranks: all')]['max_error_pct'])}, "
        "step time (lower quartile) geomean / max "
        f"{err('step_time_s', 'ranks vs cores: ranks <= cores')} at W ≤ cores and "
        f"{err('step_time_s', 'ranks vs cores: oversubscribed')} oversubscribed "
        "(`validation.json`, the model of its day)"
    )


@block("kept-results", document=RESULTS_README)
def _kept_results(results: Path) -> str:
    """One line of headline numbers per kept folder, read from its records."""
    lines = [_default_run_line(results, folder) for folder in default_runs(results)]
    correctness = _records(results / "h200-gpu-check" / "gpu_correctness.jsonl")
    h200 = _records(results / "h200-gpu-check" / "gpu_results.jsonl")
    statuses: dict[str, int] = {}
    for r in h200:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    lines.append(
        f"* `h200-gpu-check/` ({_dated(h200[0]['env'])}): "
        f"{sum(r['passed'] for r in correctness)}/{len(correctness)} reference checks pass; "
        f"{len(h200)} measured points: "
        + ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    )
    grid = _records(results / "h100-profiler-grid" / "gpu.jsonl")
    g = grid[0]["config"]
    top = max(r["config"]["world"] for r in grid if r["status"] == "ok")
    ring = _peak(grid, "sigmoid-ring", top, g["dtype"], "peak_live_bytes")
    gather = _peak(grid, "sigmoid-allgather", top, g["dtype"], "peak_live_bytes")
    lines.append(
        f"* `h100-profiler-grid/` ({_dated(grid[0]['env'])}): at W = {top} (stand-in "
        f"peers) `sigmoid-ring` {ring / MiB:.0f} MiB of live tensors, `sigmoid-allgather` "
        f"{gather / GiB:.0f} GiB"
    )
    parts = []
    for side, name in (("GPU", "summary_gpu.json"), ("CPU", "summary_cpu.json")):
        q = _json(results / "h100-simulator-check" / name)["quantities"]
        parts.append(
            f"{side}: bytes {_pct(q['bytes sent']['all']['max_abs_err_pct'])}, peak memory max "
            f"{_pct(q['peak memory']['all']['max_abs_err_pct'])}, step time (median) geomean "
            f"{_pct(q['step time']['all']['geomean_abs_err_pct'])} "
            f"({q['step time']['all']['points']} points)"
        )
    checked = _records(results / "h100-simulator-check" / "results_gpu.jsonl")
    lines.append(f"* `h100-simulator-check/` ({_dated(checked[0]['env'])}): " + "; ".join(parts))
    return (
        "Headline numbers of each folder, written by `sigsim readme` from its records:\n\n"
        + "\n".join(lines)
        + "\n"
    )


# --- rewriting and checking README.md -------------------------------------------------


def render(text: str, results: Path = RESULTS, document: Path = README) -> tuple[str, list[str]]:
    """``text`` (the contents of ``document``, or of a copy) with every generated block
    rewritten from ``results``; and the names of the blocks whose content changed. A block
    of unknown name, a block without its end marker and a block of ``document`` missing
    from ``text`` each raise one-line errors."""
    mine = {name: b for name, b in BLOCKS.items() if b.document == document}
    out, changed, seen, position = [], [], set(), 0
    for match in BEGIN.finditer(text):
        name = match.group(1)
        if name not in mine:
            known = ", ".join(mine)
            raise ValueError(
                f"block {name!r} is not registered for {document.name}; known: {known}"
            )
        end = text.find(END.format(name=name), match.end())
        if end < 0:
            raise ValueError(f"README block {name!r} has no end marker {END.format(name=name)}")
        body = mine[name].render(results)
        if text[match.end() : end] != body:
            changed.append(name)
        out += [text[position : match.end()], body]
        seen.add(name)
        position = end
    out.append(text[position:])
    missing = sorted(set(mine) - seen)
    if missing:
        where = document.relative_to(ROOT)
        raise ValueError(f"{where} lacks the generated block(s) {', '.join(missing)}")
    return "".join(out), changed


def main(
    check: bool = False,
    files: list[tuple[Path, Path]] | None = None,
    results: Path = RESULTS,
) -> int:
    """Rewrite the generated blocks (or, with ``check``, say which differ): exit status.
    ``files``: (file to read and write, the document whose blocks it holds); default:
    every one of :data:`DOCUMENTS` in place."""
    status = 0
    for path, document in files or [(d, d) for d in DOCUMENTS]:
        new, changed = render(path.read_text(), results, document)
        if check:
            if changed:
                print(
                    f"{path}: generated block(s) differ from the records: {', '.join(changed)}; "
                    "run `sigsim readme` (never edit their numbers by hand)"
                )
                status = 1
            else:
                print(f"{path}: its generated blocks match the records")
            continue
        if changed:
            path.write_text(new)
        print(f"{path}: rewrote {', '.join(changed) or 'nothing (all blocks current)'}")
    return status
