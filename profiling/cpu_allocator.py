"""Count every byte PyTorch's CPU allocator hands out: a wrapper allocator with a peak.

PyTorch keeps no allocator statistics on CPU. :func:`counter` builds (once per machine,
cached by ``torch.utils.cpp_extension``) and installs a C++ allocator that wraps the
current CPU allocator (``c10::SetCPUAllocator``): each allocation adds its requested
bytes to a process-wide atomic level and raises the peak; the block's deleter subtracts
them, whichever thread frees it. So the level counts every thread's allocations (gloo's
worker threads included) and every operator's scratch, exactly, at the cost of a
mutex-guarded table entry and two atomic operations per allocation. Its blocks keep
``data == context`` so that ``raw_allocate`` works (oneDNN's bf16 matmul uses it).
Blocks allocated before the wrapper was installed are not counted, nor are their frees.

Why not ``torch.profiler(profile_memory=True)``: its ``[memory]`` events come only from
the profiled thread, so a block that a gloo worker thread frees (a finished collective's
buffers) stays counted, and what that thread allocates is never seen; it also slows a
step by half or more (``docs/allocator-peak.md``).

The counter is process-wide: measure one step at a time, in a process that runs one rank.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import warnings

_SOURCE = r"""
#include <torch/extension.h>
#include <c10/core/CPUAllocator.h>
#include <atomic>
#include <mutex>
#include <unordered_map>

namespace {

std::atomic<int64_t> level{0};
std::atomic<int64_t> peak{0};

struct Block {
  int64_t nbytes;
  void* context;               // the wrapped allocator's context and deleter
  c10::DeleterFnPtr deleter;
};

std::mutex blocks_mutex;
std::unordered_map<void*, Block> blocks;  // by data pointer

void release(void* data) {
  Block block;
  {
    std::lock_guard<std::mutex> guard(blocks_mutex);
    auto it = blocks.find(data);
    TORCH_CHECK(it != blocks.end(), "sigsim counting allocator: unknown block freed");
    block = it->second;
    blocks.erase(it);
  }
  level.fetch_sub(block.nbytes);
  block.deleter(block.context);
}

// The DataPtr it returns has context == data and deleter `release` (what raw_allocate,
// used by oneDNN's bf16 matmul, requires); the wrapped block is kept in `blocks`.
struct CountingAllocator final : c10::Allocator {
  c10::Allocator* base;
  explicit CountingAllocator(c10::Allocator* wrapped) : base(wrapped) {}
  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner = base->allocate(n);
    void* data = inner.get();
    if (data == nullptr) {
      return inner;  // zero bytes: nothing held
    }
    c10::Device device = inner.device();
    c10::DeleterFnPtr deleter = inner.get_deleter();
    void* context = inner.release_context();
    {
      std::lock_guard<std::mutex> guard(blocks_mutex);
      blocks[data] = Block{static_cast<int64_t>(n), context, deleter};
    }
    int64_t now = level.fetch_add(static_cast<int64_t>(n)) + static_cast<int64_t>(n);
    int64_t seen = peak.load();
    while (now > seen && !peak.compare_exchange_weak(seen, now)) {
    }
    return {data, data, &release, device};
  }
  c10::DeleterFnPtr raw_deleter() const override {
    return &release;
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

CountingAllocator* installed = nullptr;

void install() {
  if (installed == nullptr) {
    installed = new CountingAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(installed, /*priority=*/100);
  }
}

int64_t reset_peak() {
  int64_t now = level.load();
  peak.store(now);
  return now;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("install", &install, "wrap the CPU allocator (idempotent)");
  m.def("level_bytes", []() { return level.load(); }, "bytes held now");
  m.def("peak_bytes", []() { return peak.load(); }, "largest level since reset_peak");
  m.def("reset_peak", &reset_peak, "peak := level; returns the level");
}
"""

EXTENSION_NAME = "sigsim_cpu_allocator_v2"
"""Name of the built extension (bump the suffix when ``_SOURCE`` changes)."""


STALE_LOCK_S = 900.0
"""A build lock older than this (seconds) is a killed build's: a build takes about a
minute, several on a loaded machine."""


def clear_stale_lock(build_directory: str, max_age_s: float = STALE_LOCK_S) -> bool:
    """Remove ``build_directory/lock`` if it is older than ``max_age_s``; True if removed.

    torch's extension loader waits for as long as that file exists, and a build that was
    killed (a timed-out rank, Ctrl-C) leaves it behind: every later process would hang.
    """
    lock = os.path.join(build_directory, "lock")
    try:
        age = time.time() - os.path.getmtime(lock)
    except OSError:
        return False
    if age < max_age_s:
        return False
    warnings.warn(f"removing a stale extension build lock ({age:.0f} s old): {lock}", stacklevel=2)
    with contextlib.suppress(FileNotFoundError):
        os.remove(lock)
    return True


@functools.cache
def counter():
    """The installed counter (module with ``level_bytes``, ``peak_bytes``, ``reset_peak``).

    Builds the extension on first use (a C++ compiler and ninja are needed, about a
    minute); raises RuntimeError with one line if it cannot be built.
    """
    from torch.utils import cpp_extension

    try:
        clear_stale_lock(cpp_extension._get_build_directory(EXTENSION_NAME, verbose=False))
        module = cpp_extension.load_inline(
            name=EXTENSION_NAME, cpp_sources=[_SOURCE], extra_cflags=["-O2"], verbose=False
        )
    except (RuntimeError, OSError, ImportError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RuntimeError(
            f"CPU allocator counter could not be built ({first}); it needs g++ and ninja, "
            f"or set SIGSIM_CPU_ALLOCATOR=0 to measure without allocator peaks"
        ) from exc
    module.install()
    return module
