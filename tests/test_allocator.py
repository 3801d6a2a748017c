"""The allocator peak (``profiling.memory.AllocatorTracker``): exact on CPU, every thread
counted, operator scratch included; the CUDA path against a fake ``torch.cuda``; a real
2-rank record carries it (and matches the model), emulated ones where rank 0 owns its
process."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from profiling.memory import AllocatorTracker, LiveTensorTracker

MiB = 2**20


def _floats(nbytes: int) -> torch.Tensor:
    return torch.empty(nbytes // 4, dtype=torch.float32)


def test_cpu_peak_is_exact_above_the_starting_level():
    before = _floats(4 * MiB)  # held at entry: part of the starting level, not the peak
    with AllocatorTracker("cpu") as alloc:
        a = _floats(1 * MiB)
        b = _floats(2 * MiB)
        del a, b
        c = _floats(2 * MiB)
        del c
    assert alloc.peak_bytes == 3 * MiB
    assert alloc.peak_reserved_bytes is None
    del before


def test_cpu_frees_of_older_blocks_lower_the_level():
    from profiling.cpu_allocator import counter

    counter()  # installed first: blocks allocated before the counter are never counted
    old = _floats(1 * MiB)
    with AllocatorTracker("cpu") as alloc:
        del old
        new = _floats(1 * MiB)  # back at the starting level, never above it
    assert alloc.peak_bytes == 0
    del new


def test_cpu_counts_operator_scratch_the_live_tracker_cannot_see():
    s = torch.randn(256, 1024)
    with AllocatorTracker("cpu") as alloc, LiveTensorTracker() as live:
        torch.logsumexp(s, 1)
    assert alloc.peak_bytes >= s.nbytes  # a hidden b×N temporary inside the operator
    assert live.peak_bytes < 0.01 * s.nbytes  # only the b-long result is a tensor


def test_cpu_counts_allocations_and_frees_of_other_threads():
    held = []
    with AllocatorTracker("cpu") as alloc:
        worker = threading.Thread(target=lambda: held.append(_floats(2 * MiB)))
        worker.start()
        worker.join()
        freer = threading.Thread(target=held.clear)  # freed in another thread
        freer.start()
        freer.join()
        again = _floats(2 * MiB)  # if that free were missed, the peak would be 4 MiB
    assert alloc.peak_bytes == 2 * MiB
    del again


def test_thread_ranks_get_no_allocator_view():
    with AllocatorTracker("cpu", own_device=False) as alloc:
        _floats(MiB)
    assert alloc.peak_bytes is None and alloc.peak_reserved_bytes is None


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match="no allocator view"):
        AllocatorTracker("meta")


class _FakeCuda:
    """``torch.cuda``'s statistics for one step: 100 B held, peak 700 B, cache 2048 B."""

    def __init__(self):
        self.calls = []

    def synchronize(self, device):
        self.calls.append("synchronize")

    def reset_peak_memory_stats(self, device):
        self.calls.append("reset")

    def memory_allocated(self, device):
        return 100

    def max_memory_allocated(self, device):
        return 700

    def max_memory_reserved(self, device):
        return 2048


@pytest.mark.parametrize("own_device", [True, False])
def test_cuda_path_reads_the_caching_allocator(monkeypatch, own_device):
    fake = _FakeCuda()
    for name in ("synchronize", "reset_peak_memory_stats", "memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    for name in ("max_memory_allocated", "max_memory_reserved"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    with AllocatorTracker(torch.device("cuda", 0), own_device=own_device) as alloc:
        pass
    if own_device:
        assert fake.calls == ["synchronize", "reset", "synchronize"]
        assert (alloc.peak_bytes, alloc.peak_reserved_bytes) == (600, 2048)
    else:
        assert fake.calls == [] and alloc.peak_bytes is None


def test_cpu_counts_blocks_taken_through_raw_allocate():
    # oneDNN's bf16 matmul takes its scratch with Allocator::raw_allocate, which needs a
    # block whose context is its data pointer: the counting allocator must allow it.
    x, y = torch.randn(64, 32).bfloat16(), torch.randn(128, 32).bfloat16()
    with AllocatorTracker("cpu") as alloc:
        out = x @ y.T
    assert alloc.peak_bytes >= out.nbytes
    torch.testing.assert_close(out.float(), x.float() @ y.float().T, rtol=2e-2, atol=2e-2)


@pytest.mark.multiprocess
def test_a_record_carries_the_allocator_peak_the_model_matches():
    from dataclasses import asdict

    from profiling.launch import launch
    from profiling.losses import Shape, get_method
    from profiling.measure import PointConfig, measure_rank

    config = PointConfig(
        method="softmax-allgather", world=2, batch=32, dim=32, steps=1, warmup=1, profile=False
    )
    outcome = launch(measure_rank, (asdict(config),), world=2, timeout_s=300)
    assert outcome.status == "ok", outcome.message
    measured = outcome.values[0]
    model = sum(get_method(config.method).memory_terms(Shape.of(2, 32, 32, "fp32")).values())
    assert measured["peak_alloc_bytes"] == pytest.approx(model, rel=0.01)
    assert measured["peak_alloc_bytes"] >= measured["peak_live_bytes"] - 64
    assert measured["peak_reserved_bytes"] is None and measured["peak_cuda_allocated_bytes"] is None


def test_emulated_points_allocator_peak_only_where_rank_0_owns_the_process():
    from profiling.emulate import emulate_point
    from profiling.measure import PointConfig

    def point(emulate):
        config = PointConfig(
            method="sigmoid-ring", world=3, batch=16, dim=16, steps=1, warmup=0, emulate=emulate
        )
        return emulate_point(config, torch.device("cpu"))

    assert point("stand-in")["peak_alloc_bytes"] > 0  # rank 0 alone in its process
    assert point("exact")["peak_alloc_bytes"] is None  # ranks are threads of one process


def test_cpu_allocator_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("SIGSIM_CPU_ALLOCATOR", "0")
    with AllocatorTracker("cpu") as tracker:
        torch.ones(1000)
    assert tracker.peak_bytes is None and tracker.peak_reserved_bytes is None


def test_a_killed_builds_lock_is_cleared_and_a_fresh_one_kept(tmp_path):
    from profiling.cpu_allocator import clear_stale_lock

    lock = tmp_path / "lock"
    assert not clear_stale_lock(str(tmp_path))  # no lock: nothing to do
    lock.write_text("")
    assert not clear_stale_lock(str(tmp_path), max_age_s=60) and lock.exists()  # a live build's
    old = lock.stat().st_mtime - 3600
    os.utime(lock, (old, old))
    with pytest.warns(UserWarning, match="stale extension build lock"):
        assert clear_stale_lock(str(tmp_path), max_age_s=60)
    assert not lock.exists()
