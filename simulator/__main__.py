"""Command line: ``python -m simulator predict | calibrate | validate | profiles``.

Bad input (an unknown method or hardware, W < 1, a broken profile) gets one line on
stderr naming it, and exit code 2.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from simulator.hardware import DEFAULT_PROFILE, HardwareError, available_profiles, host_profile_path

UNITS = (
    "Units: bytes are bytes (tables show MiB = 2^20 bytes), times seconds (tables show ms), "
    "FLOPs per rank per step, W ranks, b examples per rank, d embedding width."
)


def _ints(text: str) -> list[int]:
    try:
        return [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _parser() -> argparse.ArgumentParser:
    hardware_help = (
        f"profile name ({', '.join(available_profiles())}) or path to a .json profile; "
        f"default: this host's calibrated profile ({host_profile_path()}) if it exists, "
        f"else {DEFAULT_PROFILE}"
    )
    parser = argparse.ArgumentParser(
        prog="python -m simulator",
        description="Analytic cost model of distributed SigLIP / CLIP losses. " + UNITS,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "predict",
        help="predict FLOPs, bytes, memory and step time",
        description="Predict per-rank costs on the cartesian product of "
        "--world, --batch and --dim. " + UNITS,
    )
    p.add_argument("--method", required=True, help="registered method, e.g. sigmoid-ring")
    p.add_argument("--world", type=_ints, required=True, help="W, comma-separated (e.g. 2,4,8)")
    p.add_argument("--batch", type=_ints, required=True, help="b per rank, comma-separated")
    p.add_argument("--dim", type=_ints, required=True, help="d, comma-separated")
    p.add_argument("--dtype", default="fp32", help="fp32 (default), fp64, bf16, fp16")
    p.add_argument("--hardware", default=None, help=hardware_help)
    p.add_argument("--tile", type=int, default=None, help="ring block side (default: b)")
    p.add_argument("--no-overlap", action="store_true", help="ring: wait for each exchange")
    p.add_argument("--json", action="store_true", help="one JSON object per point on stdout")

    c = sub.add_parser(
        "calibrate",
        help="measure this machine and write a profile",
        description="Fit matmul, elementwise and gloo/NCCL α-β costs on this "
        "machine and write a hardware profile. Takes about a minute.",
    )
    c.add_argument(
        "--output", type=Path, default=None, help=f"profile path (default {host_profile_path()})"
    )
    c.add_argument("--worlds", type=_ints, default=[2, 4], help="group sizes (default 2,4)")
    c.add_argument(
        "--sizes",
        type=_ints,
        default=[4096, 65536, 524288, 4194304],
        help="bytes per rank per message (default 4096,65536,524288,4194304)",
    )
    c.add_argument("--repeats", type=int, default=7, help="timed iterations per case (default 7)")
    c.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per rank (default: max(1, cores // W), as the profiler)",
    )
    c.add_argument("--backend", default="auto", choices=("auto", "gloo", "nccl"))
    c.add_argument("--quick", action="store_true", help="small shapes only (smoke test)")
    c.add_argument(
        "--comm-from",
        default=None,
        help="one GPU: bundled profile to copy the network from (default by GPU name)",
    )

    v = sub.add_parser(
        "validate",
        help="compare predictions with measured records",
        description="Predict every ok record of the results files and print "
        "predicted / measured / delta % and the error summary. " + UNITS,
    )
    v.add_argument("results", nargs="+", type=Path, help="results .jsonl files")
    v.add_argument("--hardware", default=None, help=hardware_help)
    v.add_argument("--summary-json", type=Path, default=None, help="write the summary here")
    v.add_argument("--no-points", action="store_true", help="print the summary only")

    sub.add_parser("profiles", help="list hardware profiles")
    return parser


def _predict(args, console: Console) -> None:
    from simulator.model import predict

    grid = np.array(list(itertools.product(args.world, args.batch, args.dim)), dtype=np.int64)
    p = predict(
        args.method,
        grid[:, 0],
        grid[:, 1],
        grid[:, 2],
        args.dtype,
        args.hardware,
        tile=args.tile,
        overlap=not args.no_overlap,
    )
    if args.json:
        for i in range(len(grid)):
            print(json.dumps(p.point(i)))
        return
    table = Table(title=f"{p.method} {p.dtype} on {p.hardware} (per rank per step)")
    heads = (
        "W",
        "b",
        "d",
        "GFLOP",
        "sent MiB",
        "msgs",
        "peak MiB",
        "fits",
        "compute ms",
        "exposed comm ms",
        "step ms",
        "note",
    )
    for h in heads:
        table.add_column(h, justify="right")
    for i in range(len(grid)):
        note = ("oversubscribed " if p.oversubscribed[i] else "") + (
            "crosses nodes" if p.crosses_nodes[i] else ""
        )
        table.add_row(
            str(p.world[i]),
            str(p.batch[i]),
            str(p.dim[i]),
            f"{p.flops[i] / 1e9:.4g}",
            f"{p.bytes_sent[i] / 2**20:.4g}",
            str(p.messages[i]),
            f"{p.peak_memory_bytes[i] / 2**20:.4g}",
            "yes" if p.fits[i] else "NO",
            f"{p.compute_s[i] * 1e3:.4g}",
            f"{p.exposed_comm_s[i] * 1e3:.4g}",
            f"{p.step_time_s[i] * 1e3:.4g}",
            note.strip(),
        )
    console.print(table)
    if len(grid) == 1:
        terms = ", ".join(f"{k} {v[0] / 2**20:.4g}" for k, v in p.memory_terms.items())
        console.print(f"peak memory terms (MiB): {terms}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    errors = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    try:
        if args.command == "predict":
            _predict(args, console)
        elif args.command == "calibrate":
            from simulator.calibrate import CalibrationConfig, calibrate

            if any(w < 1 for w in args.worlds) or args.repeats < 1 or (args.threads or 1) < 1:
                raise ValueError("--worlds, --repeats and --threads must be at least 1")
            calibrate(
                CalibrationConfig(
                    output=args.output,
                    worlds=tuple(args.worlds),
                    message_bytes=tuple(args.sizes),
                    repeats=args.repeats,
                    threads=args.threads,
                    backend=args.backend,
                    quick=args.quick,
                    comm_from=args.comm_from,
                ),
                errors,
            )
        elif args.command == "validate":
            from simulator.validate import validate

            summary = validate(args.results, args.hardware, console, show_points=not args.no_points)
            if args.summary_json:
                args.summary_json.write_text(json.dumps(summary, indent=2) + "\n")
        else:
            for name, path in available_profiles().items():
                console.print(f"{name}: {path}")
    except (ValueError, HardwareError, TimeoutError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
