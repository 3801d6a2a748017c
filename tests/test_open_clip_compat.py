"""The open_clip drop-ins equal open_clip's own classes, rank by rank, on the same inputs.

For every configuration the adapters accept, on W = 1 (in this process, no process
group, as open_clip runs single-device) and on gloo groups of W = 2, 3 and 4 (one
process group per W: open_clip's classes use the default group, so a subgroup cannot
stand in for a smaller world): each rank's loss and its image, text, scale and bias
gradients against open_clip 3.3's ``ClipLoss`` / ``SigLipLoss`` given copies of the
same leaves, in fp64 and fp32. ``ClipLoss(local_loss=True, method="softmax-ring")``
matches the scale gradient only as a mean over ranks, as its docstring says. The
configurations open_clip runs but the adapters cannot reproduce are refused with one
line naming the alternative, at construction or, for a process group created after the
loss, at the first forward; ``ClipLoss(local_loss=False)`` adds exactly its three
one-scalar all-gathers. The comparisons are skipped, with the reason, when
open-clip-torch is missing; the refusals are not.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from spawn import run_world

from profiling.losses import open_clip_compat

HAVE_OPEN_CLIP = importlib.util.find_spec("open_clip") is not None
needs_open_clip = pytest.mark.skipif(
    not HAVE_OPEN_CLIP,
    reason="open-clip-torch is not installed (pip install --no-deps open-clip-torch==3.3.0)",
)
TOLERANCES = {torch.float64: (1e-10, 1e-12), torch.float32: (2e-5, 2e-6)}
"""(rtol, atol): two implementations of the same sums in a different order."""
B, D = 3, 8


def configs(world: int) -> list[tuple[str, str, dict, dict, bool]]:
    """``(label, kind, open_clip kwargs, extra adapter kwargs, scale gradient per rank)``."""
    clip = [
        ("clip local", {"local_loss": True, "gather_with_grad": True}, {}, True),
        (
            "clip local ring",
            {"local_loss": True, "gather_with_grad": True},
            {"method": "softmax-ring"},
            False,
        ),
        ("clip global", {"local_loss": False, "gather_with_grad": True}, {}, True),
        (
            "clip global ring",
            {"local_loss": False, "gather_with_grad": True, "cache_labels": True},
            {"method": "softmax-ring"},
            True,
        ),
    ]
    if world == 1:  # open_clip never gathers at W = 1: every flag combination is the local loss
        clip += [
            ("clip default", {}, {}, True),
            ("clip local nograd", {"local_loss": True}, {}, True),
            ("clip horovod", {"use_horovod": True}, {}, True),
        ]
    out = [(label, "softmax", kw, extra, per_rank) for label, kw, extra, per_rank in clip]
    for impl in (None, "bidir", "shift", "gather", "reduce"):
        out.append((f"siglip {impl}", "sigmoid", {"dist_impl": impl}, {}, True))
    out.append(("siglip no bias", "sigmoid-nobias", {"dist_impl": "shift"}, {}, True))
    return out


def _leaves(world, rank, kind, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    n = world * B
    x = torch.nn.functional.normalize(torch.randn(n, D, generator=gen, dtype=torch.float64), dim=1)
    y = torch.nn.functional.normalize(torch.randn(n, D, generator=gen, dtype=torch.float64), dim=1)
    scale = math.exp(math.log(10) + 0.5 * torch.randn(1, generator=gen).item())
    bias = -10 + 2 * torch.randn(1, generator=gen).item()
    rows = slice(rank * B, (rank + 1) * B)
    leaves = [x[rows].to(dtype), y[rows].to(dtype), torch.tensor(scale, dtype=dtype)]
    if kind == "sigmoid":
        leaves.append(torch.tensor(bias, dtype=dtype))
    return leaves


def _run(module, leaves, kind, output_dict):
    leaves = [t.clone().requires_grad_() for t in leaves]
    args = leaves + ([None] if kind == "sigmoid-nobias" else [])
    out = module(*args, output_dict=output_dict)
    loss = out["contrastive_loss"] if output_dict else out
    loss.backward()
    return [loss.detach()] + [t.grad for t in leaves]


def probe(rank: int, world: int) -> dict:
    """Per configuration and dtype on this rank: ``(ours, theirs)`` loss and gradients."""
    from experiments.open_clip_peers import load_open_clip_loss

    theirs_module = load_open_clip_loss()
    results = {}
    for index, (label, kind, kwargs, extra, _) in enumerate(configs(world)):
        cls = "SigLipLoss" if kind.startswith("sigmoid") else "ClipLoss"
        for dtype in TOLERANCES:
            leaves = _leaves(world, rank, kind, dtype, seed=100 + index)
            ours = getattr(open_clip_compat, cls)(rank=rank, world_size=world, **kwargs, **extra)
            theirs = getattr(theirs_module, cls)(rank=rank, world_size=world, **kwargs)
            output_dict = index % 2 == 1
            results[label, dtype] = (
                _run(ours, leaves, kind, output_dict),
                _run(theirs, leaves, kind, output_dict),
            )
    if world > 1:
        from profiling import comm

        leaves = _leaves(world, rank, "softmax", torch.float64, seed=7)
        ours = open_clip_compat.ClipLoss(gather_with_grad=True, rank=rank, world_size=world)
        with comm.record(comm.current()) as rec:
            _run(ours, leaves, "softmax", False)
        results["global traffic"] = {
            k: v for k, v in rec.as_dict().items() if k.startswith("all_gather:open_clip.")
        }
        refusals = []
        for kwargs in (
            {"rank": rank, "world_size": world + 1},
            {"rank": (rank + 1) % world, "world_size": world},
        ):
            try:
                open_clip_compat.SigLipLoss(**kwargs)
            except ValueError as exc:
                refusals.append(str(exc))
        results["refusals"] = refusals
    return results


def compare(per_rank: list[dict], world: int) -> dict[str, float]:
    """Assert every configuration; return the largest difference per configuration."""
    worst = {}
    for label, _, _, _, scale_per_rank in configs(world):
        for dtype, (rtol, atol) in TOLERANCES.items():
            name = f"{label} {dtype} W={world}"
            ours = [r[label, dtype][0] for r in per_rank]
            theirs = [r[label, dtype][1] for r in per_rank]
            diffs = []
            for index, what in enumerate(("loss", "d image", "d text", "d scale", "d bias")):
                if index >= len(ours[0]):
                    break
                got = [o[index] for o in ours]
                want = [t[index] for t in theirs]
                if index == 3 and not scale_per_rank:
                    got, want = [sum(got) / world], [sum(want) / world]
                    what += " (mean over ranks)"
                for rank, (g, w) in enumerate(zip(got, want, strict=True)):
                    assert g.dtype == w.dtype == dtype, f"{name} rank {rank} {what}"
                    torch.testing.assert_close(
                        g, w, rtol=rtol, atol=atol, msg=f"{name} rank {rank} {what}"
                    )
                    diffs.append((g - w).abs().max().item())
            worst[name] = max(diffs)
    return worst


@needs_open_clip
def test_world_1_equals_open_clip_without_a_process_group():
    worst = compare([probe(0, 1)], 1)
    assert len(worst) == 2 * len(configs(1))


@pytest.fixture(scope="module", params=(2, 3, 4))
def world(request):
    return request.param, run_world(request.param, probe, timeout_s=300)


@pytest.mark.slow
@pytest.mark.multiprocess
@needs_open_clip
def test_per_rank_losses_and_gradients_equal_open_clip(world):
    w, per_rank = world
    worst = compare(per_rank, w)
    print(f"W={w} largest |ours - open_clip| per configuration: {worst}")
    assert len(worst) == 2 * len(configs(w))


@pytest.mark.slow
@pytest.mark.multiprocess
@needs_open_clip
def test_rank_and_world_size_must_match_the_process_group(world):
    w, per_rank = world
    for rank, values in enumerate(per_rank):
        assert len(values["refusals"]) == 2, rank
        for message in values["refusals"]:
            assert "disagrees with the process group" in message
            assert f"(rank {rank} of {w})" in message and "\n" not in message


@pytest.mark.slow
@pytest.mark.multiprocess
@needs_open_clip
def test_global_clip_loss_adds_three_scalar_all_gathers(world):
    w, per_rank = world
    for values in per_rank:
        traffic = values["global traffic"]
        assert sorted(traffic) == [
            "all_gather:open_clip.loss_mean",
            "all_gather:open_clip.loss_mean_grad",
            "all_gather:open_clip.scale_grad_mean",
        ]
        for op in traffic.values():
            assert (op["messages"], op["bytes_sent"]) == (w - 1, 8 * (w - 1)), op


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: open_clip_compat.ClipLoss(world_size=2), "pass gather_with_grad=True"),
        (
            lambda: open_clip_compat.ClipLoss(
                gather_with_grad=True, world_size=2, use_horovod=True
            ),
            "launch with torchrun and pass use_horovod=False",
        ),
        (lambda: open_clip_compat.ClipLoss(rank=2, world_size=2), "need 0 <= rank < world_size"),
        (lambda: open_clip_compat.SigLipLoss(dist_impl="ring"), "dist_impl must be one of"),
        (lambda: open_clip_compat.ClipLoss(method="sigmoid-ring"), "method must be one of"),
        (lambda: open_clip_compat.SigLipLoss(world_size=2.0), "world_size must be an int"),
    ],
)
def test_unreproducible_configurations_are_refused_in_one_line(make, needle):
    with pytest.raises((ValueError, TypeError)) as info:
        make()
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_clip_loss_refuses_a_bias_and_a_missing_process_group():
    x = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    with pytest.raises(ValueError, match="which the softmax ignores; pass logit_bias=None"):
        open_clip_compat.ClipLoss()(x, x, 10.0, -1.0)
    loss = open_clip_compat.SigLipLoss(rank=1, world_size=2)
    with pytest.raises(RuntimeError, match="no process group"):
        loss(x, x, 10.0, -10.0)


def test_a_process_group_made_after_the_loss_is_checked_at_forward():
    from types import SimpleNamespace

    from profiling import comm

    loss = open_clip_compat.SigLipLoss(rank=0, world_size=2)  # no process group yet
    x = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    with (
        comm.use_transport(SimpleNamespace(rank=0, world_size=3)),
        pytest.raises(ValueError, match=r"disagrees with the process group \(rank 0 of 3\)"),
    ):
        loss(x, x, 10.0, -10.0)
