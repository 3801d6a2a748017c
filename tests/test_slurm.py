"""The documented Slurm sweep, run through a real Slurm on this machine.

``experiments/cluster/local_slurm.sh`` starts munged, slurmctld and slurmd (Debian's
``slurm-wlm`` 22.05, one node, everything in a fresh directory on free ports); the test
submits ``experiments/cluster/sweep.sbatch`` with ``experiments/cluster/cpu_grid.toml``
exactly as docs/cluster.md shows (one node, two gloo ranks under torchrun per point),
cancels the job with ``scancel`` once the first record has landed, submits the same
command again, and checks that every point ends with exactly one ``ok`` record, the
records from before the cancellation kept as they were (nothing lost, nothing run
twice). A grid that does not fit the job is refused before any step starts; a point that
``timeout`` kills is marked ``timeout`` by the script, retried once by the next job and
skipped by the one after. The test stops the daemons itself (and those a crashed earlier
run left). Needs root and Slurm (``experiments/cluster/install_slurm.sh``): skipped with
the reason otherwise, failed in CI (``CI=true``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prerequisites import require_root_and

from profiling import results
from profiling.grid import load_grid

ROOT = Path(__file__).parents[1]
CLUSTER = ROOT / "experiments" / "cluster"
GRID = "experiments/cluster/cpu_grid.toml"
STATE_PREFIX = "sigsim-slurm-"
JOB_TIMEOUT_S = 600
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def slurm_test(fn):
    return pytest.mark.slurm(pytest.mark.slow(pytest.mark.multiprocess(fn)))


def _local_slurm(action: str, state: Path) -> str:
    done = subprocess.run(
        ["bash", str(CLUSTER / "local_slurm.sh"), action, str(state)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"local_slurm.sh {action}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def _remove_leftovers(base: Path) -> None:
    """Stop the daemons of earlier runs whose test process is gone, and their files."""
    for old in base.glob(f"{STATE_PREFIX}*"):
        pid = old.name[len(STATE_PREFIX) :]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _local_slurm("stop", old)
            shutil.rmtree(old, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm():
    """A running one-node Slurm; yields the environment that points commands at it."""
    require_root_and("slurmctld", "slurmd", "munged", "mungekey", "sbatch", "scancel")
    base = Path("/tmp")
    _remove_leftovers(base)
    state = base / f"{STATE_PREFIX}{os.getpid()}"
    shutil.rmtree(state, ignore_errors=True)
    try:
        _local_slurm("start", state)
        bin_dir = str(Path(sys.executable).parent)  # python and torchrun of this venv
        yield {
            **os.environ,
            "SLURM_CONF": str(state / "slurm.conf"),
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT),
        }
    finally:
        conf = {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
        with contextlib.suppress(Exception):  # jobs a failed assertion left running
            subprocess.run(["scancel", "--user=root"], env=conf, timeout=30, capture_output=True)
        _local_slurm("stop", state)
        shutil.rmtree(state, ignore_errors=True)


def sbatch(env: dict, out: Path, log_dir: Path, *, grid: str = GRID, **settings: str) -> str:
    """Submit the sweep as docs/cluster.md shows for one CPU node; returns the job id.
    ``settings``: the script's environment (``PROCS_PER_NODE`` defaults to 2)."""
    command = [
        "sbatch", "--parsable", "--nodes=1", "--cpus-per-task=2",
        f"--output={log_dir}/sweep-%j.out",
        "experiments/cluster/sweep.sbatch", grid, str(out),
    ]  # fmt: skip
    env = {**env, "PROCS_PER_NODE": "2", **settings}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def job_state(env: dict, job: str) -> tuple[str, str]:
    """(JobState, ExitCode) from scontrol."""
    done = subprocess.run(
        ["scontrol", "show", "job", job], env=env, capture_output=True, text=True, timeout=30
    )
    state = re.search(r"JobState=(\S+)", done.stdout)
    code = re.search(r"\bExitCode=(\S+)", done.stdout)
    return (state.group(1) if state else "UNKNOWN", code.group(1) if code else "")


def wait_for(predicate, what: str, timeout_s: float = JOB_TIMEOUT_S, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"gave up after {timeout_s:g} s waiting for {what}")


