"""``sigsim gpu-check --cpu`` (experiments.gpu_check): the whole script runs end to end (correctness
PASS for every method, one record per planned point in the grid's schema, log and
summary written; the host synchronisations of every method's step counted against the
inventory; the peers part: ours and open_clip's at the target point with their checks,
siglip-kernel and inf-cl recorded as needing CUDA, the ratios line); a budget too short
for anything records every point as skipped instead of running over; a worker that dies
leaves its running point as a failure and the rest as skipped; the reference check fails
a wrong gradient; the peer wheels are fetched and installed by the pip commands the
docstring gives (built, not run: no network in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments import gpu_blocks, gpu_check, gpu_peers, open_clip_peers
from experiments.reference_check import RankResult, reference_errors
from profiling import results
from profiling.launch import LaunchOutcome
from profiling.losses import METHODS
from profiling.measure import PointConfig, make_inputs

ROOT = Path(__file__).resolve().parents[1]


def run_script(out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "experiments", "gpu-check", "--cpu", "--out", str(out), *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def planned(out: Path, *extra: str):
    plan = gpu_check.make_plan(gpu_check.parse_args(["--cpu", "--out", str(out), *extra]))
    return [results.point_key(c.as_dict()) for _, c in gpu_check.planned_points(plan)]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_cpu_mode_end_to_end(tmp_path):
    out = tmp_path / "out"
    done = run_script(out, "--worlds", "2", "8")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            gpu_check.RESULTS,
            gpu_check.CORRECTNESS,
            gpu_check.LOG,
            gpu_check.SUMMARY,
            gpu_check.VALIDATION,
            gpu_check.HOST_SYNCS,
            gpu_check.BLOCKS,
            gpu_check.PEERS,
        ]
    )
    blocks = [json.loads(s) for s in (out / gpu_check.BLOCKS).read_text().splitlines()]
    assert [(b["kernel"], b["operands"], b["path"]) for b in blocks] == [
        (k, o, p) for o in ("bf16", "fp32") for k in gpu_blocks.KERNELS for p in ("torch", "fused")
    ]
    for b in blocks:  # with --cpu the fused kernels run under Triton's interpreter
        assert b["median_s"] > 0 and b["fraction_of_matmul_rate"] > 0, b
        assert max(b["relative_error_vs_fp64"].values()) < 2e-2, b
    correct = [json.loads(s) for s in (out / gpu_check.CORRECTNESS).read_text().splitlines()]
    assert {(c["method"], c["world"]) for c in correct} == {(m, w) for m in METHODS for w in (1, 3)}
    assert all(c["passed"] for c in correct), correct
    syncs = [json.loads(s) for s in (out / gpu_check.HOST_SYNCS).read_text().splitlines()]
    assert {(s["method"], s["world"]) for s in syncs} == {(m, w) for m in METHODS for w in (1, 2)}
    assert all(s["passed"] and s["counted_by"] == "patched reads (cpu)" for s in syncs), syncs
    assert all((s["syncs"] > 0) == (s["world"] > 1) for s in syncs), syncs
    records = results.read_records(out / gpu_check.RESULTS)
    assert sorted(r["key"] for r in records) == sorted(planned(out, "--worlds", "2", "8"))
    for record in records:
        assert record["status"] == "ok", record["message"]
        assert record["part"] in ("single", "targets", "targets-fused", "emulated")
        measured = record["measured"]
        assert measured["step_time_s"]["median"] > 0 and measured["peak_live_bytes"] > 0
        emulated = record["config"]["emulate"] == "stand-in"
        assert (measured["bytes_sent"] > 0) == emulated  # W = 1 moves nothing
    parts = {(r["part"], r["config"]["autocast"]) for r in records}
    assert {("single", None), ("single", "bf16"), ("targets", "bf16")} <= parts
    fused_methods = {r["config"]["method"] for r in records if r["part"] == "targets-fused"}
    assert fused_methods == set(gpu_check.FUSED_METHODS) == set(METHODS) - {"softmax-allgather"}
    assert ("emulated", "bf16") in parts
    check_peers_part(out)
    validation = (out / gpu_check.VALIDATION).read_text()
    assert "against the h100-sxm profile" in validation and "bytes sent" in validation
    assert "PASS" in done.stdout and "measured points" in done.stdout
    assert "correctness: 10/10 PASS" in (out / gpu_check.SUMMARY).read_text()


def check_peers_part(out: Path) -> None:
    """gpu_peers.jsonl of the dry run: every contender at the targets' tiny point in bf16
    autocast, in order; ours (the fused ones under Triton's interpreter) and open_clip's
    measured and checked, the CUDA-only peers skipped with the reason; the ratios line."""
    lines = [json.loads(s) for s in (out / gpu_check.PEERS).read_text().splitlines()]
    *records, summary = lines
    assert [r["config"]["method"] for r in records] == list(open_clip_peers.CONTENDER_NAMES)
    assert summary["type"] == "peer_ratios" and summary["status"] == "ok"
    assert summary["command"] == "sigsim gpu-check (part peers)"
    log = (out / gpu_check.LOG).read_text()
    for record in records:
        config, m = record["config"], record["measured"]
        assert (config["world"], config["batch"], config["dim"]) == (1, 24, 16)
        assert (config["dtype"], config["autocast"], config["backend"]) == ("fp32", "bf16", "gloo")
        assert f"peers {config['method']} W=1" in log
        if open_clip_peers.contender(config["method"]).needs_cuda:
            assert record["status"] == "error" and record["skipped"] and m is None
            assert record["message"].startswith("skipped: needs CUDA: "), record["message"]
            continue
        assert record["status"] == "ok", record["message"]
        assert m["repetitions"] == 2 and m["step_time_s"]["median"] > 0
        ours = open_clip_peers.contender(config["method"]).ours
        assert m["fused_blocks"] == (config["method"].endswith("+fused") if ours else None)
        errors = m["check"]["rel_errors"]
        # under bf16 autocast at b = 24 every sigmoid contender, ours and open_clip's alike,
        # is far off on the near-zero log-scale gradient; loss and features are within
        assert max(errors[k] for k in errors if k != "log_scale_grad") <= m["check"]["tolerance"]
        if m["kind"] == "softmax":
            assert m["check"]["passed"], m["check"]
    rows = {(r["ours"], r["theirs"], r["metric"]) for r in summary["ratios"]}
    for family in (("sigmoid ring", "best sigmoid peer"), ("softmax-ring", "best softmax peer")):
        assert {(*family, "step_time_s"), (*family, "peak_alloc_bytes")} <= rows
    assert "peers ratio sigmoid ring / best sigmoid peer step_time_s" in log


@pytest.mark.slow
@pytest.mark.multiprocess
def test_short_budget_records_every_point_as_skipped(tmp_path):
    out = tmp_path / "out"
    # 16 s from process start: every part's share ends within the first second or at
    # most 15 s before the end, when the worker stops starting points: all spent in start-up.
    done = run_script(out, "--worlds", "2", "--budget-s", "16", "--json")
    assert done.returncode == 1  # nothing was checked: not a success
    records = results.read_records(out / gpu_check.RESULTS)
    assert json.loads(done.stdout)["records"] == records  # --json: stdout is the data
    assert sorted(r["key"] for r in records) == sorted(planned(out, "--worlds", "2"))
    assert all(r["status"] == "timeout" and r["measured"] is None for r in records)
    # On a slow machine the parent may kill the worker first: then the point it was on
    # is a plain timeout and the rest are skipped by the parent.
    skipped = [r for r in records if r.get("skipped")]
    assert len(skipped) >= len(records) - 1
    assert all(r["message"].startswith("skipped:") for r in skipped)
    summary = (out / gpu_check.SUMMARY).read_text()
    assert "skipped" in summary
    peer_lines = json.loads(done.stdout)["peers"]
    assert peer_lines == results.read_records(out / gpu_check.PEERS)
    assert len(peer_lines) == len(open_clip_peers.CONTENDER_NAMES) + 1  # and the ratios
    assert all(r["measured"] is None for r in peer_lines[:-1]), peer_lines


@pytest.mark.parametrize("method", METHODS)
def test_host_sync_count_matches_the_inventory(method):
    """The gpu-check's count at emulated W = 2 (here by patched reads, on CUDA by the
    device's sync debug mode): the cross-rank check, and the rings' upstream read."""
    outcome = gpu_check._count_host_syncs(method, 2, torch.device("cpu"))
    assert outcome["passed"], outcome
    assert outcome["syncs"] == 1 + method.startswith("sigmoid-ring")
    assert outcome["sites"][0].startswith("profiling/losses/checks.py:")
    assert outcome["counted_by"] == "patched reads (cpu)"


def test_dead_worker_leaves_running_point_failed_rest_skipped(tmp_path):
    plan = gpu_check.CheckPlan.cpu_smoke(str(tmp_path), budget_s=100)
    plan.worlds = (2,)
    points = gpu_check.planned_points(plan)
    first = results.make_record(points[0][1].as_dict(), "ok", None, None, {})
    results.append_record(plan.path(gpu_check.RESULTS), first)
    outcome = LaunchOutcome("timeout", "no result after 90 s from ranks [0]")
    gpu_check._fill_missing(plan, outcome, {}, gpu_check.Log(plan))
    records = results.read_records(plan.path(gpu_check.RESULTS))
    assert len(records) == len(points)
    assert records[1]["status"] == "timeout" and not records[1].get("skipped")
    assert "worker ended while this point ran" in records[1]["message"]
    assert all(r["skipped"] for r in records[2:])


def test_reference_check_fails_a_wrong_gradient():
    config = PointConfig(method="sigmoid-ring", world=2, batch=5, dim=8, seed=4)
    # A "loss" whose gradients are the reference's without the factor W: must fail.
    everyone = [make_inputs(config, r, torch.device("cpu")) for r in range(2)]
    x = torch.cat([i.image.detach() for i in everyone]).requires_grad_(True)
    y = torch.cat([i.text.detach() for i in everyone]).requires_grad_(True)
    log_t = everyone[0].log_scale.detach().requires_grad_(True)
    bias = everyone[0].bias.detach().requires_grad_(True)
    from profiling.losses import reference_loss

    loss = reference_loss("sigmoid", x, y, log_t.exp(), bias)
    loss.backward()
    ranks = [
        RankResult(
            r,
            loss.detach(),
            x.grad[r * 5 : (r + 1) * 5],
            y.grad[r * 5 : (r + 1) * 5],
            log_t.grad,
            bias.grad,
        )
        for r in range(2)
    ]
    wrong = reference_errors("sigmoid", config, ranks)
    assert not wrong["passed"] and wrong["rel_errors"]["image_grad_rank0"] == pytest.approx(0.5)
    assert wrong["rel_errors"]["loss"] < 1e-6  # the loss itself is right
    fixed = [
        RankResult(r.rank, r.loss, 2 * r.image_grad, 2 * r.text_grad, r.log_scale_grad, r.bias_grad)
        for r in ranks
    ]
    assert reference_errors("sigmoid", config, fixed)["passed"]


def test_no_gpu_is_refused_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpu_check, "visible_gpus", lambda: 0)
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no GPU is visible" in err[0]


def test_fetch_wheels_builds_the_pip_download_command(tmp_path, monkeypatch):
    folder = tmp_path / "gpu_wheels"
    assert gpu_peers.fetch_command(folder) == [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(folder),
        "open-clip-torch==3.3.0",
        "inf-cl==1.2.1",
        "siglip-kernel==0.1.2",
    ]
    ran = []

    def fake_run(command, check):
        ran.append(command)
        return subprocess.CompletedProcess(command, 3)

    monkeypatch.setattr(gpu_peers.subprocess, "run", fake_run)
    monkeypatch.setattr(gpu_check, "launch", lambda *a, **k: pytest.fail("the check ran"))
    assert gpu_check.main(["--fetch-wheels", str(folder)]) == 3  # pip's status
    assert ran == [gpu_peers.fetch_command(folder)] and folder.is_dir()


def test_wheels_are_installed_offline(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match=r"no wheels in .*--fetch-wheels"):
        gpu_peers.install_command(tmp_path, tmp_path / "site")
    for name in ("inf_cl-1.2.1-py3-none-any.whl", "a-1.0-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    command = gpu_peers.install_command(tmp_path, tmp_path / "site")
    assert command[:9] == [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                           "--upgrade", "--target", str(tmp_path / "site")]  # fmt: skip
    assert [Path(w).name for w in command[9:]] == [
        "a-1.0-py3-none-any.whl",
        "inf_cl-1.2.1-py3-none-any.whl",
    ]
    lines, ran = [], []

    def pip(command, **kwargs):
        ran.append(command)
        return subprocess.CompletedProcess(command, 1, "", "ERROR: no matching distribution\n")

    monkeypatch.setattr(gpu_peers.subprocess, "run", pip)
    monkeypatch.setattr(gpu_peers.sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert not gpu_peers.install_wheels(tmp_path, lines.append)
    assert lines == ["wheels: pip install failed (1): ERROR: no matching distribution"]
    (target,) = [c[c.index("--target") + 1] for c in ran]
    assert target not in gpu_peers.sys.path  # a failed install changes no path
    monkeypatch.setattr(
        gpu_peers.subprocess, "run", lambda c, **k: subprocess.CompletedProcess(c, 0, "", "")
    )
    assert gpu_peers.install_wheels(tmp_path, lines.append)
    target = lines[-1].split(" into ")[1].split(" ")[0]
    assert gpu_peers.sys.path[0] == target
    assert gpu_peers.os.environ["PYTHONPATH"] == f"{target}{gpu_peers.os.pathsep}/elsewhere"
    assert lines[-1].startswith("wheels: installed a-1.0-py3-none-any.whl, inf_cl-1.2.1")
    assert gpu_check.main(["--cpu", "--wheels", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such folder" in err[0]
