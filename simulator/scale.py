"""Wall time of the event simulator at scale: ``python -m simulator.scale [--points W:S,...]``.

Prints, per point, the seconds one :func:`simulator.simulate` call takes for ``W`` ranks
× ``S`` jittered steps (lognormal σ = 0.1 on every event kind) of a method on a profile,
the rank-rounds it simulated (``W·(W−1)·S`` for a one-way ring: every rank's every
round of every step is an event) and the time per rank-round. The issue's targets are
the default points (4096:1000 and 65536:10); on a shared 2-core machine they run for
tens of minutes, so pass smaller points and read the per-rank-round cost. No target is
asserted anywhere: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import time

from simulator.simulate import simulate
from simulator.variability import Jitter

TARGETS = ((4096, 1000, 10.0), (65536, 10, 60.0))
"""(W, steps, target seconds) from issue 11."""


def _points(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        world, sep, steps = part.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            out.append((int(world), int(steps)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected W:STEPS, got {part.strip()!r}") from None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator.scale", description=__doc__)
    default = ",".join(f"{w}:{s}" for w, s, _ in TARGETS)
    parser.add_argument("--points", type=_points, default=_points(default), help="W:STEPS,...")
    parser.add_argument("--method", default="sigmoid-ring")
    parser.add_argument("--hardware", default="h100-sxm")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--dtype", default="bf16")
    args = parser.parse_args(argv)
    targets = {(w, s): t for w, s, t in TARGETS}
    print(f"{'W':>7} {'steps':>6} {'wall (s)':>9} {'target (s)':>10} {'rank-rounds':>12} "
          f"{'ns/rank-round':>13} {'median (ms)':>11} {'p90 (ms)':>9}")  # fmt: skip
    for world, steps in args.points:
        start = time.perf_counter()
        sim = simulate(args.method, world, args.batch, args.dim, args.dtype, args.hardware,
                       steps=steps, jitter=Jitter(sigma=0.1), seed=0)  # fmt: skip
        wall = time.perf_counter() - start
        rank_rounds = world * max(world - 1, 1) * steps
        target = targets.get((world, steps))
        print(f"{world:>7} {steps:>6} {wall:>9.2f} {'-' if target is None else target:>10} "
              f"{rank_rounds:>12.3g} {wall / rank_rounds * 1e9:>13.1f} "
              f"{sim.median_s * 1e3:>11.4g} {sim.p90_s * 1e3:>9.4g}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
