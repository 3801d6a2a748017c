"""The ring with two accumulator buffers against the ring with three, interleaved.

Commit a82453a changed ``profiling.losses.ring.ring_pass``: a visit adds its block into
the accumulator it has just received (two accumulator buffers per chain; that transfer
is waited for before the block) instead of computing a fresh contribution while the
previous accumulator leaves and the next arrives (three buffers; both transfers hidden).
This script loads the older ``ring.py`` from git (``git show a82453a~1:...``), runs one
ring method's forward and backward with each engine in turn on one gloo process group
(``W`` ranks, ``b = d = 512``, fp32, the default tile), alternating which goes first, and
prints the median step time of each (slowest rank per step) and their ratio.

Usage: ``python -m experiments.ring_ab sigmoid-ring --world 4 --steps 10``; run from a
git checkout that contains commit a82453a. The kept output is in ``docs/speed.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from profiling.launch import launch

OLD_RING = "a82453a~1:profiling/losses/ring.py"
"""The three-buffer engine, as git names it."""


def _load(path: str):
    spec = importlib.util.spec_from_file_location("old_ring", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_ring"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _worker(rank, world, method, steps, old_path):
    from profiling.losses import build_loss, ring

    torch.set_num_threads(1)
    old_ring, new_pass = _load(old_path), ring.ring_pass

    def old_pass(transport, payload, chains, visit, *, new_accumulator, overlap, label):
        def combine(received, contribution):
            if label == "softmax.fwd":
                return torch.logaddexp(received, contribution, out=received)
            return received.add_(contribution)

        return old_ring.ring_pass(
            transport,
            payload,
            chains,
            lambda p, owner, out: visit(p, owner, out, True),
            combine,
            new_accumulator=new_accumulator,
            overlap=overlap,
            label=label,
        )

    gen = torch.Generator().manual_seed(rank)
    x, y = (
        torch.nn.functional.normalize(torch.randn(512, 512, generator=gen), dim=1).requires_grad_()
        for _ in range(2)
    )
    scale, bias = torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    loss = build_loss(method)
    inputs = (x, y, scale) if loss.kind == "softmax" else (x, y, scale, bias)
    seconds = {"three buffers": [], "two buffers": []}
    engines = [("three buffers", old_pass), ("two buffers", new_pass)]
    for step in range(steps + 2):  # two warm-up steps
        for name, engine in engines if step % 2 else engines[::-1]:
            ring.ring_pass = engine
            dist.barrier()
            start = time.perf_counter()
            loss(*inputs).backward()
            dist.barrier()
            if step >= 2:
                seconds[name].append(time.perf_counter() - start)
    ring.ring_pass = new_pass
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=("sigmoid-ring", "sigmoid-ring-bidir", "softmax-ring"))
    parser.add_argument("--world", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    if args.world < 2 or args.steps < 1:
        parser.error("--world must be at least 2 and --steps at least 1")
    source = subprocess.run(["git", "show", OLD_RING], capture_output=True, text=True)
    if source.returncode != 0:
        sys.exit(f"ring_ab: cannot read {OLD_RING} from git: {source.stderr.strip()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "old_ring.py"
        path.write_text(source.stdout)
        outcome = launch(
            _worker,
            (args.method, args.steps, str(path)),
            world=args.world,
            backend="gloo",
            timeout_s=1800,
        )
    if outcome.status != "ok":
        sys.exit(f"ring_ab: {outcome.status}: {outcome.message}")
    per_step = {
        name: [max(r[name][k] for r in outcome.values) for k in range(args.steps)]
        for name in ("three buffers", "two buffers")
    }
    old, new = (statistics.median(per_step[n]) for n in ("three buffers", "two buffers"))
    paired = statistics.median(
        n / o for n, o in zip(per_step["two buffers"], per_step["three buffers"], strict=True)
    )
    print(
        f"{args.method} W={args.world} b=d=512 fp32, {args.steps} interleaved steps: "
        f"three buffers {1e3 * old:.1f} ms, two buffers {1e3 * new:.1f} ms (median); "
        f"ratio {new / old:.3f}, paired median {paired:.3f}"
    )


if __name__ == "__main__":
    main()
