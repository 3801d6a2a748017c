"""The event simulator at scale: wall time of the two targets, and the coarse rounds' error.

``python -m simulator.scale [--points W:S,...]`` prints, per point, the seconds one
:func:`simulator.simulate` call takes for ``W`` ranks × ``S`` jittered steps (lognormal
σ = 0.1 on every event kind) of a method on a profile: wall time, this process's CPU time
(what other jobs on a shared machine do not inflate as much), the ``coarse`` rounds the
call chose (1: exact) and the median and p90 step. The defaults are issue 11's targets,
4,096 ranks × 1,000 steps in under 10 s and 65,536 ranks × 10 steps in under 60 s.

``python -m simulator.scale --errors`` runs the exact engine (``coarse = 1``) and the
coarse one (``coarse = W/32``, the most :func:`simulator.simulate` picks by itself) on
the same points and prints the median and p90 step of each and their difference in %,
with no straggler, one, and 1% of the ranks slowed (:func:`stragglers`). Different seeds
(the two engines draw differently anyway), so the difference includes the sampling noise
of a median and a p90 over the steps. No target is asserted here: these are measurements
(docs/simulator.md, "At scale"); ``tests/test_simulate_scale.py`` pins a small case.
"""

from __future__ import annotations

import argparse
import os
import time

from simulator.simulate import MAX_COARSE_FRACTION, simulate
from simulator.variability import Jitter

TARGETS = ((4096, 1000, 10.0), (65536, 10, 60.0))
"""(W, steps, target seconds) from issue 11."""

ERROR_CASES = (
    ("sigmoid-ring", "bf16", (64, 256, 1024)),
    ("sigmoid-ring", "fp32", (64, 256, 1024)),
    ("sigmoid-ring-bidir", "bf16", (256,)),
    ("softmax-ring", "bf16", (256,)),
)
"""(method, dtype, worlds) that ``--errors`` measures (b = 1024, d = 768, h100-sxm)."""


def stragglers(world: int, fraction: float | None, slowdown: float) -> dict[int, float]:
    """``fraction`` of ``world`` ranks (at least one) slowed by ``slowdown``, spread evenly
    (the midpoints of equal stretches of ranks); ``None``: one rank, ``world // 2``."""
    count = 1 if fraction is None else max(1, round(fraction * world))
    return {(2 * i + 1) * world // (2 * count): slowdown for i in range(count)}


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


def _load() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def timings(args) -> None:
    targets = {(w, s): t for w, s, t in TARGETS}
    print(f"{args.method}, {args.hardware}, b = {args.batch}, d = {args.dim}, {args.dtype}, "
          f"lognormal σ = 0.1 on every event kind; load average before: {_load()}")  # fmt: skip
    print(f"{'W':>7} {'steps':>6} {'coarse':>6} {'wall (s)':>9} {'CPU (s)':>8} "
          f"{'target (s)':>10} {'median (ms)':>11} {'p90 (ms)':>9}")  # fmt: skip
    for world, steps in args.points:
        start, cpu = time.perf_counter(), time.process_time()
        sim = simulate(args.method, world, args.batch, args.dim, args.dtype, args.hardware,
                       steps=steps, jitter=Jitter(sigma=0.1), seed=0)  # fmt: skip
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        target = targets.get((world, steps))
        print(f"{world:>7} {steps:>6} {sim.coarse:>6} {wall:>9.2f} {cpu:>8.2f} "
              f"{'-' if target is None else target:>10} "
              f"{sim.median_s * 1e3:>11.4g} {sim.p90_s * 1e3:>9.4g}", flush=True)  # fmt: skip
    print(f"load average after: {_load()}")


def errors(args) -> None:
    jitter = Jitter(sigma=0.1)
    print(f"{args.hardware}, b = {args.batch}, d = {args.dim}, lognormal σ = 0.1 on every "
          f"event kind, stragglers {args.slowdown}× slower; exact seed 1, coarse seed 2")  # fmt: skip
    print(f"{'method':>18} {'dtype':>5} {'W':>5} {'steps':>5} {'stragglers':>10} {'coarse':>6} "
          f"{'exact med':>9} {'coarse med':>10} {'Δ med %':>8} "
          f"{'exact p90':>9} {'coarse p90':>10} {'Δ p90 %':>8}")  # fmt: skip
    for method, dtype, worlds in ERROR_CASES:
        for world in worlds:
            steps = max(100, min(400, 2**25 // world**2))
            g = max(1, world // MAX_COARSE_FRACTION)
            for name, fraction in (("none", 0.0), ("one", None), ("1%", 0.01)):
                slow = {} if fraction == 0.0 else stragglers(world, fraction, args.slowdown)
                runs = [
                    simulate(
                        method,
                        world,
                        args.batch,
                        args.dim,
                        dtype,
                        args.hardware,
                        steps=steps,
                        jitter=jitter,
                        stragglers=slow,
                        seed=seed,
                        coarse=coarse,
                    )
                    for seed, coarse in ((1, 1), (2, g))
                ]
                (em, ep), (cm, cp) = ((r.median_s * 1e3, r.p90_s * 1e3) for r in runs)
                print(f"{method:>18} {dtype:>5} {world:>5} {steps:>5} {name:>10} {g:>6} "
                      f"{em:>9.3f} {cm:>10.3f} {100 * (cm / em - 1):>+8.2f} "
                      f"{ep:>9.3f} {cp:>10.3f} {100 * (cp / ep - 1):>+8.2f}", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    default = ",".join(f"{w}:{s}" for w, s, _ in TARGETS)
    parser.add_argument("--points", type=_points, default=_points(default), help="W:STEPS,...")
    parser.add_argument("--errors", action="store_true", help="coarse against exact instead")
    parser.add_argument("--slowdown", type=float, default=2.0, help="stragglers (--errors)")
    parser.add_argument("--method", default="sigmoid-ring")
    parser.add_argument("--hardware", default="h100-sxm")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--dtype", default="bf16")
    args = parser.parse_args(argv)
    if args.errors:
        errors(args)
    else:
        timings(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
