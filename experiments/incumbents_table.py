"""The incumbents' memory model against their real code's allocator peak, per variant.

Runs every runnable incumbent (open_clip 3.3's six, Inf-CL 1.2.1's ``cal_ring_loss``
where inf-cl is installed) through ``tests/incumbent_cases.py`` on 4 local gloo ranks,
W = 2..4 × the (b, d) points of ``tests/test_incumbents.py``, in three settings: fp32;
CPU bf16 autocast with oneDNN off (what ``tests/test_incumbents_autocast.py`` pins); CPU
bf16 autocast with oneDNN on (torch's default, whose bf16 matmul scratch the model does
not hold). Prints one Markdown row per incumbent: per setting the largest
``(model − allocator) / allocator`` in size and whether every point's bytes equalled the
schedule's. Rank 0's numbers.

Usage: ``python -m experiments.incumbents_table [--worlds 2,3,4] [--points 24x16,...]
[--names ...]`` (the defaults: about a minute and a half on 2 loaded vCPUs); the kept
output is in ``docs/allocator-peak.md``.
"""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np

from profiling.losses.registry import Shape, get_method
from simulator.incumbents import INCUMBENTS
from tests.incumbent_cases import IncumbentCase, run_incumbent_cases
from tests.spawn import run_world
from tests.test_incumbents import POINTS

SETTINGS = {
    "fp32": {"autocast": None},
    "bf16 autocast, oneDNN off": {"autocast": "bf16", "onednn": False},
    "bf16 autocast, oneDNN on": {"autocast": "bf16", "onednn": True},
}


def runnable() -> list[str]:
    have_inf_cl = importlib.util.find_spec("inf_cl") is not None
    return [
        n for n in INCUMBENTS if n != "infcl-inf" and (have_inf_cl or not n.startswith("infcl-"))
    ]


def worst(rows: list[dict]) -> tuple[float, bool]:
    """Largest |model − allocator| / allocator (signed) and whether all bytes matched."""
    errors, exact = [], True
    for r in rows:
        c = r["case"]
        shape = Shape.of(c.world, c.batch, c.dim, "fp32", autocast=c.autocast)
        method = get_method(c.name)
        predicted = float(sum(np.asarray(v) for v in method.memory_terms(shape).values()))
        errors.append(predicted / r["peak_alloc_bytes"] - 1)
        exact &= int(method.schedule(shape).bytes_sent()) == r["bytes_sent"]
    return max(errors, key=abs), exact


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.incumbents_table", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--worlds", default="2,3,4", help="world sizes W, comma-separated")
    parser.add_argument(
        "--points",
        default=",".join(f"{b}x{d}" for b, d in POINTS),
        help="(b, d) points as BxD, comma-separated (default: the test's)",
    )
    parser.add_argument("--names", default=None, help="incumbents, comma-separated (all)")
    args = parser.parse_args(argv)
    worlds = [int(w) for w in args.worlds.split(",")]
    points = [tuple(int(v) for v in p.split("x")) for p in args.points.split(",")]
    names = args.names.split(",") if args.names else runnable()
    cases = [
        IncumbentCase(name, w, b, d, **options)
        for options in SETTINGS.values()
        for name in names
        for w in worlds
        for b, d in points
    ]
    rows = run_world(max(worlds), run_incumbent_cases, cases, timeout_s=1800)[0]
    print("| incumbent | " + " | ".join(SETTINGS) + " |")
    print("|---|" + "---|" * len(SETTINGS))
    for name in names:
        cells = []
        for options in SETTINGS.values():
            mine = [
                r
                for r in rows
                if r["case"].name == name
                and all(getattr(r["case"], k) == v for k, v in options.items())
            ]
            err, exact = worst(mine)
            cells.append(f"{err:+.2%} ({len(mine)} points, bytes {'exact' if exact else 'OFF'})")
        print(f"| `{name}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
