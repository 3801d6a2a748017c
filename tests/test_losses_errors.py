"""Bad input gets one clear error naming the problem, on every rank, never a hang.

Local mistakes (shapes, dtypes, devices, a non-scalar scale, a missing or extra bias, an
unknown method or option, no process group) are caught before any communication. Ranks
that disagree on the local batch, width or dtype all raise the same error from the
cross-rank check instead of deadlocking in a collective of mismatched sizes.
"""

from __future__ import annotations

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


def _mismatch_worker(rank, world):
    """Each case makes rank 1 differ; every rank must raise, none may hang."""
    outcomes = []
    for method in METHODS:
        for what in ("batch", "dim", "dtype"):
            b, d, dtype = 4, 8, torch.float32
            if rank == 1:
                b, d, dtype = {
                    "batch": (5, 8, dtype),
                    "dim": (4, 6, dtype),
                    "dtype": (4, 8, torch.float64),
                }[what]
            x, y = _inputs(b, d, dtype)
            try:
                build_loss(method)(x, y, 10.0, _bias(method))
                outcomes.append((method, what, None))
            except ValueError as exc:
                outcomes.append((method, what, str(exc)))
    return outcomes


@pytest.mark.multiprocess
def test_ranks_that_disagree_all_raise():
    per_rank = run_world(3, _mismatch_worker, timeout_s=120)
    for outcomes in per_rank:
        assert len(outcomes) == 3 * len(METHODS)
        for method, what, message in outcomes:
            assert message is not None, f"{method}: ranks differing in {what} did not raise"
            assert "ranks disagree" in message and "rank 1:" in message, message
