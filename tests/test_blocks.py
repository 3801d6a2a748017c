"""Block math details that the multi-process tests cannot reach on this machine.

cuBLAS takes 32-bit lengths, so a dot product over more than 2^31 − 1 elements (a b×N
block at b = 1024, N = 4M, seen on an H200) must be split; the split sum must equal the
plain one. Also the per-device defaults the losses and the cost model share: the tile
and the rings' accumulator policy (``hide_accumulator``).
"""

from __future__ import annotations

import pytest
import torch

from profiling.losses import blocks


def test_dot_split_into_chunks_equals_plain_dot(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(37, 11, generator=gen, dtype=torch.float64)
    b = torch.randn(37, 11, generator=gen, dtype=torch.float64)
    monkeypatch.setattr(blocks, "_DOT_CHUNK", 50)
    torch.testing.assert_close(blocks.dot(a, b), (a * b).sum(), rtol=1e-12, atol=1e-12)


def test_default_tile_is_one_rule_for_the_losses_and_the_model():
    from profiling.losses import build_loss
    from profiling.losses.registry import SMALLEST_DEFAULT_TILE, Shape, default_tile

    for device, smallest in SMALLEST_DEFAULT_TILE.items():
        assert default_tile(smallest // 2, 8, device) == smallest // 2  # small b: one block
        assert default_tile(4 * smallest, 8, device) == smallest
        assert Shape.of(2, 4 * smallest, 8, device=device).tile_side == smallest
    assert default_tile(4 * 4096, 4096, "cuda") == 4 * 4096  # 4·d on CUDA, capped by b
    assert default_tile(4 * 4096, 4096, "cpu") == 256  # fixed on CPU, whatever d
    assert default_tile(512, 512, "cpu") == 256  # the peers point is cut in four tiles
    loss = build_loss("sigmoid-ring")
    features = torch.zeros(3000, 16)
    assert loss.tile_for(features) == default_tile(3000, 16, "cpu") == 256
    assert build_loss("softmax-ring", tile=7).tile_for(features) == 7


def test_accumulator_policy_is_per_device_one_rule_for_the_losses_and_the_model():
    from profiling.losses import build_loss, get_method
    from profiling.losses.costs import accumulator_buffers
    from profiling.losses.registry import Shape, default_hide_accumulator

    assert default_hide_accumulator("cpu") is False  # CPU: two buffers, saves memory
    assert default_hide_accumulator("cuda") is True  # CUDA: three, the transfer hidden
    for device, buffers in (("cpu", 2), ("cuda", 3)):
        assert accumulator_buffers(Shape.of(8, 64, 32, device=device)) == buffers
        forced = Shape.of(8, 64, 32, device=device, hide_accumulator=buffers == 2)
        assert accumulator_buffers(forced) == 5 - buffers
    # the third buffer is one b×d accumulator per multi-round chain in the memory terms
    for method, chains in (("sigmoid-ring", 1), ("sigmoid-ring-bidir", 2), ("softmax-ring", 1)):
        spec = get_method(method)
        two, three = (
            sum(spec.memory_terms(Shape.of(9, 64, 32, hide_accumulator=h)).values())
            for h in (False, True)
        )
        assert three - two == chains * 64 * 32 * 4, method
    features = torch.zeros(3, 4)
    assert build_loss("sigmoid-ring").hide_accumulator_for(features) is False
    assert build_loss("softmax-ring", hide_accumulator=True).hide_accumulator_for(features)
    assert build_loss("sigmoid-ring-bidir").options()["hide_accumulator"] is None


def test_accumulator_policy_refuses_a_non_bool_with_one_line():
    from profiling.losses import build_loss
    from profiling.losses.registry import Shape

    with pytest.raises(TypeError, match="hide_accumulator must be True, False or None"):
        build_loss("sigmoid-ring", hide_accumulator=1)
    with pytest.raises(ValueError, match="hide_accumulator must be True, False or None"):
        Shape.of(2, 8, 8, hide_accumulator="yes")
    with pytest.raises(ValueError, match="has no option 'hide_accumulator'"):
        build_loss("sigmoid-allgather", hide_accumulator=True)
