"""The GPU check's peers part, and the peer wheels that travel with the check.

**The part** (:func:`run_peers_part`, after correctness, host synchronisations and the
block kernels, before the measured parts): at the speed issue's GPU point
(``plan.target_batch`` × ``plan.target_dim``, fp32 features inside bf16 autocast) on the
check worker's own one-rank process group (NCCL; gloo with ``--cpu``), every contender of
``experiments.open_clip_peers`` that runs there, interleaved on the same inputs by the
peer benchmark's harness (``experiments.peer_worker.peers_rank``): ours with the torch
block math (the four methods of ``gpu_check.FUSED_METHODS`` and ``softmax-allgather``),
the ring methods again with the fused tile kernels (``+fused``), open_clip's
``SigLipLoss`` (every ``dist_impl``; at W = 1 the same local code) and ``ClipLoss(local_loss=True,
gather_with_grad=True)``, siglip-kernel and inf-cl. Each: step time (CUDA events),
allocator peak, bytes, and the reference check; a contender that runs out of memory is a
result (``oom``), one that cannot run here a record with the reason (with ``--cpu``:
siglip-kernel and inf-cl, "needs CUDA"). Output: ``gpu_peers.jsonl``, the records and
ratios line ``sigsim peers`` writes (:func:`experiments.peers.world_lines`: ours / best
peer per loss family, siglip-kernel among the sigmoid peers, inf-cl among the softmax
ones, and against open_clip alone), and a line per contender in ``gpu_log.txt``. The part
has its own deadline (``CheckPlan.part_deadline("peers")``); past it no repetition starts.

**The wheels.** The GPU machine reaches no package registry, so the peers travel as
wheels in a git-ignored folder (:data:`WHEELS_DIR`), filled on a machine that does::

    sigsim gpu-check --fetch-wheels gpu_wheels

(``pip download --no-deps --only-binary=:all:`` of :data:`open_clip_peers.PACKAGES`:
open-clip-torch 3.3.0, inf-cl 1.2.1, siglip-kernel 0.1.2, all pure-Python wheels), and on
the GPU machine ``sigsim gpu-check --wheels gpu_wheels`` installs them offline first
(``pip install --no-index --no-deps --target TMP gpu_wheels/*.whl``, TMP first on the
path: :func:`install_wheels`).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from experiments import peers
from experiments.open_clip_peers import CONTENDER_NAMES, PACKAGES, split_available
from experiments.peer_worker import PeerConfig, peers_rank
from profiling import results
from profiling.launch import classify_failure

PEERS = "gpu_peers.jsonl"
WHEELS_DIR = "gpu_wheels"
"""The folder ``--fetch-wheels`` fills by convention (in ``.gitignore``)."""


def fetch_command(folder: str | Path) -> list[str]:
    """``pip download`` of every peer's pinned wheel, without dependencies, into ``folder``."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(folder),
        *(p.requirement for p in PACKAGES),
    ]


def install_command(folder: str | Path, target: str | Path) -> list[str]:
    """``pip install`` of the wheels in ``folder`` into the directory ``target``, with no
    registry and no dependencies; ValueError (one line) if ``folder`` holds none."""
    wheels = sorted(str(w) for w in Path(folder).glob("*.whl"))
    if not wheels:
        raise ValueError(f"no wheels in {folder}; fill it with sigsim gpu-check --fetch-wheels")
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-index",
        "--no-deps",
        "--upgrade",
        "--target",
        str(target),
        *wheels,
    ]


