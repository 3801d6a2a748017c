"""The ``sigsim`` verbs beyond the experiment pipeline: the profiler's ``point``, ``grid``
and ``mark`` (:mod:`profiling.cli`), ``peers`` and ``gpu-check`` (:mod:`experiments.peers`,
:mod:`experiments.gpu_check`), ``profiles``, and the parts of ``validate`` and ``calibrate``
that take results files and calibration options. Each verb's contract: bad input is one line
on stderr and exit status 2; ``--json`` puts machine-readable output on stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path

from rich.console import Console

from experiments.config import DTYPES
from experiments.tables import stdout_to_stderr
from profiling import cli as profiling_cli


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(float(v)) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def add_calibrate_options(calibrate: argparse.ArgumentParser) -> None:
    """Options of ``sigsim calibrate`` (those of :class:`simulator.calibrate.CalibrationConfig`)."""
    calibrate.add_argument("--backend", default="gloo", choices=("auto", "gloo", "nccl"))
    calibrate.add_argument("--quick", action="store_true", help="fewer samples, small shapes")
    calibrate.add_argument(
        "--out",
        metavar="PROFILE.json",
        type=Path,
        default=None,
        help="the profile file to write; without it this machine's, "
        "~/.cache/sigsim/hardware/<machine key>.json",
    )
    # The old spelling, still accepted (same dest), hidden from --help.
    calibrate.add_argument("--output", dest="out", type=Path, help=argparse.SUPPRESS)
    calibrate.add_argument("--worlds", type=_ints, default=(2, 4), help="group sizes")
    calibrate.add_argument(
        "--sizes",
        type=_ints,
        default=(4096, 65536, 524288, 4194304),
        help="bytes per rank per message",
    )
    calibrate.add_argument("--repeats", type=int, default=None, help="timed iterations per case")
    calibrate.add_argument(
        "--threads", type=int, default=None, help="torch threads per rank (default: cores // W)"
    )
    calibrate.add_argument(
        "--comm-from",
        default=None,
        help="one GPU: bundled profile to copy the network from (default by GPU name)",
    )
    calibrate.add_argument(
        "--json",
        action="store_true",
        help="print the written profile as JSON (path, contents) instead of the path",
    )


def cmd_calibrate(args) -> int:
    from simulator.calibrate import CalibrationConfig, calibrate

    if min(args.worlds, default=0) < 1 or min(args.repeats or 1, args.threads or 1) < 1:
        raise ValueError("--worlds, --repeats and --threads must be at least 1")
    options = {"repeats": args.repeats} if args.repeats else {}
    config = CalibrationConfig(
        output=args.out,
        worlds=tuple(args.worlds),
        message_bytes=tuple(args.sizes),
        threads=args.threads,
        backend=args.backend,
        quick=args.quick,
        comm_from=args.comm_from,
        **options,
    )
    with stdout_to_stderr(getattr(args, "json", False)):  # worker output too
        path, _ = calibrate(config, Console(stderr=True))
    if getattr(args, "json", False):
        print(json.dumps({"path": str(path), "profile": json.loads(Path(path).read_text())}))
        return 0
    Console().print(f"[bold green]profile written:[/bold green] {path}")
    return 0


def add_validate_parser(sub, **common) -> None:
    """``sigsim validate RUN_DIR`` or ``sigsim validate RESULTS.jsonl ... [--out FILE]``."""
    validate = sub.add_parser(
        "validate",
        help="predicted vs measured for a run directory or results JSON-lines files",
        description="Predicted vs measured for every ok record of a run directory (also "
        "rewrites its validation.json) or of results .jsonl files (nothing is rerun).",
        **common,
    )
    validate.add_argument("paths", nargs="+", metavar="RUN_DIR|RESULTS.jsonl")
    validate.add_argument("--hardware", default=None, help="hardware profile name or JSON path")
    validate.add_argument(
        "--out",
        metavar="FILE.json",
        type=Path,
        help="also write the JSON that --json prints to this file; without it only the run "
        "directory's validation.json is (re)written, and nothing for results files",
    )
    # The old spelling, still accepted (same dest), hidden from --help.
    validate.add_argument("--summary-json", dest="out", type=Path, help=argparse.SUPPRESS)
    validate.add_argument("--no-points", action="store_true", help="results files: summary only")
    validate.add_argument("--json", action="store_true", help="print JSON instead of tables")
    validate.set_defaults(handler=cmd_validate)


def cmd_validate(args) -> int:
    paths = [Path(p) for p in args.paths]
    if any(p.is_dir() for p in paths):
        if len(paths) != 1:
            raise ValueError("validate takes one run directory, or results .jsonl files")
        return _validate_run(args, paths[0])
    from simulator.validate import validate

    console = Console(file=io.StringIO()) if args.json else Console()
    summary = validate(paths, args.hardware, console, show_points=not args.no_points)
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary, indent=1))
    return 0


def _validate_run(args, run_dir: Path) -> int:
    from experiments import analysis, commands, rundir

    args.run_dir = str(run_dir)
    if not args.json:
        return commands.cmd_validate(args)  # the tables; it writes --out too
    run = rundir.open_existing(args.run_dir)
    hardware = analysis.run_hardware(run, args.hardware)
    payload = commands.validation_json(*analysis.validate(run, hardware))
    if args.out:
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload))
    return 0


def cmd_profiles(args) -> int:
    from simulator.hardware import available_profiles

    profiles = {name: str(path) for name, path in available_profiles().items()}
    if args.json:
        print(json.dumps(profiles, indent=1))
    else:
        for name, path in profiles.items():
            print(f"{name}: {path}")
    return 0


def _forward(module: str):
    """A handler that runs ``module.main`` on the verb's own arguments (parsed once by
    ``sigsim`` with the same options, then again by the module)."""

    def handler(args) -> int:
        import importlib

        return importlib.import_module(module).main(args.verb_argv)

    return handler


def add_peers_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sigsim peers`` (:mod:`experiments.peers`)."""
    parser.add_argument("--world", type=int, nargs="+", default=[4, 8], help="W values")
    parser.add_argument("--batch", type=int, default=512, help="b, examples per rank")
    parser.add_argument("--dim", type=int, default=512, help="d, embedding width")
    parser.add_argument("--dtype", default="fp32", choices=DTYPES)
    parser.add_argument(
        "--autocast",
        choices=("bf16", "fp16"),
        default=None,
        help="run both sides inside torch.autocast of this dtype (fp32 features)",
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=10, help="timed repetitions")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contenders", nargs="+", default=None, help="default: all")
    parser.add_argument("--no-check", action="store_true", help="skip the reference check")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also record where one step's time goes (torch.profiler, rank 0, by operator group)",
    )
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="per W")
    parser.add_argument(
        "--out",
        metavar="RESULTS.jsonl",
        type=Path,
        default=Path("runs/peers.jsonl"),
        help="results file the records are appended to",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the records (JSON lines) instead of tables"
    )


