"""``sigsim recommend`` and the incumbents on the ``predict`` / ``maxbatch`` command lines:
the largest batch is exact (it fits, one more does not) and equals ``maxbatch`` 's
bisection, the recommendation is the fastest of ours that fits, the trade-off ratios are
the table's, ``--json`` parses, bad input fails in one line, and every incumbent is
priced under autocast too."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from experiments import backends, cli
from experiments.maxbatch import max_local_batch, predicted_max_batch
from experiments.recommend import recommend
from simulator.hardware import resolve_hardware

HW = resolve_hardware("h100-sxm")
GiB = 2**30


def _peak(method, world, batch, dim, **options):
    return float(
        backends.predict(method, world, batch, dim, "fp32", HW, **options).peak_memory_bytes
    )


@pytest.mark.parametrize(
    "method", ["softmax-ring", "openclip-clip-local", "openclip-siglip-gather"]
)
def test_max_local_batch_is_exact_and_maxbatch_subtracts_the_reserve(method):
    budget = 3.5 * GiB
    b = max_local_batch(method, [16], 512, "fp32", HW, budget)
    assert _peak(method, 16, b, 512) <= budget < _peak(method, 16, b + 1, 512)
    # maxbatch takes the device's memory: the reserve (context, NCCL buffers) comes off it
    memory = budget + HW.memory_reserve.reserve_bytes(16)
    (found,) = predicted_max_batch(method, [16], 512, "fp32", HW, memory)
    assert found.batch == b
    other = 0.5 * GiB  # and what the rest of the step holds comes off too
    (less,) = predicted_max_batch(method, [16], 512, "fp32", HW, memory, other_bytes=other)
    assert less.batch == max_local_batch(method, [16], 512, "fp32", HW, budget - other)


def test_recommendation_is_the_fastest_of_ours_that_fits():
    entries, choices, settings = recommend(
        hardware=HW, world=8, dim=768, dtype="fp32", memory_bytes=80 * GiB, other_bytes=40 * GiB
    )
    assert settings["memory_bytes"] - settings["other_bytes"] == 40 * GiB
    for choice in choices:
        ours = [e for e in entries if e.kind == choice.kind and e.side == "ours" and e.fits]
        best = min(e.step_time_s for e in ours)
        chosen = next(e for e in ours if e.method == choice.recommended and e.tile == choice.tile)
        assert chosen.step_time_s == best
        base = next(e for e in entries if e.method == choice.baseline)
        assert base.side == "open_clip"
        theirs = [e for e in entries if e.kind == choice.kind and e.side == "open_clip"]
        assert base.max_global_batch == max(e.max_global_batch for e in theirs)
        assert choice.max_batch_ratio == pytest.approx(
            chosen.max_global_batch / base.max_global_batch
        )
    # the default batch is the largest the weakest baseline fits, so every baseline fits there
    baselines = {c.baseline for c in choices}
    assert all(e.fits for e in entries if e.method in baselines and e.tile is None)
    for e in entries:  # the largest batch fits, and the columns are at the chosen batch
        assert e.global_batch == settings["global_batch"]
        assert e.peak_memory_bytes <= 40 * GiB or not e.fits


def test_every_incumbent_is_priced_under_autocast():
    entries, choices, _ = recommend(
        hardware=HW, world=64, dim=768, dtype="fp32", autocast="fp16", kinds=("softmax",)
    )
    assert not [e.method for e in entries if e.max_global_batch is None]
    assert {"openclip-clip-global", "infcl-ring", "infcl-inf"} <= {e.method for e in entries}
    assert choices[0].baseline == "openclip-clip-local"


def test_json_and_errors(capsys):
    argv = ["recommend", "--hardware", "h100-sxm", "--world", "8", "--dim", "512", "--json"]
    assert cli.main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert {r["kind"] for r in data["recommendations"]} == {"softmax", "sigmoid"}
    assert data["settings"]["model_s"] > 0
    assert np.all([e["max_global_batch"] % 8 == 0 for e in data["entries"]])
    for bad, message in (
        (["--batch", "12"], "not a multiple"),
        (["--other-GiB", "100"], "no memory for the loss"),
        (["--kind", "triplet"], "--kind"),
    ):
        assert cli.main(argv[:-1] + bad) == 2
        assert message in capsys.readouterr().err


def test_predict_and_maxbatch_take_incumbents(capsys):
    argv = ["predict", "--hardware", "h100-sxm", "--method", "all,incumbents", "--world", "8"]
    assert cli.main([*argv, "--autocast", "bf16", "--batch", "64", "--dim", "256"]) == 0
    out = capsys.readouterr().out
    assert "skipped" not in out
    for name in ("openclip-clip-local", "openclip-siglip-shift", "infcl-ring"):
        assert re.search(name + r"\s+│\s+8\s+│", out), name  # priced: a row of the table
    assert cli.main([*argv, "--batch", "64", "--dim", "256"]) == 0
    out = capsys.readouterr().out
    assert "openclip-clip-local" in out and "infcl-inf" in out and "softmax-ring" in out
    mb = ["maxbatch", "--hardware", "h100-sxm", "--method", "openclip-clip-local,softmax-ring"]
    assert (
        cli.main([*mb, "--worlds", "8", "--dim", "768", "--dtype", "fp32", "--autocast", "fp16"])
        == 0
    )
    assert "autocast fp16" in capsys.readouterr().out
    assert cli.main(["predict", "--method", "nope", "--hardware", "h100-sxm"]) == 2
    assert "unknown method" in capsys.readouterr().err
