"""Bad input gets one clear error naming the problem, on every rank, never a hang.

Local mistakes (shapes, dtypes, devices, a non-scalar scale, a missing or extra bias, an
unknown method or option, no process group, a bad ``group``) are caught before any
communication. Ranks that disagree on the local batch (a last, short batch), width,
dtype, autocast, grad mode, method or options all raise the same error from the
cross-rank check instead of deadlocking in a collective of mismatched sizes or pairing
ring messages wrongly. Double backward raises instead of returning wrong second-order
gradients. A loss built with ``group=`` runs on that subgroup only, or on a 1-D
``DeviceMesh``.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.distributed as dist
from spawn import run_world

from profiling.losses import METHODS, build_loss, get_method, reference_loss


def _inputs(b=4, d=8, dtype=torch.float32):
    gen = torch.Generator().manual_seed(7)
    x = torch.nn.functional.normalize(torch.randn(b, d, generator=gen, dtype=dtype), dim=1)
    y = torch.nn.functional.normalize(torch.randn(b, d, generator=gen, dtype=dtype), dim=1)
    return x, y


def _bias(method):
    return -10.0 if get_method(method).kind == "sigmoid" else None


def test_unknown_method_and_option():
    with pytest.raises(ValueError, match=r"unknown method 'sigmoid-rng'.*known methods"):
        build_loss("sigmoid-rng")
    with pytest.raises(ValueError, match="has no option 'tile'; allowed: check_ranks"):
        build_loss("sigmoid-allgather", tile=4)
    with pytest.raises(ValueError, match="tile must be a positive int"):
        build_loss("sigmoid-ring", tile=0)


@pytest.mark.parametrize("method", METHODS)
def test_no_process_group(method):
    assert not dist.is_initialized()
    x, y = _inputs()
    with pytest.raises(RuntimeError, match="no process group"):
        build_loss(method)(x, y, 10.0, _bias(method))


@pytest.mark.parametrize("method", METHODS)
def test_local_mistakes(method):
    loss = build_loss(method)
    x, y = _inputs()
    bias = _bias(method)
    with pytest.raises(ValueError, match="must have the same shape"):
        loss(x, y[:3], 10.0, bias)
    with pytest.raises(ValueError, match="must be 2-D"):
        loss(x[0], y[0], 10.0, bias)
    with pytest.raises(TypeError, match="mismatched dtypes"):
        loss(x, y.double(), 10.0, bias)
    with pytest.raises(ValueError, match="mismatched devices"):
        loss(x, y.to("meta"), 10.0, bias)
    with pytest.raises(ValueError, match="logit_scale must be a scalar"):
        loss(x, y, torch.ones(2), bias)
    with pytest.raises(TypeError, match="supported: fp64, fp32"):
        loss(x.int(), y.int(), 10.0, bias)
    with pytest.raises(ValueError, match="the local batch is empty"):
        loss(x[:0], y[:0], 10.0, bias)
    if bias is None:
        with pytest.raises(ValueError, match="softmax loss takes no logit_bias"):
            loss(x, y, 10.0, -10.0)
    else:
        with pytest.raises(ValueError, match="sigmoid loss needs logit_bias"):
            loss(x, y, 10.0, None)


def test_reference_rejects_unknown_kind():
    x, y = _inputs()
    with pytest.raises(ValueError, match="unknown loss kind 'hinge'"):
        reference_loss("hinge", x, y, 10.0)


MISMATCHES = {  # what rank 1 does differently -> the field the error must name
    "batch": "batch",
    "dim": "dim",
    "dtype": "dtype",
    "autocast": "dtype",
    "no_grad": "grad mode",
    "method": "loss and options",
    "options": "loss and options",
}


def _other_method(method):
    return next(m for m in METHODS if m != method and get_method(m).kind == get_method(method).kind)


def _mismatch_worker(rank, world):
    """Each case makes rank 1 differ; every rank must raise, none may hang."""
    outcomes = []
    for method in METHODS:
        for what in MISMATCHES:
            b, d, dtype = 4, 8, torch.float32
            if rank == 1 and what in ("batch", "dim", "dtype"):
                b, d, dtype = {
                    "batch": (5, 8, dtype),
                    "dim": (4, 6, dtype),
                    "dtype": (4, 8, torch.float64),
                }[what]
            x, y = _inputs(b, d, dtype)
            x.requires_grad_()
            name, options = method, {}
            if rank == 1 and what == "method":
                name = _other_method(method)
            if rank == 1 and what == "options":
                options = {"check_ranks": True}
                options.update({"overlap": False} if get_method(method).ring else {})
            rank_differs = rank == 1
            grad = (
                torch.no_grad() if rank_differs and what == "no_grad" else contextlib.nullcontext()
            )
            autocast = torch.autocast(
                "cpu", dtype=torch.bfloat16, enabled=rank_differs and what == "autocast"
            )
            loss_fn = build_loss(name, **options)
            if what == "options" and not get_method(method).ring:
                # all-gather methods have one option only: differ in the loss class instead
                loss_fn = build_loss(name if rank != 1 else _other_method(method))
            try:
                with grad, autocast:
                    loss = loss_fn(x, y, 10.0, _bias(method))
                if loss.requires_grad:
                    loss.backward()
                outcomes.append((method, what, None))
            except ValueError as exc:
                outcomes.append((method, what, str(exc)))
    return outcomes


@pytest.mark.multiprocess
def test_ranks_that_disagree_all_raise():
    per_rank = run_world(3, _mismatch_worker, timeout_s=120)
    for outcomes in per_rank:
        assert len(outcomes) == len(MISMATCHES) * len(METHODS)
        for method, what, message in outcomes:
            assert message is not None, f"{method}: ranks differing in {what} did not raise"
            assert "ranks disagree" in message and "rank 1:" in message, message
            assert MISMATCHES[what] in message.split("(")[0], (what, message)


def _group_and_second_order_worker(rank, world):
    """A loss on the subgroup {1, 2} of a 3-rank job; double backward on every method."""
    subgroup = dist.new_group([1, 2])
    out = {}
    if rank in (1, 2):
        x_all, y_all = _inputs(b=8, d=8, dtype=torch.float64)
        mine = slice((rank - 1) * 4, rank * 4)
        for method in METHODS:
            x = x_all[mine].clone().requires_grad_()
            loss = build_loss(method, group=subgroup)(x, y_all[mine], 10.0, _bias(method))
            reference = reference_loss(get_method(method).kind, x_all, y_all, 10.0, _bias(method))
            stats = loss.detach().reshape(1)
            dist.all_reduce(stats, group=subgroup)
            out[method] = abs(float(stats[0]) / 2 - float(reference))
    # a one-dimensional DeviceMesh over the whole job works as the group too
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    x_all, y_all = _inputs(b=3 * world, d=8, dtype=torch.float64)
    rows = slice(rank * 3, (rank + 1) * 3)
    mesh_errors = {}
    for method in METHODS:
        loss = build_loss(method, group=mesh)(x_all[rows], y_all[rows], 10.0, _bias(method))
        stats = loss.detach().reshape(1)
        dist.all_reduce(stats)
        reference = reference_loss(get_method(method).kind, x_all, y_all, 10.0, _bias(method))
        mesh_errors[method] = abs(float(stats[0]) / world - float(reference))
    out["mesh"] = mesh_errors
    second_order = {}
    for method in METHODS:
        x, y = _inputs(dtype=torch.float64)
        x.requires_grad_()
        try:  # create_graph=True itself raises: no graph-less gradient escapes
            torch.autograd.grad(build_loss(method)(x, y, 10.0, _bias(method)), x, create_graph=True)
            second_order[method] = None
        except RuntimeError as exc:
            second_order[method] = str(exc)
    return out, second_order


@pytest.mark.multiprocess
def test_subgroup_and_double_backward():
    per_rank = run_world(3, _group_and_second_order_worker, timeout_s=120)
    assert set(per_rank[0][0]) == {"mesh"}
    for rank in (1, 2):
        errors = dict(per_rank[rank][0])
        del errors["mesh"]
        assert set(errors) == set(METHODS)
        assert max(errors.values()) < 1e-12, errors
    for rank in (0, 1, 2):
        mesh = per_rank[rank][0]["mesh"]
        assert set(mesh) == set(METHODS) and max(mesh.values()) < 1e-12, mesh
    for _, second_order in per_rank:
        for method, message in second_order.items():
            assert message is not None, f"{method}: double backward did not raise"
            assert "differentiate twice" in message, message


def test_bad_group():
    with pytest.raises(TypeError, match=r"group must be a torch\.distributed ProcessGroup"):
        x, y = _inputs()
        build_loss("sigmoid-ring", group="dp")(x, y, 10.0, -10.0)