def wait_done(env: dict, job: str) -> tuple[str, str]:
    return wait_for(
        lambda: (s := job_state(env, job))[0] in ENDED and s, f"job {job} to end", every_s=1.0
    )


def test_docs_gpu_grid_fits_the_documented_job(tmp_path):
    """The GPU grid docs/cluster.md shows loads, and its W is the 2 × 8 job shown with it."""
    text = (ROOT / "docs" / "cluster.md").read_text()
    (toml,) = re.findall(r"```toml\n(.*?)```", text, re.S)
    (tmp_path / "gpu_grid.toml").write_text(toml)
    points = load_grid(tmp_path / "gpu_grid.toml")
    assert "--nodes=2 --gpus-per-node=8" in text
    assert {(p.device, p.world, p.emulate) for p in points} == {("cuda", 16, None)}
    assert len(points) == 8


@slurm_test
def test_refuses_a_grid_that_does_not_fit_the_job(slurm, tmp_path):
    out = tmp_path / "refused.jsonl"
    job = sbatch(slurm, out, tmp_path, PROCS_PER_NODE="3")
    assert wait_done(slurm, job) == ("FAILED", "1:0")
    log = (tmp_path / f"sweep-{job}.out").read_text()
    assert "this job runs 3 ranks on cpu" in log, log
    assert not out.exists()


@slurm_test
def test_sweep_cancelled_then_rerun_resumes_without_loss_or_duplicates(slurm, tmp_path):
    out = tmp_path / "sweep.jsonl"
    keys = [results.point_key(p.as_dict()) for p in load_grid(ROOT / GRID)]
    first = sbatch(slurm, out, tmp_path)

    def first_record():
        if not out.exists() and (state := job_state(slurm, first))[0] in ENDED:
            raise AssertionError(f"job {first} ended without a record: {state}")
        return results.read_records(out)

    wait_for(first_record, "the first record")
    subprocess.run(["scancel", first], env=slurm, check=True, timeout=30)
    assert wait_done(slurm, first)[0] == "CANCELLED"
    before = out.read_text().splitlines()
    assert 1 <= len(before) < len(keys), "cancel came too late to test resuming"

    second = sbatch(slurm, out, tmp_path)
    assert wait_done(slurm, second) == ("COMPLETED", "0:0")
    log = (tmp_path / f"sweep-{second}.out").read_text()
    assert f"{len(keys)} points, {len(before)} already in" in log, log

    lines = out.read_text().splitlines()
    assert lines[: len(before)] == before  # the cancelled job's records kept as written
    records = results.read_records(out)
    assert sorted(r["key"] for r in records) == sorted(keys)  # each point once, none lost
    for record in records:
        assert record["status"] == "ok", record["message"]
        assert record["env"]["launcher"] == "torchrun"
        assert record["measured"]["ranks_agree"] and record["measured"]["bytes_sent"] > 0
        assert record["topology"]["nodes"] == 1 and record["topology"]["ranks_per_node"] == [2]


@slurm_test
def test_a_point_killed_by_its_timeout_is_marked_and_retried_once(slurm, tmp_path):
    """``timeout`` kills the step before rank 0 records the point: ``mark`` records a
    timeout; the next job retries it once (attempt 2); the third skips it."""
    grid = tmp_path / "one.toml"
    grid.write_text(
        '[[points]]\nmethod = "sigmoid-ring"\nworld = 2\nbatch = 8\ndim = 16\nsteps = 2\nwarmup = 1\n'
    )
    assert len(load_grid(grid)) == 1
    out = tmp_path / "timeouts.jsonl"
    for _ in range(3):  # 1 s: less than torchrun needs to start its ranks
        job = sbatch(slurm, out, tmp_path, grid=str(grid), POINT_TIMEOUT_S="1")
        assert wait_done(slurm, job) == ("COMPLETED", "0:0")
    records = results.read_records(out)
    assert [(r["status"], r["attempt"]) for r in records] == [("timeout", 1), ("timeout", 2)]
    assert all(r["message"] == "torchrun exited with code 124" for r in records)
    assert all(r["topology"] is None for r in records)  # placement unknown: not guessed
    assert "1 points, 1 already in" in (tmp_path / f"sweep-{job}.out").read_text()