def fetch_wheels(folder: str | Path) -> int:
    """Run :func:`fetch_command`; pip's exit status."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return subprocess.run(fetch_command(folder), check=False).returncode


def install_wheels(folder: str | Path, log) -> bool:
    """Install the wheels of ``folder`` offline (:func:`install_command`) into a fresh
    temporary directory put first on ``sys.path`` and ``PYTHONPATH`` (so the check's
    worker, spawned after, imports them too); whether pip succeeded. A directory of its
    own leaves the machine's Python as it was and needs no write access to it (nor an
    exemption from PEP 668). A failure is logged, not raised: the peers it would have
    installed are then recorded as not installed, and the rest of the check runs."""
    target = tempfile.mkdtemp(prefix="sigsim-peer-wheels-")
    try:
        command = install_command(folder, target)
    except ValueError as exc:
        log(f"wheels: {exc}")
        return False
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).split())[-300:]
        log(f"wheels: pip install failed ({done.returncode}): {tail}")
        return False
    sys.path.insert(0, target)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [target, *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    importlib.invalidate_caches()
    names = ", ".join(Path(w).name for w in command[command.index(target) + 1 :])
    log(f"wheels: installed {names} into {target} (offline, no dependencies)")
    return True


def peer_config(plan, deadline_epoch_s: float | None = None) -> PeerConfig:
    """The peers part's point: the targets' ``b`` and ``d``, W = 1, bf16 autocast."""
    cuda = plan.device == "cuda"
    return PeerConfig(
        world=1,
        batch=plan.target_batch,
        dim=plan.target_dim,
        dtype="fp32",
        autocast="bf16",
        device=plan.device,
        steps=5 if cuda else 2,
        warmup=1,
        contenders=CONTENDER_NAMES,
        deadline_epoch_s=deadline_epoch_s,
        extra={"command": "sigsim gpu-check (part peers)"},
    )


def run_peers_part(plan, env: dict, log) -> None:
    """The part: every contender into ``gpu_peers.jsonl`` and a line each in the log."""
    deadline = plan.part_deadline("peers")
    config = peer_config(plan, deadline)
    runnable, skipped = split_available(config.contenders, config.device, config.world)
    status, message, outcomes, started = "ok", None, {}, time.time()
    if started > deadline:  # as the measured parts record a point not run in time
        late = "skipped: the peers part's deadline had passed"
        outcomes = {
            n: {"status": "timeout", "message": late, "measured": None, "skipped": True}
            for n in runnable
        }
        runnable = ()
    if runnable:
        try:
            outcomes = peers_rank(0, 1, dataclasses.replace(config, contenders=runnable).as_dict())
        except Exception as exc:  # the part must not cost the measured points
            status, message = classify_failure(exc), _one_line(exc)
            log(traceback.format_exc())
    records, summary = peers.world_lines(
        config,
        plan.backend,
        env,
        outcomes=outcomes,
        skipped=skipped,
        status=status,
        message=message,
        wall_s=time.time() - started,
    )
    for line in [*records, summary]:
        results.append_record(plan.path(PEERS), line)
    for record in records:
        log(_line(record))
    for row in summary["ratios"]:
        if row["metric"] in ("step_time_s", "peak_alloc_bytes"):
            target = row["target_max_ratio"]
            verdict = "" if target is None else f" (target <= {target:g}: {row['target_met']})"
            ratio = "—" if row["ratio"] is None else f"{row['ratio']:.3f}"
            log(
                f"peers ratio {row['ours']} / {row['theirs']} {row['metric']}: "
                f"{ratio} ({row['best_ours']} / {row['best_theirs']}){verdict}"
            )


def _line(record: dict) -> str:
    """One log line: the contender, its status, median step, allocator peak, check."""
    config, m = record["config"], record["measured"]
    head = (
        f"peers {config['method']} W={config['world']} b={config['batch']} d={config['dim']} "
        f"{config['dtype']} autocast {config['autocast']}"
    )
    if m is None:
        return f"{head}: {record['status']} {record['message'] or ''}"
    step = (m.get("step_time_s") or {}).get("median")
    parts = ["ok", "no repetition ran" if step is None else f"{step * 1e3:.2f} ms"]
    if m.get("peak_alloc_bytes") is not None:
        parts.append(f"alloc peak {m['peak_alloc_bytes'] / 2**20:,.1f} MiB")
    check = m.get("check")
    if check:
        verdict = "PASS" if check["passed"] else "FAIL"
        parts.append(
            f"check {verdict} max rel error {check['max_rel_error']:.1e} (tol {check['tolerance']:g})"
        )
    return f"{head}: {', '.join(parts)}"


def fill_missing(plan, outcome, env: dict, log) -> None:
    """After the worker: if it ended before the peers part wrote its lines, every
    contender gets a record saying so (the worker's status)."""
    path = plan.path(PEERS)
    lines = results.read_records(path)
    if any(line.get("type") == "peer_ratios" for line in lines):
        return
    config = peer_config(plan)
    status = outcome.status if outcome.status in results.STATUSES else "error"
    why = f"the worker ended before the peers part finished ({outcome.status}: {outcome.message})"
    done = {line["config"]["method"] for line in lines if "config" in line}
    records, summary = peers.world_lines(
        dataclasses.replace(config, contenders=tuple(n for n in CONTENDER_NAMES if n not in done)),
        plan.backend,
        env,
        outcomes={},
        skipped={},
        status="error" if status == "ok" else status,
        message=why,
    )
    for line in [*records, summary]:
        results.append_record(path, line)
    log(f"peers: {len(records)} contenders had no record; recorded ({why})")


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
