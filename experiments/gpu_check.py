"""The one-GPU check: every method and its peers, NCCL at W = 1 and emulated W up to what memory allows.

Run once on a machine with one GPU, from the repository root, within 5 minutes, the
device machine's start included (default ``--budget-s 210``: a fresh machine takes a
minute or more to start, and a lent device's 15 minutes must hold a rerun)::

    sigsim gpu-check --wheels gpu_wheels --out /some/folder   # default folder: $OUT

The peers' wheels travel with the command, since that machine reaches no package
registry: fill the git-ignored ``gpu_wheels/`` once on a machine that does
(``sigsim gpu-check --fetch-wheels gpu_wheels``: ``pip download --no-deps`` of
open-clip-torch 3.3.0, inf-cl 1.2.1 and siglip-kernel 0.1.2), then call the device tool
with::

    run(command="PYTHONUNBUFFERED=1 python3 -m experiments gpu-check --wheels gpu_wheels --out $OUT",
        carry=["gpu_wheels"], timeout_s=300)

(``--wheels DIR``: ``pip install --no-index --no-deps --target TMP DIR/*.whl`` before the
check, TMP a fresh directory put first on the path;
``python -m experiments`` is ``sigsim``). To try the whole path here on the CPU in about
a minute (gloo, tiny sizes)::

    sigsim gpu-check --cpu --out runs/gpu_check_cpu

Five parts, in this order, in one worker process holding a real one-rank process group
(NCCL on the GPU, gloo with ``--cpu``; started by ``profiling.launch``, which kills it at
the deadline):

1. **correctness** (``experiments.gpu_correctness``), fp32, small ``b, d``: every method
   at W = 1 in the process group, and at an emulated small W (rank 0 on the device, its
   peers as CPU threads), loss and gradients against ``reference_loss``; PASS/FAIL each.
   Then the **host synchronisations** of one training step of every method at W = 1 (the
   process group) and emulated W = 2 (stand-in peers), counted under
   ``torch.cuda.set_sync_debug_mode("warn")`` (``--cpu``: the patched-read count of
   ``profiling.host_syncs``) against the inventory ``profiling.losses.checks.HOST_SYNCS``;
   a second or so. Then the **block kernels** (``experiments.gpu_blocks``): the tile at
   the target point (``T = 4096``, ``d = 768``) by the torch block math and by the fused
   Triton kernels, bf16 and fp32 operands, time, rate against the device's measured
   matmul rate, error against fp64 (``gpu_blocks.jsonl``); a few seconds, Triton's
   compilation included.
2. **peers** (``experiments.gpu_peers``): at the target point (``b = 16,384``,
   ``d = 768``, fp32 features in bf16 autocast) at W = 1 on the worker's process group,
   ours (the methods of :data:`FUSED_METHODS` and ``softmax-allgather`` with the torch
   block math, the ring methods again with the fused kernels) against open_clip's
   ``SigLipLoss`` (every ``dist_impl``) and ``ClipLoss(local_loss=True,
   gather_with_grad=True)``, siglip-kernel and inf-cl, interleaved on the same inputs,
   each checked against the reference: step time, allocator peak, bytes, ratios ours /
   best peer per loss family (``gpu_peers.jsonl``); a peer that runs out of memory is a
   result; with ``--cpu`` the CUDA-only peers are records with the reason.
3. **single rank**: every method × dtype at W = 1 through ``profiling.measure``
   (CUDA-event times, allocator peak, NVML used memory when NVML is present, live-tensor
   peak, RSS, torch.profiler byte cross-check).
4. **targets**: the speed issue's GPU points: every method inside bf16 autocast (fp32
   features, as open_clip's ``--precision amp``), ``b = 16,384``, ``d = 768``, at W = 1
   and emulated W = 8, 64 (``--target-batch``, ``--target-worlds``); a method that runs
   out of memory is a result (``oom``). Each point whose blocks the fused kernels cover
   runs again with them on (part ``targets-fused``, ``SIGSIM_FUSED_BLOCKS=1``; with
   ``--cpu`` under Triton's interpreter).
5. **emulated**: every method × dtype (and × ``--autocast``, fp32 features) at each W of
   ``--worlds`` with stand-in peers (``profiling.emulate``), ascending W, so a point
   that runs out of memory is recorded as ``oom`` and the larger W still run for the
   methods that fit.

Single-rank points run every dtype and autocast variant too. After the worker, every
record is validated against the closest bundled GPU profile (``simulator.validate``:
bytes, allocator peak, step time; ``gpu_validation.txt``), the model's error table the
memory and simulator issues ask the GPU for.

Budget: a global deadline ``--budget-s`` after the process started (default 210 s);
correctness with the host synchronisations, the block kernels, the peers, the single-rank
and the targets parts end at 12%, 20%, 45%, 55% and 75% of it (:data:`PART_SHARES`), the
emulated part at the deadline. A point is started only if its estimate (the same
method's last wall time, scaled by W) ends before its part's deadline; otherwise, and
for every point left when the deadline passes, the record says so: status ``timeout``
(the schema's status for "not measured in time"), ``"skipped": true`` and the reason. A
point killed at the deadline is ``timeout``.

Output in ``--out`` (default ``$OUT``): ``gpu_results.jsonl`` (one record per point, the
grid's schema, ``docs/results-schema.md``, plus ``"part"``), ``gpu_correctness.jsonl``,
``gpu_host_syncs.jsonl`` (per method and W: synchronisations counted, the inventory's
number, how they were counted, where), ``gpu_blocks.jsonl`` (the block part),
``gpu_peers.jsonl`` (the peers part: ``sigsim peers``'s records and ratios line),
``gpu_log.txt``, ``gpu_summary.txt`` (the table printed at the end) and
``gpu_validation.txt``. Files of an earlier run in the same folder are replaced.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import torch

from experiments import gpu_blocks, gpu_correctness, gpu_peers
from experiments.gpu_summary import summary_text
from experiments.tables import stdout_to_stderr
from experiments.verbs import add_gpu_check_arguments
from profiling import comm, host_syncs, results, traffic
from profiling.emulate import emulate_point
from profiling.launch import ConfigError, classify_failure, launch, visible_gpus
from profiling.losses import METHODS, fused, get_method
from profiling.measure import (
    DistGroup,
    PointConfig,
    measure_point,
    rank_device,
    validate_point,
)

RESULTS, CORRECTNESS, LOG, SUMMARY, VALIDATION, HOST_SYNCS, BLOCKS, PEERS = (
    "gpu_results.jsonl",
    "gpu_correctness.jsonl",
    "gpu_log.txt",
    "gpu_summary.txt",
    "gpu_validation.txt",
    "gpu_host_syncs.jsonl",
    gpu_blocks.BLOCKS,
    gpu_peers.PEERS,
)
FUSED_METHODS = tuple(m for m in METHODS if get_method(m).ring or get_method(m).kind == "sigmoid")
"""The methods whose blocks the fused kernels compute (``profiling.losses.fused``): every
one but ``softmax-allgather``, whose one-pass row block stays in torch."""
WORKER_MARGIN_S = 15.0
"""The worker stops starting points this long before the deadline (parent's wrap-up)."""
PART_SHARES = {
    "correctness": 0.12,
    "blocks": 0.20,
    "peers": 0.45,
    "single": 0.55,
    "targets": 0.75,
    "targets-fused": 0.75,
}
"""Each part's end as a fraction of the budget after the process started (the host
synchronisations share the block part's); the emulated part runs to the deadline."""


@dataclass(kw_only=True, slots=True)
class CheckPlan:
    """What the check runs; :meth:`cpu_smoke` is the tiny CPU version."""

    out_dir: str
    device: str = "cuda"
    batch: int = 1024
    """b of the measured points (single rank and emulated)."""
    dim: int = 768
    dtypes: tuple[str, ...] = ("fp32", "bf16")
    autocast: tuple[str, ...] = ("bf16",)
    """Autocast dtypes run beside ``dtypes`` (fp32 features inside ``torch.autocast``)."""
    worlds: tuple[int, ...] = (8, 64, 512, 4096)
    """Emulated W (stand-in peers), ascending."""
    target_batch: int = 16384
    target_dim: int = 768
    target_worlds: tuple[int, ...] = (1, 8, 64)
    """The speed issue's GPU points (bf16 autocast): W = 1 real, larger W emulated."""
    steps: int = 5
    warmup: int = 2
    large_world: int = 512
    """Above this W: 3 timed steps and 1 warm-up (each step is W−1 ring rounds)."""
    check_world: int = 4
    check_batch: int = 64
    check_dim: int = 128
    budget_s: float = 210.0
    """Seconds from process start to the global deadline (the check and a device
    machine's start within 5 minutes)."""
    started_epoch_s: float = 0.0

    @classmethod
    def cpu_smoke(cls, out_dir: str, budget_s: float = 240.0) -> CheckPlan:
        return cls(
            out_dir=out_dir,
            device="cpu",
            batch=16,
            dim=32,
            worlds=(2, 8, 64),
            target_batch=24,
            target_dim=16,
            target_worlds=(1, 4),
            steps=2,
            warmup=1,
            large_world=8,
            check_world=3,
            check_batch=8,
            check_dim=16,
            budget_s=budget_s,
        )

    @property
    def backend(self) -> str:
        return "nccl" if self.device == "cuda" else "gloo"

    @property
    def deadline(self) -> float:
        return self.started_epoch_s + self.budget_s

    def part_deadline(self, part: str) -> float:
        share = PART_SHARES.get(part, 1.0)  # emulated: the deadline
        return min(self.started_epoch_s + share * self.budget_s, self.deadline - WORKER_MARGIN_S)

    def path(self, name: str) -> Path:
        return Path(self.out_dir) / name


def precisions(plan: CheckPlan) -> list[tuple[str, str | None]]:
    """(feature dtype, autocast dtype) of the measured points: each dtype, then fp32
    features inside each autocast dtype."""
    return [(dt, None) for dt in plan.dtypes] + [("fp32", a) for a in plan.autocast]


def planned_points(plan: CheckPlan) -> list[tuple[str, PointConfig]]:
    """Every measured point, in run order: (part, config)."""
    common = dict(batch=plan.batch, dim=plan.dim, device=plan.device, pg_timeout_s=60.0)
    points = [
        (
            "single",
            PointConfig(
                method=m,
                world=1,
                dtype=dt,
                autocast=amp,
                steps=plan.steps,
                warmup=plan.warmup,
                **common,
            ),
        )
        for dt, amp in precisions(plan)
        for m in METHODS
    ]
    for world in plan.target_worlds:
        for m in METHODS:
            config = PointConfig(
                method=m,
                world=world,
                batch=plan.target_batch,
                dim=plan.target_dim,
                dtype="fp32",
                autocast="bf16",
                device=plan.device,
                emulate=None if world == 1 else "stand-in",
                steps=3,
                warmup=1,
                pg_timeout_s=60.0,
            )
            points.append(("targets", config))
            if m in FUSED_METHODS:
                points.append(("targets-fused", config))
    for world in plan.worlds:
        large = world > plan.large_world
        for dt, amp in precisions(plan):
            for m in METHODS:
                config = PointConfig(
                    method=m,
                    world=world,
                    dtype=dt,
                    autocast=amp,
                    emulate="stand-in",
                    steps=3 if large else plan.steps,
                    warmup=1 if large else plan.warmup,
                    **common,
                )
                points.append(("emulated", config))
    return points


class Log:
    """Lines to stdout and to ``gpu_log.txt``, stamped with seconds since process start."""

    def __init__(self, plan: CheckPlan):
        self.path, self.start = plan.path(LOG), plan.started_epoch_s

    def __call__(self, message: str) -> None:
        line = f"[{time.time() - self.start:6.1f} s] {message}"
        print(line, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def _free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _skipped(config: PointConfig, part: str, reason: str, env: dict) -> dict:
    record = results.make_record(config.as_dict(), "timeout", f"skipped: {reason}", None, env)
    record.update(part=part, skipped=True)
    return record


def _run_correctness(plan: CheckPlan, device, log: Log) -> None:
    deadline = plan.part_deadline("correctness")
    for method in METHODS:
        for world in (1, plan.check_world):
            config = PointConfig(
                method=method, world=world, batch=plan.check_batch, dim=plan.check_dim, seed=3
            )
            if time.time() > deadline:
                outcome = {"method": method, "world": world, "passed": None, "skipped": True}
                log(f"correctness {method} W={world}: SKIPPED (part deadline)")
            else:
                try:
                    check = (
                        gpu_correctness.check_single_rank
                        if world == 1
                        else gpu_correctness.check_emulated
                    )
                    outcome = check(config, device)
                    verdict = "PASS" if outcome["passed"] else "FAIL"
                    log(
                        f"correctness {method} W={world} ({outcome['where']}): {verdict} "
                        f"max rel error {outcome['max_rel_error']:.1e} (tol {outcome['tolerance']:g})"
                    )
                except Exception as exc:
                    outcome = {
                        "method": method,
                        "world": world,
                        "passed": False,
                        "error": _one_line(exc),
                    }
                    log(f"correctness {method} W={world}: FAIL {_one_line(exc)}")
                    log(traceback.format_exc())
                    _free(device)
            with open(plan.path(CORRECTNESS), "a", encoding="utf-8") as f:
                f.write(json.dumps(outcome) + "\n")


def _count_host_syncs(method: str, world: int, device) -> dict:
    """One warm-up step, then the host synchronisations of one training step (fp32, small
    b, d): W = 1 on the worker's process group, larger W with stand-in peers."""
    from profiling.emulate import StandInTransport

    transport = comm.current() if world == 1 else StandInTransport(world, device)
    cuda = device.type == "cuda"
    with comm.use_transport(transport):
        host_syncs.step(method, host_syncs.make_inputs(device))
        inputs = host_syncs.make_inputs(device, seed=1)
        if cuda:
            torch.cuda.synchronize(device)
        counter = host_syncs.count_cuda_syncs() if cuda else host_syncs.count_reads()
        with counter as reads:
            host_syncs.step(method, inputs)
    expected = host_syncs.expected(method, world=world)
    return {
        "method": method,
        "world": world,
        "counted_by": "cuda sync debug mode" if cuda else "patched reads (cpu)",
        "syncs": len(reads),
        "expected": len(expected),
        "passed": len(reads) == len(expected),
        "sites": [f"{r.path}:{r.line} {r.function or r.call}".strip() for r in reads],
        "inventory": [f"{path} {function}" for path, function in expected],
    }


def _run_host_syncs(plan: CheckPlan, device, log: Log) -> None:
    """Every method's step synchronisations at W = 1 and 2, into ``gpu_host_syncs.jsonl``."""
    for method in METHODS:
        for world in (1, 2):
            if time.time() > plan.part_deadline("blocks"):
                outcome = {"method": method, "world": world, "passed": None, "skipped": True}
                log(f"host syncs {method} W={world}: SKIPPED (part deadline)")
            else:
                try:
                    outcome = _count_host_syncs(method, world, device)
                    verdict = "PASS" if outcome["passed"] else "FAIL"
                    log(
                        f"host syncs {method} W={world}: {verdict} {outcome['syncs']} counted, "
                        f"{outcome['expected']} in the inventory ({outcome['counted_by']})"
                    )
                except Exception as exc:
                    outcome = {"method": method, "world": world, "passed": False}
                    outcome["error"] = _one_line(exc)
                    log(f"host syncs {method} W={world}: FAIL {_one_line(exc)}")
                    _free(device)
            with open(plan.path(HOST_SYNCS), "a", encoding="utf-8") as f:
                f.write(json.dumps(outcome) + "\n")


def _measure(part: str, config: PointConfig, device) -> dict:
    before = os.environ.get(fused.SWITCH)
    os.environ[fused.SWITCH] = "1" if part == "targets-fused" else ""
    try:
        if config.emulate is None:
            return measure_point(config, DistGroup(device), traffic.RecordingTransport(), device)
        return emulate_point(config, device)
    finally:
        if before is None:
            os.environ.pop(fused.SWITCH, None)
        else:
            os.environ[fused.SWITCH] = before


def _estimate_s(walls: dict, part: str, config: PointConfig) -> float:
    """The same method and dtype's last wall time in this part, scaled by W."""
    last = walls.get((part, config.method, config.dtype, config.autocast))
    if last is None:
        return 0.0
    seconds, world = last
    return seconds * max(1.0, config.world / world)


def gpu_worker(rank: int, world: int, plan_dict: dict) -> int:
    """``profiling.launch`` entry (one rank): the five parts; records go to disk as they end."""
    tuples = ("dtypes", "autocast", "worlds", "target_worlds")
    plan = CheckPlan(**{**plan_dict, **{k: tuple(plan_dict[k]) for k in tuples}})
    log = Log(plan)
    device = rank_device(
        PointConfig(method=METHODS[0], world=1, batch=1, dim=1, device=plan.device)
    )
    if device.type == "cpu":  # the fused kernels' CPU path, set before Triton is imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
    env = results.environment(plan.backend, plan.device)
    log(f"worker: {env['device_name']}, torch {env['torch']}, {plan.backend} {env['nccl'] or ''}")
    if device.type == "cuda":
        try:  # reported, not changed: fp32 points use whatever matmul precision is default
            tf32 = torch.get_float32_matmul_precision()
        except Exception as exc:
            tf32 = f"unknown ({_one_line(exc)})"
        log(
            f"NVML used bytes now: {traffic.nvml_used_bytes(device)} (None: no NVML); fp32 matmul precision: {tf32}"
        )
    _run_correctness(plan, device, log)
    _run_host_syncs(plan, device, log)
    try:
        gpu_blocks.run_block_kernels(
            plan.target_batch,
            plan.target_dim,
            device,
            plan.path(BLOCKS),
            plan.part_deadline("blocks"),
            log,
        )
    except Exception as exc:  # the block part must not cost the measured points
        log(f"blocks: FAIL {_one_line(exc)}")
        _free(device)
    try:
        gpu_peers.run_peers_part(plan, env, log)
    except Exception as exc:  # nor the peers part (its records: gpu_peers.fill_missing)
        log(f"peers: FAIL {_one_line(exc)}")
        log(traceback.format_exc())
    _free(device)

    walls: dict = {}
    failed_world: dict = {}  # (method, dtype) -> W that ran out of memory
    for part, config in planned_points(plan):
        deadline = plan.part_deadline(part)
        variant = (part, config.method, config.dtype, config.autocast, config.batch)
        amp = f" autocast {config.autocast}" if config.autocast else ""
        label = f"{part} {config.method} W={config.world} b={config.batch} {config.dtype}{amp}"
        oom_at = failed_world.get(variant)
        if oom_at is not None and config.world > oom_at:
            record = results.make_record(
                config.as_dict(), "oom", f"not run: out of memory already at W={oom_at}", None, env
            )
            record["part"] = part
            results.append_record(plan.path(RESULTS), record)
            log(f"{label}: oom (skipped, smaller W={oom_at} ran out of memory)")
            continue
        estimate = _estimate_s(walls, part, config)
        if time.time() + estimate > deadline:
            why = f"estimated {estimate:.0f} s would end after the {part} part's deadline"
            results.append_record(plan.path(RESULTS), _skipped(config, part, why, env))
            log(f"{label}: skipped ({why})")
            continue
        start = time.time()
        status, message, measured = "ok", None, None
        try:
            validate_point(config)
            measured = _measure(part, config, device)
        except ConfigError as exc:
            status, message = "error", f"refused: {exc}"
        except Exception as exc:
            status, message = classify_failure(exc), _one_line(exc)
            if status != "oom":
                log(traceback.format_exc())
        wall = time.time() - start
        _free(device)
        if status == "oom":
            failed_world[variant] = config.world
        walls[(part, config.method, config.dtype, config.autocast)] = (wall, config.world)
        record = results.make_record(config.as_dict(), status, message, measured, env, wall_s=wall)
        record["part"] = part
        results.append_record(plan.path(RESULTS), record)
        step = (measured or {}).get("step_time_s") or {}
        median = f"{step['median'] * 1e3:.2f} ms" if step else ""
        log(f"{label}: {status} {median} ({wall:.1f} s) {message or ''}")
    return 0


def _fill_missing(plan: CheckPlan, outcome, env: dict, log: Log) -> None:
    """Points without a record after the worker ended: the first was running, the rest never ran."""
    done = {r.get("key") for r in results.read_records(plan.path(RESULTS))}
    missing = [
        (p, c) for p, c in planned_points(plan) if results.point_key(c.as_dict()) not in done
    ]
    for index, (part, config) in enumerate(missing):
        if index == 0 and outcome.status != "ok":
            status = outcome.status if outcome.status in results.STATUSES else "error"
            message = f"worker ended while this point ran: {outcome.message}"
            record = results.make_record(config.as_dict(), status, message, None, env)
            record["part"] = part
        else:
            record = _skipped(config, part, f"the worker ended ({outcome.status})", env)
        results.append_record(plan.path(RESULTS), record)
    if missing:
        log(
            f"{len(missing)} planned points had no record; recorded ({outcome.status}: {outcome.message})"
        )


def validation_profile(plan: CheckPlan) -> str:
    """The bundled profile the records are validated against: the closest GPU's
    (an H200 or H100: ``h100-sxm``; an A100: ``a100-sxm-80gb``), or this CPU's own."""
    if plan.device != "cuda":  # the CPU dry run exercises the same path on a GPU profile;
        return "h100-sxm"  # its memory rows then differ by design (half operands, CUDA tile)
    name = torch.cuda.get_device_name(0).lower()
    return "a100-sxm-80gb" if "a100" in name else "h100-sxm"


def write_validation(plan: CheckPlan, log: Log) -> None:
    """``simulator.validate`` over every record, into ``gpu_validation.txt``."""
    from rich.console import Console

    from simulator.validate import validate

    profile = validation_profile(plan)
    with open(plan.path(VALIDATION), "w", encoding="utf-8") as handle:
        console = Console(file=handle, width=160)
        console.print(f"records of {plan.path(RESULTS)} against the {profile} profile")
        try:
            summary = validate([plan.path(RESULTS)], profile, console)
        except Exception as exc:  # the measurements are kept whatever happens here
            console.print(f"validation failed: {_one_line(exc)}")
            log(f"validation failed: {_one_line(exc)}")
            return
    log(f"validation: {summary['points_compared']} points against {profile}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sigsim gpu-check", description=__doc__.split("\n")[0])
    add_gpu_check_arguments(parser)
    return parser.parse_args(argv)


def make_plan(args) -> CheckPlan:
    out = args.out or "runs/gpu_check"
    plan = CheckPlan.cpu_smoke(out) if args.cpu else CheckPlan(out_dir=out)
    for name in ("budget_s", "batch", "dim"):
        if getattr(args, name) is not None:
            setattr(plan, name, getattr(args, name))
    if args.worlds:
        plan.worlds = tuple(sorted(args.worlds))
    if args.autocast is not None:
        plan.autocast = tuple(args.autocast)
    if args.target_batch is not None:
        plan.target_batch = args.target_batch
    if args.target_worlds:
        plan.target_worlds = tuple(sorted(args.target_worlds))
    plan.started_epoch_s = psutil.Process().create_time()
    return plan


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.fetch_wheels:  # on a machine with registry access; nothing else runs
        return gpu_peers.fetch_wheels(args.fetch_wheels)
    if args.wheels and not Path(args.wheels).is_dir():
        print(f"error: --wheels {args.wheels}: no such folder", file=sys.stderr)
        return 2
    plan = make_plan(args)
    if plan.device == "cuda" and visible_gpus() == 0:
        print("error: no GPU is visible; use --cpu for the tiny CPU run", file=sys.stderr)
        return 2
    if min(plan.batch, plan.dim, *plan.worlds) < 1 or plan.budget_s <= WORKER_MARGIN_S:
        print(
            "error: batch, dim and worlds must be >= 1 and the budget above 15 s", file=sys.stderr
        )
        return 2
    Path(plan.out_dir).mkdir(parents=True, exist_ok=True)
    for name in (RESULTS, CORRECTNESS, LOG, SUMMARY, VALIDATION, HOST_SYNCS, BLOCKS, PEERS):
        plan.path(name).unlink(missing_ok=True)
    with stdout_to_stderr(args.json):  # under --json stdout carries only the JSON
        correct, status = _check(plan, args.wheels)
    if args.json:  # what the summary tables show, as data
        records = results.read_records(plan.path(RESULTS))
        peer_lines = results.read_records(plan.path(PEERS))
        print(
            json.dumps(
                {
                    "out_dir": str(plan.out_dir),
                    "correctness": correct,
                    "records": records,
                    "peers": peer_lines,
                }
            )
        )
    return status


def _check(plan: CheckPlan, wheels: str | None = None) -> tuple[list[dict], int]:
    """Run the check into ``plan.out_dir`` (after installing the peer wheels of
    ``wheels``, if given); the correctness lines and the exit status."""
    log = Log(plan)
    if wheels:
        gpu_peers.install_wheels(wheels, log)
    log(f"plan: {json.dumps(asdict(plan))}")
    log(
        f"{len(planned_points(plan))} measured points planned; deadline in {plan.deadline - time.time():.0f} s"
    )
    outcome = launch(
        gpu_worker,
        (asdict(plan),),
        world=1,
        backend=plan.backend,
        timeout_s=max(1.0, plan.deadline - time.time() - 5.0),
        pg_timeout_s=60.0,
    )
    log(f"worker: {outcome.status} after {outcome.wall_s:.0f} s {outcome.message or ''}")
    env = results.environment(plan.backend, plan.device)
    _fill_missing(plan, outcome, env, log)
    gpu_peers.fill_missing(plan, outcome, env, log)
    text = summary_text(plan.path(RESULTS), plan.path(CORRECTNESS))
    print(text)
    plan.path(SUMMARY).write_text(text + "\n", encoding="utf-8")
    write_validation(plan, log)
    log(f"done; files in {plan.out_dir}")
    lines = (
        plan.path(CORRECTNESS).read_text().splitlines() if plan.path(CORRECTNESS).exists() else []
    )
    correct = [json.loads(line) for line in lines if line.strip()]
    passed = outcome.status == "ok" and correct and all(c.get("passed") for c in correct)
    return correct, 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
