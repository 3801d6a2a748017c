"""Host synchronisations of a training step: what the losses read equals the inventory.

``profiling.losses.checks.HOST_SYNCS`` lists every read of a device value on the host a
step of a registered method makes. On CPU nothing synchronises, so the reads that would
on CUDA are counted by patching them (``profiling.host_syncs.count_reads``), exactly, per
(file, function): every method at W = 1 on a local transport and at W = 2 with stand-in
peers, in this process, and at W = 3 on a gloo process group (check_ranks on and off,
equal and different upstream scalars: the sigmoid rings' second trip, no-grad forward).
A new ``.item()`` in a loss fails them. On CUDA the device itself counts them
(``torch.cuda.set_sync_debug_mode("warn")``), skipped without a GPU.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest
import torch
from spawn import run_world

from profiling import comm
from profiling import host_syncs as hs
from profiling.emulate import StandInTransport
from profiling.losses import METHODS, blocks
from profiling.losses.checks import HOST_SYNCS, as_scalar, host_syncs

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = [
    (check, backward) for check in (True, False) for backward in (True, False)
]  # (check_ranks, backward)


def _sites(reads) -> Counter:
    return Counter(r.site for r in reads)


def _count_local(method, world, device, *, check_ranks, backward) -> list:
    """One warm-up step, then the reads of one counted step, rank 0 of ``world`` on a
    stand-in transport (W = 1: a local transport with no peers)."""
    with comm.use_transport(StandInTransport(world, device)):
        hs.step(method, hs.make_inputs(device), check_ranks=check_ranks, backward=backward)
        inputs = hs.make_inputs(device, seed=1)
        with hs.count_reads() as reads:
            hs.step(method, inputs, check_ranks=check_ranks, backward=backward)
    return reads


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("method", METHODS)
def test_reads_equal_the_inventory_in_process(method, world):
    cpu = torch.device("cpu")
    for check_ranks, backward in OPTIONS:
        reads = _count_local(method, world, cpu, check_ranks=check_ranks, backward=backward)
        want = hs.expected(method, world=world, check_ranks=check_ranks, backward=backward)
        assert _sites(reads) == Counter(want), (check_ranks, backward, reads)


def test_inventory_by_case():
    """W = 1 makes none; at W >= 2 the check reads once per forward and the sigmoid rings'
    backward once more, whether or not the second trip runs."""
    for method in METHODS:
        assert host_syncs(method, world=1) == ()
        assert host_syncs(method, world=4, check_ranks=False, backward=False) == ()
        ring = method.startswith("sigmoid-ring")
        assert len(host_syncs(method, world=2)) == 1 + ring
        assert len(host_syncs(method, world=2, check_ranks=False)) == ring
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        host_syncs("nope", world=2)
    with pytest.raises(ValueError, match="world must be a positive int"):
        host_syncs(METHODS[0], world=0)


def test_inventory_names_real_functions():
    for entry in HOST_SYNCS:
        tree = ast.parse((ROOT / entry.path).read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert entry.function in names, entry
        assert entry.phase in ("forward", "backward") and entry.purpose


def test_a_new_item_in_a_loss_is_counted(monkeypatch):
    original = blocks._logits

    def reading_logits(x, y, t):
        t.item()  # the kind of read the inventory must not grow silently
        return original(x, y, t)

    monkeypatch.setattr(blocks, "_logits", reading_logits)
    reads = _count_local("sigmoid-ring", 1, torch.device("cpu"), check_ranks=True, backward=True)
    assert [(r.site, r.call) for r in reads] == [
        (("profiling/losses/blocks.py", "_sigmoid_tile"), "Tensor.item")
    ]
    assert _sites(reads) != Counter(hs.expected("sigmoid-ring", world=1))


def test_reads_outside_the_losses_are_not_counted_and_patches_are_undone():
    x = torch.ones(2)
    with hs.count_reads() as reads:
        x.sum().item(), x.tolist(), bool(x[0]), float(x[0])
    assert reads == []
    assert "item" not in torch.Tensor.__dict__
    assert type(torch.tensor).__name__ == "builtin_function_or_method"
    assert torch.tensor([1.0]).item() == 1.0


def test_a_float_scale_is_made_without_a_host_copy():
    x = torch.zeros(3, 4)
    with hs.count_reads() as reads:
        scale = as_scalar("logit_scale", 10.0, x)
    assert reads == [] and scale.item() == 10.0 and scale.dim() == 0


def _gloo_worker(rank: int, world: int, cases: list) -> list:
    """Each case's counted sites on this rank (after one warm-up step per method)."""
    results = []
    cpu = torch.device("cpu")
    for method in METHODS:
        hs.step(method, hs.make_inputs(cpu, rank=rank))
    for method, check_ranks, backward, weight in cases:
        inputs = hs.make_inputs(cpu, seed=2, rank=rank)
        with hs.count_reads() as reads:
            hs.step(
                method,
                inputs,
                check_ranks=check_ranks,
                backward=backward,
                weight=1.0 + rank if weight == "per-rank" else 1.0,
            )
        results.append(sorted(r.site for r in reads))
    return results


@pytest.mark.multiprocess
def test_reads_equal_the_inventory_on_gloo():
    world = 3
    cases = [
        (method, check_ranks, backward, weight)
        for method in METHODS
        for check_ranks, backward in OPTIONS
        # "per-rank": different upstream scalars, the sigmoid rings' second trip
        for weight in (("same", "per-rank") if backward else ("same",))
    ]
    per_rank = run_world(world, _gloo_worker, cases, timeout_s=300)
    for rank, got in enumerate(per_rank):
        for (method, check_ranks, backward, weight), sites in zip(cases, got, strict=True):
            want = hs.expected(method, world=world, check_ranks=check_ranks, backward=backward)
            assert sites == sorted(want), (rank, method, check_ranks, backward, weight)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("world", [1, 2])
def test_cuda_syncs_equal_the_inventory(world):
    cuda = torch.device("cuda")
    for method in METHODS:
        with comm.use_transport(StandInTransport(world, cuda)):
            hs.step(method, hs.make_inputs(cuda))
            inputs = hs.make_inputs(cuda, seed=1)
            torch.cuda.synchronize()
            with hs.count_cuda_syncs() as syncs:
                hs.step(method, inputs)
        assert len(syncs) == len(hs.expected(method, world=world)), (method, syncs)
