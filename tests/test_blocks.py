"""Block math details that the multi-process tests cannot reach on this machine.

cuBLAS takes 32-bit lengths, so a dot product over more than 2^31 − 1 elements (a b×N
block at b = 1024, N = 4M, seen on an H200) must be split; the split sum must equal the
plain one.
"""

from __future__ import annotations

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
