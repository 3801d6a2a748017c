"""The profiler's verbs of ``sigsim``: run a grid, one point (locally or under torchrun), mark one.

    sigsim grid GRID.toml --out results.jsonl                   # local processes
    sigsim grid GRID.toml --count                               # number of points
    sigsim point --method sigmoid-ring --world 4 --batch 256 --dim 512 \\
        --out results.jsonl                                     # one point, local
    torchrun --nproc-per-node 8 -m experiments point --grid GRID.toml --index 3 \\
        --out results.jsonl                                     # one point, torchrun
    sigsim mark --grid GRID.toml --index 3 --out results.jsonl \\
        --status timeout --message "killed after 900 s" --since EPOCH_S

Under torchrun (``RANK`` in the environment) ``point`` joins the env:// process group
that torchrun set up, every rank measures, and global rank 0 appends the record (also
when the point fails on rank 0; if the job dies first, the batch script's ``mark``
records it). Every refusal is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse


def parse_bool(text: str) -> bool:
    """A command-line boolean: true/false (also 1/0, yes/no), any case."""
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _point_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", help="take the point from this grid file (with --index)")
    p.add_argument("--index", type=int, help="index of the point in --grid")
    p.add_argument("--method")
    p.add_argument("--world", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--dim", type=int)
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--autocast", choices=["bf16", "fp16"], help="run the loss inside autocast")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--emulate", choices=["exact", "stand-in"])
    p.add_argument("--overlap", type=parse_bool)
    p.add_argument("--tile", type=int)
    p.add_argument(
        "--hide-accumulator",
        type=parse_bool,
        help="ring methods: hide the accumulator transfer (3 buffers; default: CUDA yes, CPU no)",
    )
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout-s", type=float, default=600.0)
    p.add_argument("--pg-timeout-s", type=float, default=120.0)
    p.add_argument("--no-profile", action="store_true", help="skip byte cross-check, replay")
    p.add_argument("--fault", help="tests only: raise@rankR, oom@rankR, hang@rankR")


def add_parsers(sub) -> None:
    """Add the ``point``, ``grid`` and ``mark`` verbs to an argparse subparsers object
    (``sigsim`` and ``python -m profiling`` share them); each sets ``handler``."""
    g = sub.add_parser("grid", help="run every unfinished point of a grid file (profiler only)")
    g.add_argument("grid_file")
    g.add_argument("--out", help="results JSON lines (appended)")
    g.add_argument("--retry-errors", action="store_true")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--count", action="store_true", help="print the number of points and exit")
    p = sub.add_parser("point", help="measure one point (local processes, or under torchrun)")
    _point_args(p)
    p.add_argument("--out", required=True)
    m = sub.add_parser("mark", help="record a grid point that died without a record")
    m.add_argument("--grid", required=True)
    m.add_argument("--index", type=int, required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--status", required=True, choices=["error", "timeout", "oom"])
    m.add_argument("--message", required=True)
    m.add_argument("--since", type=float, default=0.0, help="skip if a record is newer (epoch s)")
    for parser in (g, p, m):
        parser.set_defaults(handler=_handle)


def _handle(args) -> int:
    from profiling.verbs import handle  # torch is imported only when a verb runs

    return handle(args)
