"""profiling.launch: results in rank order, and every failure (raise, OOM, hung collective,
killed rank, wall-clock timeout) comes back as one classified outcome, never a hang."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from profiling.launch import ConfigError, classify_failure, find_free_port, launch


def gather_ranks(rank, world, offset):
    mine = torch.tensor([rank + offset])
    out = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
    dist.all_gather(out, mine)
    return {"rank": rank, "seen": [int(t) for t in out], "threads": torch.get_num_threads()}


def hang_rank1(rank, world):
    if rank == 1:
        time.sleep(1000)
    dist.barrier()
    return rank


def kill_rank1(rank, world):
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier()
    return rank


def test_find_free_port_is_bindable():
    port = find_free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert 1024 <= port < 65536


def test_classify_failure():
    assert classify_failure(torch.OutOfMemoryError("CUDA out of memory")) == "oom"
    assert classify_failure(MemoryError()) == "oom"
    assert classify_failure(RuntimeError("DefaultCPUAllocator: can't allocate memory")) == "oom"
    assert classify_failure(RuntimeError("Timed out waiting 2000ms for recv")) == "timeout"
    assert classify_failure(ValueError("bad shape")) == "error"


def test_refusals_before_launch():
    with pytest.raises(ConfigError, match="world size must be at least 1"):
        launch(gather_ranks, (0,), world=0)
    if torch.cuda.device_count() < 64:
        with pytest.raises(ConfigError, match=r"exceeds the .* visible GPUs"):
            launch(gather_ranks, (0,), world=64, backend="nccl")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_results_in_rank_order():
    outcome = launch(gather_ranks, (10,), world=3, timeout_s=120)
    assert outcome.status == "ok", outcome.message
    assert [v["rank"] for v in outcome.values] == [0, 1, 2]
    assert all(v["seen"] == [10, 11, 12] for v in outcome.values)
    assert all(v["threads"] == max(1, (os.cpu_count() or 1) // 3) for v in outcome.values)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_hung_collective_is_bounded_by_the_group_timeout():
    start = time.perf_counter()
    outcome = launch(hang_rank1, world=2, timeout_s=120, pg_timeout_s=2)
    assert outcome.status == "timeout", outcome.message
    assert outcome.message.startswith("rank 0:")
    assert time.perf_counter() - start < 60


@pytest.mark.slow
@pytest.mark.multiprocess
def test_wall_clock_timeout_kills_every_rank():
    outcome = launch(hang_rank1, world=2, timeout_s=4, pg_timeout_s=600)
    assert outcome.status == "timeout"
    assert "no result after 4 s" in outcome.message
    assert outcome.wall_s < 30


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_killed_rank_is_reported():
    outcome = launch(kill_rank1, world=2, timeout_s=120, pg_timeout_s=30)
    assert outcome.status == "error"
    assert "rank 1: died with signal 9" in outcome.message


@pytest.mark.slow
@pytest.mark.multiprocess
def test_same_worker_under_torchrun(tmp_path):
    """``torchrun -m experiments point`` (``sigsim point``): env:// rendezvous, rank 0 writes."""
    out = tmp_path / "r.jsonl"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun), "--nproc-per-node", "2", "--master-port", str(find_free_port()),
        "-m", "experiments", "point", "--method", "sigmoid-ring", "--world", "2",
        "--batch", "8", "--dim", "16", "--steps", "2", "--warmup", "1", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["status"] == "ok" and record["env"]["launcher"] == "torchrun"
    assert record["measured"]["ranks_agree"] and record["measured"]["bytes_sent"] > 0
