"""experiments.peers: open_clip's SigLIP and CLIP losses agree with ours and with the
reference once its per-local-batch normalisation is accounted for, its bytes are counted
in the documented pattern, the benchmark runs end to end at W = 2, and the ratios pick
the best contender on each side; a missing open-clip-torch gives one line with the pip
command."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from experiments import open_clip_peers, peers
from experiments.dist_counter import count_traffic
from profiling.launch import launch
from profiling.losses.checks import RANK_CHECK_BYTES
from profiling.measure import PointConfig, forward, make_inputs

HAVE_OPEN_CLIP = importlib.util.find_spec("open_clip") is not None
needs_open_clip = pytest.mark.skipif(
    not HAVE_OPEN_CLIP,
    reason=f"open-clip-torch is not installed ({open_clip_peers.INSTALL_COMMAND})",
)
SIGLIP = ("open_clip:siglip-bidir", "open_clip:siglip-shift", "open_clip:siglip-gather")
B, D = 6, 16


def probe(rank, world, seed):
    """Per contender on this rank: loss, gradients, and bytes counted on its own side."""
    from profiling import comm

    out = {}
    for c in open_clip_peers.CONTENDERS:
        config = PointConfig(
            method="sigmoid-ring" if c.kind == "sigmoid" else "softmax-ring",
            world=world,
            batch=B,
            dim=D,
            seed=seed,
        )
        inputs = make_inputs(config, rank, torch.device("cpu"))
        loss = c.build(rank, world)
        counter = comm.record(comm.current()) if c.side == "ours" else count_traffic()
        with counter as rec:
            value = forward(loss, inputs)
            value.backward()
        out[c.name] = {
            "loss": value.detach(),
            "grads": [leaf.grad.clone() for leaf in inputs.leaves],
            "ops": rec.as_dict(),
            "sent": rec.bytes_sent,
            "received": rec.bytes_received,
        }
    return out


@pytest.fixture(scope="module")
def world3():
    outcome = launch(probe, (7,), world=3, timeout_s=300)
    assert outcome.status == "ok", outcome.message
    return outcome.values


@pytest.mark.slow
@pytest.mark.multiprocess
@needs_open_clip
def test_open_clip_matches_ours_rank_by_rank(world3):
    # open_clip divides each rank's sum over its b rows x N columns by the local b: the
    # mean over ranks is the global -1/N sum and each rank's feature gradient is W x the
    # reference's, as ours. Per rank, losses and feature gradients match ours too; the
    # logit scale / bias gradients only on average over ranks (DDP averages them): our
    # softmax ring credits each block's share of d(loss)/dt to the rank that computed it.
    pairs = [(name, "sigmoid-ring") for name in SIGLIP]
    pairs.append(("open_clip:clip-local", "softmax-ring"))
    for theirs_name, ours_name in pairs:
        for rank, values in enumerate(world3):
            theirs, ours = values[theirs_name], values[ours_name]
            label = f"{theirs_name} vs {ours_name} rank {rank}"
            torch.testing.assert_close(
                theirs["loss"], ours["loss"], rtol=1e-5, atol=1e-6, msg=label
            )
            for index in (0, 1):  # image, text features
                torch.testing.assert_close(
                    theirs["grads"][index], ours["grads"][index], rtol=1e-4, atol=1e-6, msg=label
                )
        for index in range(2, len(world3[0][ours_name]["grads"])):  # scale (and bias)
            mean_theirs = sum(v[theirs_name]["grads"][index] for v in world3) / len(world3)
            mean_ours = sum(v[ours_name]["grads"][index] for v in world3) / len(world3)
            torch.testing.assert_close(mean_theirs, mean_ours, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
@pytest.mark.multiprocess
@needs_open_clip
def test_open_clip_bytes_follow_the_documented_pattern(world3):
    world, row_bytes = 3, B * D * 4
    for rank, values in enumerate(world3):
        # SigLIP bidir / shift / gather: the texts go out W-1 times, their gradients
        # come back W-1 times: 2(W-1)·b·d·s sent per rank.
        for name in SIGLIP:
            assert values[name]["sent"] == 2 * (world - 1) * row_bytes, (name, rank)
            assert values[name]["received"] == 2 * (world - 1) * row_bytes, (name, rank)
        assert set(values["open_clip:siglip-shift"]["ops"]) == {"p2p:torch.distributed"}
        assert values["open_clip:siglip-shift"]["ops"]["p2p:torch.distributed"]["messages"] == 4
        gather_ops = values["open_clip:siglip-gather"]["ops"]
        assert gather_ops["all_gather:torch.distributed"]["bytes_sent"] == (world - 1) * row_bytes
        # ClipLoss local with grad: both sides gathered, both gradients scattered back.
        assert values["open_clip:clip-local"]["sent"] == 4 * (world - 1) * row_bytes
        # Ours, through profiling.comm: the same texts plus, per peer, the cross-rank check
        # and (backward) one fp32 upstream scalar (profiling.losses.sigmoid_ring).
        ring = values["sigmoid-ring"]
        assert ring["sent"] == 2 * (world - 1) * row_bytes + (RANK_CHECK_BYTES + 4) * (world - 1)


@pytest.mark.slow
@pytest.mark.multiprocess
@needs_open_clip
def test_benchmark_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "peers.jsonl"
    argv = ["--world", "2", "--batch", "8", "--dim", "16", "--steps", "2", "--warmup", "1"]
    assert peers.main([*argv, "--out", str(out)]) == 0
    lines = [json.loads(s) for s in out.read_text().splitlines()]
    records = [r for r in lines if r.get("type") != "peer_ratios"]
    (summary,) = [r for r in lines if r.get("type") == "peer_ratios"]
    assert [r["config"]["method"] for r in records] == list(open_clip_peers.CONTENDER_NAMES)
    for record in records:
        m = record["measured"]
        assert record["status"] == "ok", record["message"]
        assert m["check"]["passed"], (record["config"]["method"], m["check"])
        assert m["peak_live_bytes"] > 0 and m["step_time_s"]["median"] > 0
        assert m["bytes_sent"] > 0
    siglip = [r for r in records if r["config"]["method"] in SIGLIP]
    assert {r["measured"]["byte_counter"] for r in siglip} == {"experiments.dist_counter"}
    assert {r["measured"]["bytes_sent"] for r in siglip} == {2 * 8 * 16 * 4}
    metrics = {(row["ours"], row["metric"]) for row in summary["ratios"]}
    assert ("sigmoid ring", "peak_live_bytes") in metrics
    assert ("softmax-ring", "step_time_s") in metrics
    assert "ours / open_clip" in capsys.readouterr().out


@needs_open_clip
@pytest.mark.slow
@pytest.mark.multiprocess
def test_autocast_reaches_both_sides(tmp_path, capsys):
    """Under --autocast our texts travel in bf16 (half the payload bytes of fp32): the
    autocast region reached our losses, not only open_clip's. With --json stdout holds
    the lines appended to --out."""
    out = tmp_path / "peers.jsonl"
    argv = ["--world", "2", "--batch", "8", "--dim", "16", "--steps", "1", "--warmup", "1"]
    contenders = ["sigmoid-ring", "open_clip:siglip-shift"]
    assert peers.main([*argv, "--autocast", "bf16", "--contenders", *contenders,
                       "--out", str(out), "--json"]) in (0, 1)  # fmt: skip
    lines = [json.loads(s) for s in out.read_text().splitlines()]
    assert [json.loads(s) for s in capsys.readouterr().out.splitlines()] == lines
    ours = next(r for r in lines if r.get("config", {}).get("method") == "sigmoid-ring")
    assert ours["config"]["autocast"] == "bf16"
    ops = ours["measured"]["comm_ops"]
    assert ops["p2p:sigmoid.payload"]["bytes_sent"] == 8 * 16 * 2  # bf16, one round at W = 2
    assert ops["p2p:sigmoid.acc"]["bytes_sent"] == 8 * 16 * 4  # fp32 accumulators


def _measured(time_s, peak, sent, samples=None):
    return {
        "step_time_s": {"median": time_s},
        "step_time_samples_s": samples,
        "peak_alloc_bytes": peak,
        "peak_live_bytes": peak,
        "bytes_sent": sent,
    }


def test_ratios_take_the_best_of_each_side():
    measured = {
        "sigmoid-ring": _measured(2.0, 100, 10),
        "sigmoid-ring-bidir": _measured(1.5, 120, 10, [1.0, 1.5, 3.0]),
        "open_clip:siglip-bidir": _measured(1.8, 400, 12),
        "open_clip:siglip-shift": _measured(1.2, 300, 12, [2.0, 1.2, 1.0]),
        "softmax-ring": _measured(3.0, 50, 9),
        "open_clip:clip-local": _measured(2.0, 80, 12),
    }
    rows = {(r["ours"], r["metric"]): r for r in peers.ratios(measured, world=4)}
    time_row = rows[("sigmoid ring", "step_time_s")]
    assert (time_row["best_ours"], time_row["best_theirs"]) == (
        "sigmoid-ring-bidir",
        "open_clip:siglip-shift",
    )
    assert time_row["ratio"] == pytest.approx(1.5 / 1.2) and time_row["target_met"] is False
    # per repetition: 0.5, 1.25, 3.0 -> median 1.25; fastest vs fastest: 1.0 / 1.0
    assert time_row["paired_median_ratio"] == pytest.approx(1.25)
    assert time_row["min_ratio"] == pytest.approx(1.0)
    assert time_row["target_max_ratio"] == 0.85  # fp32 target; 0.75 under autocast
    memory_row = rows[("sigmoid ring", "peak_alloc_bytes")]
    assert memory_row["ratio"] == pytest.approx(100 / 300) and memory_row["target_met"] is True
    softmax_memory = rows[("softmax-ring", "peak_alloc_bytes")]
    assert (
        softmax_memory["ratio"] == pytest.approx(50 / 80) and softmax_memory["target_met"] is False
    )
    assert rows[("softmax-ring", "peak_live_bytes")]["target_max_ratio"] is None
    assert rows[("softmax-ring", "bytes_sent")]["target_max_ratio"] is None
    amp = {(r["ours"], r["metric"]): r for r in peers.ratios(measured, world=8, autocast=True)}
    assert amp[("softmax-ring", "step_time_s")]["target_max_ratio"] == 0.55
    assert amp[("softmax-ring", "peak_alloc_bytes")]["target_max_ratio"] == 0.18


def test_missing_open_clip_prints_the_pip_command(monkeypatch, capsys, tmp_path):
    monkeypatch.delitem(__import__("sys").modules, open_clip_peers._MODULE_NAME, raising=False)
    monkeypatch.setattr(open_clip_peers.importlib.util, "find_spec", lambda name: None)
    assert peers.main(["--world", "2", "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "pip install --no-deps open-clip-torch==3.3.0" in err[0]
    assert not (tmp_path / "x.jsonl").exists()


def test_bad_input_is_refused_with_one_line(capsys, tmp_path):
    if not HAVE_OPEN_CLIP:
        pytest.skip(f"open-clip-torch is not installed ({open_clip_peers.INSTALL_COMMAND})")
    assert peers.main(["--world", "0", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "world must be an integer >= 1" in capsys.readouterr().err
    assert peers.main(["--contenders", "nope", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "unknown contender 'nope'" in capsys.readouterr().err
