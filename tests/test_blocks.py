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
