"""The ``sigsim`` command line (also ``python -m experiments``, which torchrun launches:
``torchrun ... -m experiments point ...``); every verb of the project is here.

``sigsim run`` with no argument runs the default experiment: calibrate this machine if it
has no profile, measure every method on gloo CPU processes at W = 1, 2, 4, 8 over a
ladder of local batches, validate the model against the measurements, and write plots
and a Markdown report into a new ``./runs/<timestamp>-default/`` (or ``--out DIR``). The
other subcommands redo one stage each. Where output goes is one rule (:data:`OUTPUT_RULE`,
the epilog of ``sigsim --help``): a verb that writes takes ``--out PATH``, a verb that reads
takes its input as the positional argument. Bad input (a config key, a method, a profile, a
run directory) gets one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from experiments import commands, model_verbs, noise_floor, simulate_verbs, verbs
from experiments import config as sweep_config
from profiling.cli import parse_bool

EPILOG = (
    "Units: W ranks, b examples per rank, N = b·W examples, d elements; "
    "times in ms, memory and traffic in MiB (2^20 bytes) per rank unless stated."
)
OUTPUT_RULE = (
    "Where output goes: every verb that writes takes --out PATH: a results file (.jsonl, "
    "records appended) for point, grid, mark and peers; a folder for run (the run "
    "directory), gpu-check, noise-floor, trace and maxbatch (its plot); a profile file for "
    "calibrate; a trace file for simulate; a summary file for validate (readme rewrites "
    "README.md in place). A verb whose --out is optional says in its --help what it writes "
    "without it. Every verb that reads takes its input as the positional argument: RUN_DIR "
    "for plot, report and maxbatch (the measurements it overlays), RUN_DIR or RESULTS.jsonl "
    "files for validate."
)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.ArgumentDefaultsHelpFormatter(prog, max_help_position=34)


class _TopFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``sigsim --help``: the epilog's paragraphs kept apart (they are wrapped already)."""


def _ring_options(parser) -> None:
    """The ring methods' options a model verb takes (the record's names)."""
    parser.add_argument("--no-overlap", action="store_true", help="ring methods: no overlap")
    parser.add_argument("--tile", type=int, default=0, help="ring block side (0: b)")
    parser.add_argument(
        "--hide-accumulator",
        type=parse_bool,
        metavar="true|false",
        help="ring methods: hide the accumulator transfer behind the block (3 accumulator "
        "buffers) or not (2); default: the device's (true on CUDA, false on CPU)",
    )


def _hardware_option(parser: argparse.ArgumentParser, default_text: str) -> None:
    parser.add_argument(
        "--hardware",
        default=None,
        help=f"hardware profile name or JSON path (default: {default_text})",
    )


def _autocast_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--autocast",
        default=None,
        choices=("fp16", "bf16"),
        help="price the loss run inside torch.autocast of this dtype (features of --dtype)",
    )


