"""What ``sigsim point | grid | mark`` do (their options: :mod:`profiling.cli`): measure one
point locally or under torchrun, run a grid, record a point that died without a record."""

from __future__ import annotations

import datetime
import os
import sys
import time

from profiling import results
from profiling.grid import describe, load_grid, run_grid, run_point, validate_grid
from profiling.launch import ConfigError, classify_failure, node_placement, run_from_env
from profiling.measure import PointConfig, measure_rank, validate_point


def _config(args) -> PointConfig:
    if args.grid is not None:
        points = load_grid(args.grid)
        if args.index is None or not 0 <= args.index < len(points):
            raise ConfigError(f"--index must be in [0, {len(points)}) for {args.grid}")
        return points[args.index]
    missing = [n for n in ("method", "world", "batch", "dim") if getattr(args, n) is None]
    if missing:
        raise ConfigError(f"a point needs --{missing[0]} (or --grid and --index)")
    return PointConfig(
        method=args.method, world=args.world, batch=args.batch, dim=args.dim,
        dtype=args.dtype, autocast=args.autocast, device=args.device, emulate=args.emulate,
        overlap=args.overlap, hide_accumulator=args.hide_accumulator,
        tile=args.tile, steps=args.steps, warmup=args.warmup, seed=args.seed,
        timeout_s=args.timeout_s, pg_timeout_s=args.pg_timeout_s,
        profile=not args.no_profile, fault=args.fault,
    )  # fmt: skip


def _summary(record: dict) -> str:
    m, c = record["measured"], record["config"]
    head = f"[{record['status']}] {c['method']} W={c['world']} b={c['batch']} d={c['dim']}"
    if not m:
        return f"{head}: {record['message']}"
    step = m["step_time_s"]["median"] * 1e3 if m.get("step_time_s") else float("nan")
    return (
        f"{head}: step {step:.3f} ms (median, max over ranks), live peak "
        f"{m['peak_live_bytes'] / 2**20:.3f} MiB, sent {m['bytes_sent'] / 1e6:.3f} MB/rank"
    )


def _placed_rank(rank: int, world: int, config_dict: dict):
    """Under torchrun: where every rank runs (``launch.node_placement``), then the point."""
    placement = node_placement()
    return placement, measure_rank(rank, world, config_dict)


def _torchrun_point(config: PointConfig, out: str) -> int:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world != config.processes:
        raise ConfigError(f"torchrun started {world} ranks; the point needs {config.processes}")
    env = results.environment(config.backend, config.device, launcher="torchrun")
    start = time.perf_counter()
    topology = None
    try:
        placement, measured = run_from_env(
            _placed_rank, (config.as_dict(),), backend=config.backend,
            pg_timeout_s=config.pg_timeout_s,
        )  # fmt: skip
        if not config.emulate:  # one process and stand-in peers: no placement to report
            topology = results.topology(placement, measured["comm_ops"] if measured else None)
        status, message = "ok", None
    except Exception as exc:
        measured, status = None, classify_failure(exc)
        message = f"rank {rank}: {type(exc).__name__}: {' '.join(str(exc).split())[:400]}"
    if rank == 0:
        _, timeouts = results.resume_state(results.read_records(out))
        key = results.point_key(config.as_dict())
        record = results.make_record(
            config.as_dict(), status, message, measured, env,
            attempt=timeouts.get(key, 0) + 1, wall_s=time.perf_counter() - start,
            topology=topology,
        )  # fmt: skip
        results.append_record(out, record)
        print(_summary(record))
    return 0 if status == "ok" else 1


def handle(args) -> int:
    """Run the ``point``, ``grid`` or ``mark`` verb of parsed ``args``; 2 on bad input."""
    try:
        if args.command == "grid":
            points = load_grid(args.grid_file)
            if args.count:
                print(len(points))
                return 0
            if not args.out:
                raise ConfigError("grid needs --out results.jsonl")
            summary = run_grid(
                points, args.out, retry_errors=args.retry_errors, progress=not args.no_progress
            )
            print(summary.line())
            return 0
        config = _config(args)
        key = results.point_key(config.as_dict())
        finished, timeouts = results.resume_state(results.read_records(args.out))
        if args.command == "mark":
            since = datetime.datetime.fromtimestamp(args.since, datetime.UTC).isoformat()
            recent = [
                r for r in results.read_records(args.out)
                if r.get("key") == key and r["env"].get("time_utc", "") >= since[:19]
            ]  # fmt: skip
            if recent or key in finished:
                return 0
            env = results.environment(config.backend, config.device, launcher="torchrun")
            record = results.make_record(
                config.as_dict(), args.status, args.message, None, env,
                attempt=timeouts.get(key, 0) + 1,
            )  # fmt: skip
            results.append_record(args.out, record)
            return 0
        if key in finished:
            print(f"done already: {describe(config)} (key {key} in {args.out})")
            return 0
        if "RANK" in os.environ:
            validate_point(config, local=False)
            status = _torchrun_point(config, args.out)
            # The record is written. Leave without C++ static teardown: kineto (the
            # torch.profiler cross-check) can leave a joinable thread that aborts a normal
            # interpreter exit ("terminate called without an active exception"), seen in
            # about 1 run in 4 under torchrun; spawned ranks already end this way.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
        validate_grid([config])
        record = run_point(config, attempt=timeouts.get(key, 0) + 1)
        results.append_record(args.out, record)
        print(_summary(record))
        return 0 if record["status"] == "ok" else 1
    except ConfigError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