def add_gpu_check_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sigsim gpu-check`` (:mod:`experiments.gpu_check`)."""
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=os.environ.get("OUT"),
        help="output folder; without it $OUT, else runs/gpu_check",
    )
    parser.add_argument(
        "--cpu", "--dry-run", action="store_true", dest="cpu", help="tiny CPU run (gloo)"
    )
    parser.add_argument(
        "--budget-s", type=float, help="seconds from start to the deadline (210; CPU 240)"
    )
    parser.add_argument("--batch", type=int, help="b of the measured points (1024; CPU 16)")
    parser.add_argument("--dim", type=int, help="d of the measured points (768; CPU 32)")
    parser.add_argument(
        "--worlds", type=int, nargs="+", help="emulated W (8 64 512 4096; CPU 2 8 64)"
    )
    parser.add_argument(
        "--autocast", nargs="*", choices=("bf16", "fp16"), help="autocast variants (bf16)"
    )
    parser.add_argument("--target-batch", type=int, help="b of the targets part (16384)")
    parser.add_argument(
        "--target-worlds", type=int, nargs="+", help="W of the targets part (1 8 64)"
    )
    parser.add_argument(
        "--wheels",
        metavar="DIR",
        help="first install the peer wheels in DIR offline (pip --no-index --no-deps)",
    )
    parser.add_argument(
        "--fetch-wheels",
        metavar="DIR",
        help="only download the peer wheels into DIR (pip download --no-deps), then exit",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print correctness and records as one JSON object (log and tables to stderr)",
    )


def add_parsers(sub, **common) -> None:
    """Add point, grid, mark, peers, gpu-check, profiles and validate to ``sub``."""
    profiling_cli.add_parsers(sub)
    add_validate_parser(sub, **common)
    peer = sub.add_parser(
        "peers",
        help="our losses against open_clip's: step time, peak memory, bytes, ratios",
        description="Our losses against open_clip's, side by side, on one process group "
        "per W; records appended to --out.",
        **common,
    )
    add_peers_arguments(peer)
    peer.set_defaults(handler=_forward("experiments.peers"))
    check = sub.add_parser(
        "gpu-check",
        help="the one-GPU check: correctness, measured points, validation (--cpu: dry run)",
        description="The one-GPU check: every method, NCCL at W = 1 and emulated W up to "
        "what memory allows; files in --out. --cpu: the same path on gloo, tiny sizes.",
        **common,
    )
    add_gpu_check_arguments(check)
    check.set_defaults(handler=_forward("experiments.gpu_check"))
    profiles = sub.add_parser("profiles", help="list the bundled and calibrated hardware profiles")
    profiles.add_argument("--json", action="store_true", help="print JSON (name: path)")
    profiles.set_defaults(handler=cmd_profiles)
