"""Autocast in the model (``simulator.predict(..., autocast=...)``) against the allocator:
fp32 features, the loss's forward inside ``torch.autocast("cpu", dtype=torch.bfloat16)``,
on one gloo process group of 3 ranks (subgroups W = 2, 3).

* ours (``tests/loss_cases.py`` ``Case(autocast="bf16")``, which also checks loss and
  gradients against the reference): the method's own terms at the autocast dtype plus
  ``Method.peak_terms`` (with the two ``b×d`` rounded copies), within 1%;
* open_clip's ``ClipLoss(local_loss=True)`` (``tests/incumbent_cases.py``): its autocast
  moments, within 2%, except at W = 2, b = 24, d = 16, where the peak falls inside a
  oneDNN bf16 matmul whose scratch has no formula (``precision``): within 4% there.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from profiling.losses import METHODS, get_method
from profiling.losses.registry import Shape
from simulator.model import predict
from tests.incumbent_cases import IncumbentCase, run_incumbent_cases
from tests.loss_cases import Case, run_cases
from tests.spawn import run_world

POINTS = ((24, 16), (64, 8), (8, 128))
OUR_POINTS = ((48, 32), (64, 16), (16, 128))
"""Ours at peaks of 30 KiB and more: 1% of them exceeds the ~150 bytes of small gloo
buffers (the cross-rank check's and the upstream scalars' all-gathers) that a worker
thread may still hold at the loss's peak; at b = 24, d = 16 (15 KiB) they tipped one CI
run over 1% (14,748 B measured against 14,592 B)."""
ONEDNN_POINT = (2, 24, 16)


def both(rank, world, ours, theirs):
    return run_cases(rank, world, ours), run_incumbent_cases(rank, world, theirs)


def test_autocast_prices_the_wire_dtype_and_the_copies():
    plain = predict("sigmoid-allgather", 8, 512, 768, "fp32", hardware="h100-sxm")
    cast = predict("sigmoid-allgather", 8, 512, 768, "fp32", hardware="h100-sxm", autocast="bf16")
    assert cast.memory_terms["autocast copies of x, y"] == 2 * 512 * 768 * 2
    assert cast.bytes_sent < plain.bytes_sent  # texts travel in bf16
    assert cast.options["autocast"] == "bf16"
    fp64 = Shape.of(2, 8, 8, "fp64", autocast="bf16")
    assert fp64.elem_bytes == 8 and fp64.input_bytes is None  # autocast never casts fp64
    with pytest.raises(ValueError, match="autocast must be"):
        Shape.of(2, 8, 8, "fp32", autocast="fp8")
    with pytest.raises(ValueError, match="not described"):
        predict("openclip-siglip-shift", 8, 512, 768, "fp32", autocast="bf16")


@pytest.fixture(scope="module")
def measured():
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open-clip-torch is not installed")
    ours = [
        Case(m, w, b, d, dtype="fp32", autocast="bf16")
        for m in METHODS
        for w in (2, 3)
        for b, d in OUR_POINTS
    ]
    theirs = [
        IncumbentCase("openclip-clip-local", w, b, d, autocast="bf16")
        for w in (2, 3)
        for b, d in POINTS
    ]
    return run_world(3, both, ours, theirs)[0]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ours_under_autocast_within_1_percent(measured):
    results, _ = measured
    wrong = []
    for r in results:
        c = r["case"]
        assert not r["errors"], r["errors"]
        shape = Shape.of(c.world, c.batch, c.dim, "fp32", autocast="bf16")
        terms = get_method(c.method).peak_terms(shape)
        predicted = float(sum(np.asarray(v) for v in terms.values()))
        if abs(predicted / r["peak_alloc_bytes"] - 1) > 0.01:
            wrong.append(f"{c.name}: predicted {predicted:.0f}, allocator {r['peak_alloc_bytes']}")
    assert not wrong, wrong


@pytest.mark.slow
@pytest.mark.multiprocess
def test_open_clip_local_under_autocast(measured):
    _, results = measured
    wrong = []
    for r in results:
        c = r["case"]
        shape = Shape.of(c.world, c.batch, c.dim, "fp32", autocast="bf16")
        terms = get_method(c.name).memory_terms(shape)
        predicted = float(sum(np.asarray(v) for v in terms.values()))
        limit = 0.04 if (c.world, c.batch, c.dim) == ONEDNN_POINT else 0.02
        if abs(predicted / r["peak_alloc_bytes"] - 1) > limit:
            wrong.append(f"{c}: predicted {predicted:.0f}, allocator {r['peak_alloc_bytes']}")
        schedule = get_method(c.name).schedule(shape)
        assert int(schedule.bytes_sent()) == r["bytes_sent"], c  # fp32 on the wire
    assert not wrong, wrong