def _recommend_parser(sub) -> None:
    recommend = sub.add_parser(
        "recommend",
        help="which loss to run: every method and incumbent at one W and d, from the model",
        description="For every method of ours (ring methods at several tiles) and every "
        "incumbent (open_clip, Inf-CL): the largest global batch that fits, and bytes per "
        "rank, peak memory and step time at one global batch (default: the largest open_clip's "
        "best fits); then, per kind, the recommended method and tile against open_clip's "
        "best. Reads only the model.",
        epilog=EPILOG,
        formatter_class=_formatter,
    )
    recommend.add_argument("--world", type=int, required=True, help="W, ranks")
    recommend.add_argument("--dim", type=int, required=True, help="embedding width d")
    recommend.add_argument("--dtype", default="fp32", choices=sweep_config.DTYPES)
    _autocast_option(recommend)
    recommend.add_argument(
        "--memory-GiB", dest="memory_GiB", type=float, default=0.0,
        help="memory of one device, GiB; 0: the profile's",
    )  # fmt: skip
    recommend.add_argument(
        "--other-GiB", dest="other_GiB", type=float, default=0.0,
        help="memory the rest of the training step holds per device (model, optimizer, "
        "activations), GiB",
    )  # fmt: skip
    recommend.add_argument(
        "--batch", type=int, default=0,
        help="global batch N to compare at (a multiple of --world); 0: the largest that "
        "open_clip's best fits",
    )  # fmt: skip
    recommend.add_argument(
        "--kind", default="softmax,sigmoid", help="loss kinds, comma-separated (softmax, sigmoid)"
    )
    recommend.add_argument("--json", action="store_true", help="print JSON instead of tables")
    _hardware_option(recommend, "this machine's calibrated profile, else h100-sxm")
    recommend.set_defaults(handler=model_verbs.cmd_recommend)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sigsim",
        description="Profile and simulate distributed SigLIP / CLIP losses.",
        epilog="\n\n".join(textwrap.fill(text, 88) for text in (OUTPUT_RULE, EPILOG)),
        formatter_class=_TopFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    shipped = ", ".join(sorted(sweep_config.shipped()))

    run = sub.add_parser(
        "run",
        help="measure a sweep, validate the model, write plots and report",
        description="Run a sweep config into a new run directory (--out DIR, else "
        "RUNS_DIR/<UTC time>-<config name>/) holding results.jsonl, validation.json, the "
        "plots and report.md; prints its path at the end.",
        epilog=EPILOG,
        formatter_class=_formatter,
    )
    run.add_argument(
        "config",
        nargs="?",
        default="default",
        help=f"TOML file or shipped config name ({shipped})",
    )
    run.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        default=None,
        help="the run directory to write (new, or an empty folder); without it a new "
        "RUNS_DIR/<UTC time>-<config name>/",
    )
    run.add_argument(
        "--runs-dir",
        default="runs",
        help="without --out: the folder that receives the new run directory",
    )
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run in place (finished points are skipped)",
    )
    _hardware_option(run, "the config's, else this machine's calibrated profile")
    run.add_argument(
        "--no-calibrate",
        action="store_true",
        help="do not calibrate a machine without a profile (validate against the default)",
    )
    run.add_argument(
        "--quick-calibration",
        action="store_true",
        help="fewer calibration samples (seconds instead of a minute; coarser fit)",
    )
    run.add_argument(
        "--json",
        action="store_true",
        help="tables and progress to stderr; one summary object (run directory, points, "
        "phases, validation summary) on stdout at the end",
    )
    run.set_defaults(handler=commands.cmd_run)

    calibrate = sub.add_parser(
        "calibrate",
        help="fit this machine's compute and communication costs; write its profile",
        description="Microbenchmarks (matmul and pointwise throughput per dtype; send/recv, "
        "all-gather and reduce-scatter α-β fits) written as this machine's profile.",
        epilog=EPILOG,
        formatter_class=_formatter,
    )
    verbs.add_calibrate_options(calibrate)
    calibrate.set_defaults(handler=verbs.cmd_calibrate)

    predict = sub.add_parser(
        "predict",
        help="the model's FLOPs, bytes, memory and step time for given shapes",
        description="Predict per-rank cost. Lists are comma-separated; their product is "
        "printed, one row per point. Output: GFLOP per rank per step, MiB sent/received "
        "per rank per step, peak loss memory per rank (MiB), times in ms.",
        epilog=EPILOG,
        formatter_class=_formatter,
    )
    predict.add_argument(
        "--method",
        default="all",
        help="method name(s), comma-separated; 'all': ours, 'incumbents': open_clip's and "
        "Inf-CL's (cost descriptions)",
    )
    predict.add_argument("--world", default="8", help="world sizes W (ranks)")
    predict.add_argument("--batch", default="1024", help="local batches b (examples per rank)")
    predict.add_argument("--dim", default="512", help="embedding widths d (elements)")
    predict.add_argument("--dtype", default="fp32", choices=sweep_config.DTYPES)
    _ring_options(predict)
    _autocast_option(predict)
    _hardware_option(predict, "this machine's calibrated profile, else h100-sxm")
    predict.add_argument("--json", action="store_true", help="one JSON object per row")
    predict.set_defaults(handler=model_verbs.cmd_predict)

    for name, handler, what in (
        ("plot", commands.cmd_plot, "redraw a run directory's plots from its results"),
        ("report", commands.cmd_report, "rewrite a run directory's validation, plots, report"),
    ):
        sub_parser = sub.add_parser(
            name,
            help=what,
            description=what[0].upper() + what[1:] + " (nothing is rerun).",
            epilog=EPILOG,
            formatter_class=_formatter,
        )
        sub_parser.add_argument(
            "run_dir", metavar="RUN_DIR", help="a run directory (written by `sigsim run`)"
        )
        _hardware_option(sub_parser, "the profile the run recorded")
        sub_parser.set_defaults(handler=handler)

    maxbatch = sub.add_parser(
        "maxbatch",
        help="largest local and global batch each method fits in a given memory",
        description="Largest local batch b (examples per rank) and global batch N = b·W "
        "whose peak loss memory per rank fits, from the model; given a RUN_DIR, also the "
        "largest measured batch that fitted among that run's points (emulated ranks included).",
        epilog=EPILOG,
        formatter_class=_formatter,
    )
    maxbatch.add_argument(
        "--method",
        default="all",
        help="method name(s), comma-separated; 'all': ours, 'incumbents': open_clip's and Inf-CL's",
    )
    maxbatch.add_argument(
        "--worlds", default="1,8,64,512,4096", help="world sizes W (ranks), comma-separated"
    )
    maxbatch.add_argument("--dim", type=int, default=1024, help="embedding width d (elements)")
    maxbatch.add_argument("--dtype", default="bf16", choices=sweep_config.DTYPES)
    maxbatch.add_argument(
        "--memory-GiB",
        dest="memory_GiB",
        type=float,
        default=0.0,
        help="memory of one device, GiB (2^30 bytes); 0: the profile's device memory",
    )
    maxbatch.add_argument(
        "--other-GiB",
        dest="other_GiB",
        type=float,
        default=0.0,
        help="memory the rest of the training step holds per device (model, optimizer, "
        "activations), GiB; the loss gets what is left after it and the profile's reserve",
    )
    _autocast_option(maxbatch)
    _hardware_option(maxbatch, "this machine's calibrated profile, else h100-sxm")
    maxbatch.add_argument(
        "run",
        nargs="?",
        metavar="RUN_DIR",
        default=argparse.SUPPRESS,  # so that the old --run is not overwritten by its absence
        help="a run directory whose measurements to overlay",
    )
    maxbatch.add_argument("--run", dest="run", default=None, help=argparse.SUPPRESS)  # old
    maxbatch.add_argument(
        "--out",
        metavar="DIR",
        help="write maxbatch.png and .svg into this folder; without it no plot is written",
    )
    maxbatch.add_argument("--json", action="store_true", help="one JSON object per row")
    maxbatch.set_defaults(handler=model_verbs.cmd_maxbatch)
    _recommend_parser(sub)

    simulate = sub.add_parser(
        "simulate",
        help="step-time distribution of one point from the event simulator",
        description="Simulate every rank's timeline for --steps steps of one method at one "
        "point (W, b, d) with jitter, stragglers, a slow node or link; print the step-time "
        "distribution (ms) beside the closed form's step, optionally write step 0 as a "
        "Chrome trace (one process per rank) for Perfetto.",
        epilog=EPILOG,
        formatter_class=_formatter,
    )
    simulate.add_argument("--method", default="sigmoid-ring", help="a registered method")
    simulate.add_argument("--world", type=int, default=8, help="W, ranks")
    simulate.add_argument("--batch", type=int, default=1024, help="b, examples per rank")
    simulate.add_argument("--dim", type=int, default=512, help="d, embedding width (elements)")
    simulate.add_argument("--dtype", default="fp32", choices=sweep_config.DTYPES)
    _hardware_option(simulate, "this machine's calibrated profile, else h100-sxm")
    simulate.add_argument("--steps", type=int, default=100, help="steps simulated")
    simulate.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    simulate.add_argument(
        "--jitter",
        default="",
        help="per-event multipliers: DIST:SIGMA[:MEDIAN] for every kind, or "
        "KIND=DIST:SIGMA,... (kinds compute, p2p, collective; DIST lognormal, exponential); "
        "empty: the profile's fitted jitter if it has one (calibrated profiles), else none; "
        "lognormal:0 for none",
    )
    simulate.add_argument(
        "--stragglers", default="", help="RANK:SLOWDOWN,... ranks that compute slower"
    )
    simulate.add_argument("--slow-node", default="", help="NODE:SLOWDOWN, a node's ranks slower")
    simulate.add_argument(
        "--slow-link", default="", help="RANK:SLOWDOWN, the link from RANK to RANK+1 slower"
    )
    _ring_options(simulate)
    simulate.add_argument(
        "--out",
        dest="trace",
        metavar="PATH",
        help="write step 0 as a Chrome-trace JSON file; without it only the distribution "
        "is printed",
    )
    simulate.add_argument("--trace", dest="trace", help=argparse.SUPPRESS)  # the old spelling
    simulate.add_argument("--json", action="store_true", help="print the summary as JSON")
    simulate.set_defaults(handler=simulate_verbs.cmd_simulate)

    trace = sub.add_parser(
        "trace",
        help="measured and simulated Chrome traces of one point, side by side",
        description="Run one point on W local gloo ranks, profile one step (after --warmup "
        "steps) with torch.profiler on every rank, merge the ranks into one Chrome trace "
        "(one process per rank, one clock) and write the simulated step in the same layout "
        "next to it: OUT/measured.json and OUT/simulated.json, for Perfetto.",
        epilog=EPILOG,
        formatter_class=_formatter,
    )
    trace.add_argument("--method", default="sigmoid-ring", help="a registered method")
    trace.add_argument("--world", type=int, default=4, help="W, ranks (local processes)")
    trace.add_argument("--batch", type=int, default=256, help="b, examples per rank")
    trace.add_argument("--dim", type=int, default=128, help="d, embedding width (elements)")
    trace.add_argument("--dtype", default="fp32", choices=sweep_config.DTYPES)
    _hardware_option(trace, "this machine's calibrated profile, else h100-sxm (simulated side)")
    trace.add_argument(
        "--warmup", type=int, default=2, help="untimed steps before the profiled one"
    )
    trace.add_argument("--no-overlap", action="store_true", help="ring methods: no overlap")
    trace.add_argument(
        "--out", metavar="DIR", default="traces", help="folder for measured.json, simulated.json"
    )
    trace.add_argument("--json", action="store_true", help="print the summary as JSON")
    trace.set_defaults(handler=simulate_verbs.cmd_trace)
    verbs.add_parsers(sub, epilog=EPILOG, formatter_class=_formatter)
    noise_floor.add_parser(sub, epilog=EPILOG, formatter_class=_formatter)
    readme = sub.add_parser(
        "readme",
        help="rewrite README.md's measured numbers from the kept records (never measures)",
        description="Rewrite every generated block of README.md (<!-- sigsim:begin NAME --> "
        "... <!-- sigsim:end NAME -->) from the records under experiments/results/; --check "
        "only compares and exits 1 when a block differs.",
        epilog=EPILOG,
        formatter_class=_formatter,
    )
    readme.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    readme.set_defaults(handler=commands.cmd_readme)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command_line = " ".join(["sigsim", *argv])
    args.verb_argv = argv[1:]
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        # ConfigError, HardwareError and bad names are ValueErrors with one clear line;
        # SIGSIM_DEBUG=1 shows the traceback instead.
        if os.environ.get("SIGSIM_DEBUG"):
            raise
        print(f"sigsim {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sigsim {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
